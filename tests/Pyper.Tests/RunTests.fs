/// Running pipelines: laziness, reuse, failures, cancellation, consumers.
module Pyper.Tests.RunTests

open System
open System.Collections.Generic
open System.Threading
open System.Threading.Tasks
open Expecto
open Pyper
open Pyper.FSharp
open Pyper.Tests.Helpers

let tests =
    testList
        "run"
        [
            leakTest "nothing runs until the results are enumerated" (fun () ->
                let mutable calls = 0

                let p =
                    Stage.map (fun (x: int) ->
                        Interlocked.Increment &calls |> ignore
                        x)

                let results = Pipeline.stream 1 p
                let e = results.GetAsyncEnumerator()
                Expect.equal calls 0 "not called before the first MoveNextAsync"
                Expect.isTrue (e.MoveNextAsync().AsTask().Result) "one result"
                Expect.equal calls 1 "called once"
                e.DisposeAsync().AsTask().Wait())

            leakTest "a pipeline is reusable: each run is independent" (fun () ->
                let p =
                    Stage.branch (fun (n: int) -> seq { 1..n }) >=> Stage.map ((*) 2, workers = 3)

                let first = Pipeline.toSeq 10 p
                Expect.equal (sorted (collect first)) [ 2..2..20 ] "first run"
                Expect.equal (sorted (collect first)) [ 2..2..20 ] "the same results enumerated again"
                Expect.equal (sorted (collect (Pipeline.toSeq 3 p))) [ 2; 4; 6 ] "another input")

            leakTest "the first failure in time wins, not the earliest stage's" (fun () ->
                // The early stage fails only once the run has stopped because of the later one.
                let early =
                    Stage.mapTask (
                        (fun (x: int) (stop: CancellationToken) ->
                            task {
                                if x = 5 then
                                    try
                                        do! Task.Delay(hangGuard, stop)
                                    with :? OperationCanceledException ->
                                        ()

                                    failwith "early stage, second in time"

                                return x
                            }),
                        name = "early"
                    )

                let late =
                    Stage.map (
                        (fun (x: int) ->
                            if x = 1 then
                                raise (Boom 1)

                            x),
                        name = "late"
                    )

                let e =
                    catchExn (fun () -> collect (Pipeline.toSeqFrom [ 1..10 ] (early >=> late)) |> ignore)

                Expect.isTrue (e :? Boom) $"the later stage's failure, first in time, got {e.Message}"
                Expect.equal (PipelineError.stage e) (Some "late") "named")

            leakTest "a second failure is attached to the first" (fun () ->
                use both = new CountdownEvent(2)

                let p =
                    Stage.map (
                        (fun (x: int) ->
                            both.Signal() |> ignore

                            if not (both.Wait hangGuard) then
                                failwith "the two workers never ran at once"

                            raise (Boom x)),
                        workers = 2,
                        name = "twice"
                    )

                let e = catchExn (fun () -> collect (Pipeline.toSeqFrom [ 1; 2 ] p) |> ignore)
                let others = PipelineError.others e
                Expect.equal others.Length 1 "one other failure"
                Expect.notEqual (box others.Head) (box e) "a different exception"
                Expect.equal (PipelineError.stage others.Head) (Some "twice") "also named")

            leakTest "an already cancelled token stops the run before any work" (fun () ->
                let mutable calls = 0

                let p =
                    Stage.map (fun (x: int) ->
                        Interlocked.Increment &calls |> ignore
                        x)

                use cts = new CancellationTokenSource()
                cts.Cancel()

                let e =
                    catchExn (fun () ->
                        (Pipeline.streamFromSeq [ 1..10 ] p |> Pipeline.toBlockingSeq cts.Token)
                        |> Seq.iter ignore)

                Expect.isTrue (e :? OperationCanceledException) "cancelled"
                Expect.equal calls 0 "no item was processed")

            leakTest "a consumer that throws shuts the run down" (fun () ->
                let source = CountingSource()

                let e =
                    catchExn (fun () ->
                        for x in Pipeline.toSeqFrom source.Items (Stage.map id) do
                            if x = 10 then
                                raise (Boom x))

                Expect.isTrue (e :? Boom) "the consumer's exception")

            leakTest "into: Pyper's `pipeline > consumer`" (fun () ->
                let total = Stage.branch (fun (n: int) -> seq { 1..n }) |> Pipeline.into Seq.sum
                Expect.equal (total 100) 5050 "sum")

            leakTest "intoTask: an async consumer" (fun () ->
                let count (xs: IAsyncEnumerable<int>) =
                    task {
                        let e = xs.GetAsyncEnumerator()
                        let mutable n = 0

                        while! e.MoveNextAsync() do
                            n <- n + 1

                        do! e.DisposeAsync()
                        return n
                    }

                let run = Stage.branch (fun (n: int) -> seq { 1..n }) |> Pipeline.intoTask count
                Expect.equal (withinGuard "the consumer" (fun () -> run 42)) 42 "count")

            leakTest "a run over an async source" (fun () ->
                let source = AsyncList(fun () -> Task.FromResult [ 1..100 ])

                let results =
                    collectAsync (Pipeline.streamFrom source (Stage.map ((+) 1, workers = 2)))

                Expect.equal (sorted results) [ 2..101 ] "all")

            leakTest "the identity pipeline passes items through" (fun () ->
                Expect.equal (collect (Pipeline.toSeqFrom [ 1..1000 ] Pipeline.id)) [ 1..1000 ] "unchanged")

            leakTest "a README-shaped pipeline: generator, async stage, blocking stage" (fun () ->
                let meetAsync = Rendezvous 20
                use meetBlocking = new CountdownEvent(20)

                let step1 (x: int) =
                    task {
                        do! meetAsync.Arrive()
                        return x
                    }

                let step2 (x: int) =
                    meetBlocking.Signal() |> ignore

                    if not (meetBlocking.Wait hangGuard) then
                        failwith "the 20 blocking workers never ran at once"

                    x

                let p =
                    Stage.branch (fun (n: int) -> seq { 0 .. n - 1 })
                    >=> Stage.mapTask (step1, workers = 20)
                    >=> Stage.map (step2, workers = 20)

                Expect.equal (collect (Pipeline.toSeq 20 p) |> List.sum) 190 "total")

            testCase "a pipeline describes its stages" (fun () ->
                let p =
                    Stage.branch (fun (n: int) -> seq { 1..n })
                    >=> Stage.map (id, workers = 20, name = "step2")
                    >=> Stage.mapTask ((fun x -> Task.FromResult x), ordered = true)

                Expect.equal
                    (string p)
                    "Pipeline<Int32, Int32>: branch #1 (threads) >=> step2 (map, 20 workers, threads) >=> map #3 (ordered, async)"
                    "description"

                Expect.equal
                    (p.Stages |> List.map (fun s -> s.Executor, s.Kind, s.Name))
                    [
                        Executor.Thread, StageKind.Branch, "branch"
                        Executor.Thread, StageKind.Map, "step2"
                        Executor.Async, StageKind.Map, "map"
                    ]
                    "executors, kinds and names")

            testCase "batches carry about 100 µs of work in-process and 2 ms across processes" (fun () ->
                let ms = float Diagnostics.Stopwatch.Frequency / 1000.0
                let local = Sizer.InProcess()
                let remote = Sizer.Remote()
                Expect.equal (local.Limit, remote.Limit) (1, 1) "one item while the cost is unknown"
                local.RecordCost(100, int64 (0.001 * ms)) // 10 ns per item
                Expect.equal local.Limit Tuning.MaxBatch "cheap items: full batches"
                let slow = Sizer.InProcess()
                slow.RecordCost(1, int64 (0.02 * ms)) // 20 µs per item
                Expect.equal slow.Limit 5 "20 µs items: 5 per batch"
                remote.RecordCost(1, int64 (0.8 * ms)) // 0.8 ms per item
                Expect.equal remote.Limit 2 "0.8 ms items across processes: 2 per batch")

            // Thread stages, and async ones (their waits and batches reuse one waiter per worker).
            let inc = Stage.map ((fun (x: int) -> x + 1), name = "inc")

            let incValueTask =
                Stage.mapValueTask ((fun (x: int) -> ValueTask<int>(x + 1)), name = "incVT")

            let ready = Task.FromResult 1 // the user's function allocates nothing either
            let one = Stage.mapTask ((fun (_: int) -> ready), name = "one")

            for stages, p in
                [
                    "thread stages", inc >=> inc >=> inc
                    "async stages", incValueTask >=> one >=> incValueTask
                ] do
                leakTest
                    $"the hand-off allocates nothing per batch or wait ({stages}): twice the items, no more allocations"
                    (fun () ->
                        let n = 1_000_000

                        let awaited (source: int[]) =
                            (task {
                                let e = (Pipeline.streamFromSeq source p).GetAsyncEnumerator()
                                let mutable count = 0

                                while! e.MoveNextAsync() do
                                    count <- count + 1

                                do! e.DisposeAsync()
                                return count
                            })
                                .Result

                        let blocking (source: int[]) =
                            Seq.length (Pipeline.toSeqFrom source p)

                        for consumer, count in [ "blocking", blocking; "awaiting", awaited ] do
                            // The least of three runs: other threads of the process allocate now and then.
                            let allocated (items: int) =
                                let source = Array.init items id
                                count source |> ignore // warm up

                                List.min
                                    [
                                        for _ in 1..3 do
                                            let before = GC.GetTotalAllocatedBytes true
                                            Expect.equal (count source) items $"{consumer}: every item"
                                            GC.GetTotalAllocatedBytes true - before
                                    ]

                            let once, twice = allocated n, allocated (2 * n)
                            // At least 1,000 more batches per stage: 24 bytes each would be 0.1 B per item.
                            let perExtraItem = float (twice - once) / float n

                            Expect.isLessThan
                                perExtraItem
                                0.02
                                $"{stages}, {consumer}: {once} B for {n} items, {twice} B for {2 * n}")
        ]
