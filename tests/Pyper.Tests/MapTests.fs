/// Stage.map and its async forms.
module Pyper.Tests.MapTests

open System
open System.Threading
open System.Threading.Tasks
open Expecto
open Pyper
open Pyper.FSharp
open Pyper.Tests.Helpers

let tests =
    testList
        "map"
        [
            leakTest "blocking functions run on dedicated, named threads" (fun () ->
                let p =
                    Stage.map (
                        (fun (_: int) -> Thread.CurrentThread.IsThreadPoolThread, Thread.CurrentThread.Name),
                        workers = 3,
                        name = "step2"
                    )

                for pooled, name in collect (Pipeline.toSeqFrom [ 1..50 ] p) do
                    Expect.isFalse pooled "not a thread-pool thread"
                    Expect.stringStarts name "Pyper/step2" "named after the stage")

            leakTest "20 blocking workers are 20 threads at once, with no thread-pool warm-up" (fun () ->
                use all = new CountdownEvent(20)

                let p =
                    Stage.map (
                        (fun (x: int) ->
                            all.Signal() |> ignore
                            // A thread pool would need many seconds to inject 20 threads; ours start at once.
                            if not (all.Wait(TimeSpan.FromSeconds 5.0)) then
                                failwith "not all 20 workers ran at once"

                            x),
                        workers = 20
                    )

                Expect.equal (sorted (collect (Pipeline.toSeqFrom [ 1..20 ] p))) [ 1..20 ] "all passed")

            leakTest "mapTask with a token: stopping early cancels a pending call" (fun () ->
                let p =
                    Stage.mapTask (
                        (fun (x: int) (ct: CancellationToken) ->
                            task {
                                if x > 1 then
                                    do! Task.Delay(Timeout.Infinite, ct)

                                return x
                            }),
                        workers = 2
                    )

                Expect.equal (collect (Pipeline.toSeqFrom [ 1; 2; 3 ] p |> Seq.truncate 1)) [ 1 ] "the first result")

            leakTest "mapAsync: the run's cancellation flows into F# Async" (fun () ->
                let p =
                    Stage.mapAsync (
                        (fun (x: int) ->
                            async {
                                if x > 1 then
                                    do! Async.Sleep Timeout.Infinite

                                return x
                            }),
                        workers = 2
                    )

                Expect.equal (collect (Pipeline.toSeqFrom [ 1; 2; 3 ] p |> Seq.truncate 1)) [ 1 ] "the first result")

            leakTest "ordered: one slow item holds the others back in a bounded window" (fun () ->
                let source = CountingSource()
                use release = new ManualResetEventSlim()
                let mutable calls = 0
                let workers = 4

                let p =
                    Stage.map (
                        (fun (x: int) ->
                            Interlocked.Increment &calls |> ignore

                            if x = 1 && not (release.Wait hangGuard) then
                                failwith "never released"

                            x),
                        workers = workers,
                        ordered = true
                    )

                use e = (Pipeline.toSeqFrom source.Items p).GetEnumerator()
                let first = Task.Run(fun () -> e.MoveNext())
                // While item 1 is stuck, the others finish but wait their turn, so the stage stops
                // taking input: the source queue fills and the source is held there.
                let sourceQueue = int64 (Tuning.SourceReadAhead + workers)
                waitUntil "the source queue to fill" (fun () -> source.Produced >= sourceQueue)
                Expect.isFalse first.IsCompleted "no result may pass the slow first item"
                Expect.isLessThanOrEqual (int64 calls) sourceQueue "the stage took no more than its input queue holds"
                release.Set()
                Expect.isTrue (withinGuard "the first result" (fun () -> first)) "the first result"

                let results =
                    [
                        yield e.Current
                        for _ in 2..1000 do
                            e.MoveNext() |> ignore
                            yield e.Current
                    ]

                Expect.equal results [ 1..1000 ] "in order")

            leakTest "cheap functions move in batches and keep up with millions of items" (fun () ->
                let p = Stage.map ((+) 1) >=> Stage.map ((+) 1) >=> Stage.map ((+) 1)
                let total = Pipeline.toSeqFrom (seq { 1..1_000_000 }) p |> Seq.sumBy int64
                Expect.equal total (int64 (Seq.sumBy int64 (seq { 4..1_000_003 }))) "every item arrived once")
        ]
