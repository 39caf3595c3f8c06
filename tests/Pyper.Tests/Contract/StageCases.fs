/// The contract's cases of one stage kind each: branch, join and batch, on every executor that
/// has the kind.
module Pyper.Tests.Contract.StageCases

open System
open System.Threading
open Expecto
open Pyper.FSharp
open Pyper.Tests.Helpers
open Pyper.Tests.Contract.Behaviour
open Pyper.Tests.Contract.Kits
open Pyper.Tests.Contract.Cases

let branch (test: string -> (unit -> unit) -> Test) (branch: Opts -> Pipeline<Item, Item>) =
    testList
        "branch"
        [
            test "results are flattened in order within an item" (fun () ->
                let p =
                    branch
                        { opts with
                            Ordered = true
                            Workers = 3
                        }

                Expect.equal
                    (run [ Copies 3 ] [ 1..100 ] p)
                    [
                        for x in 1..100 do
                            yield! [ x; x; x ]
                    ]
                    "flattened in order")

            test "empty results vanish" (fun () ->
                let p = branch { opts with Workers = 2 }

                let results =
                    collect (Pipeline.toSeqFrom [ for x in 1..100 -> { X = x; Program = [ Copies(x % 2) ] } ] p)

                Expect.equal (sorted (values results)) [ 1..2..99 ] "odd ones")
        ]

let join
    (kit: ExecutorKit)
    (test: string -> (unit -> unit) -> Test)
    (join: Opts -> Pipeline<Item, Item>)
    (joinMany: Opts -> Pipeline<Item, Item>)
    =
    testList
        "join"
        [
            test "a join receives the whole stream and gives one result" (fun () ->
                Expect.equal (run [ Sum ] [ 0..99 ] (join opts)) [ 4950 ] "the sum")

            test "a join after another stage gets its results" (fun () ->
                Expect.equal (run [ Add 1; Sum ] [ 0..99 ] (kit.Map opts >=> join opts)) [ 5050 ] "the sum")

            test "a join with two workers splits the input into two partial streams" (fun () ->
                let results = run [ Sum ] [ 0..99 ] (join { opts with Workers = 2 })
                Expect.equal results.Length 2 "two results"
                Expect.equal (List.sum results) 4950 "together, the whole input")

            test "a join over an empty stream runs once" (fun () ->
                Expect.equal (run [ Sum ] [] (join opts)) [ 0 ] "the empty sum")

            test "a join with many results" (fun () ->
                Expect.equal (run [ Totals ] [ 1..5 ] (joinMany opts)) [ 1; 3; 6; 10; 15 ] "running totals")

            test "a join that stops reading stops the stages before it" (fun () ->
                let source = CountingSource()

                Expect.equal (run [ Add 0; Head ] source.Items (kit.Map opts >=> join opts)) [ 1 ] "the first item")

            test "a join's stream can be read only once" (fun () ->
                let e = catchExn (fun () -> run [ ReadTwice ] [ 1..3 ] (join opts) |> ignore)
                Expect.isTrue (e :? InvalidOperationException) $"a second enumeration is refused, got {e}"
                Expect.stringContains e.Message "only once" "says why")

            test "a join's failure surfaces as the original exception with the stage's name" (fun () ->
                let p = kit.Map opts >=> join { opts with Name = Some "joiner" }
                let e = catchExn (fun () -> run [ Add 0; FailAt 7 ] [ 0..100 ] p |> ignore)
                expectFailure kit 7 (Some "joiner") e)

            // A pass-through join stopped (early or by its token) while it waits for input with
            // results buffered: handing them on fails, and its move in flight then fails too as
            // the input is aborted. Many runs make that timing likely; the leak check counts
            // unobserved task exceptions after a full collection (also done every 50 runs here).
            test "a pass-through join stopped while waiting leaves no unobserved task exception" (fun () ->
                let p = joinMany { opts with Workers = 3 } >=> kit.Map opts
                // A stopped process run kills its workers and the next one starts new ones: up to
                // 7 s a run at load 45 (in-process runs take milliseconds). 20 of them check the
                // process join; the in-process kits' 500 make the race likely.
                let runs = if kit.Processes then 20 else 500

                for i in 1..runs do
                    let source = CountingSource()

                    if i % 2 = 0 then
                        let five =
                            collect (Pipeline.toSeqFrom (items [ Add 0; Add 0 ] source.Items) p |> Seq.truncate 5)

                        Expect.equal five.Length 5 "five results"
                    else
                        use cts = new CancellationTokenSource()

                        let e =
                            catchExn (fun () ->
                                let results =
                                    Pipeline.streamFromSeq (items [ Add 0; Add 0 ] source.Items) p
                                    |> Pipeline.toBlockingSeq cts.Token

                                for x in results do
                                    if x.X = 50 then
                                        cts.Cancel())

                        Expect.isTrue (e :? OperationCanceledException) $"cancelled, got {e.GetType().Name}"

                    if i % 50 = 0 then
                        GC.Collect()
                        GC.WaitForPendingFinalizers())
        ]

let batch
    (kit: ExecutorKit)
    (test: string -> (unit -> unit) -> Test)
    (batch: int -> TimeSpan option -> Opts -> Pipeline<Item, Item array>)
    =
    let xs (groups: Item array list) =
        groups |> List.map (Array.map (fun i -> i.X))

    testList
        "batch"
        [
            test "groups by count; the end of input flushes the partial group" (fun () ->
                let results = collect (Pipeline.toSeqFrom (items [] [ 0..9 ]) (batch 3 None opts))
                Expect.equal (xs results) [ [| 0; 1; 2 |]; [| 3; 4; 5 |]; [| 6; 7; 8 |]; [| 9 |] ] "groups of three")

            test "groups larger than a queue still fill" (fun () ->
                let p = kit.Map { opts with Capacity = 4 } >=> batch 1000 None opts
                let results = collect (Pipeline.toSeqFrom (items [ Add 0 ] [ 1..2500 ]) p)
                Expect.equal (results |> List.map Array.length) [ 1000; 1000; 500 ] "sizes")

            test "a partial group leaves when its timeout passes" (fun () ->
                use seen = new ManualResetEventSlim()

                let source =
                    seq {
                        yield! [ 1; 2; 3 ]
                        // Blocks until the consumer has the partial group: only the timeout can send it.
                        if not (seen.Wait hangGuard) then
                            failwith "the partial group never arrived"

                        yield 4
                    }

                let results =
                    Pipeline.toSeqFrom (items [] source) (batch 10 (Some(TimeSpan.FromMilliseconds 20.0)) opts)
                    |> Seq.map (fun g ->
                        seen.Set()
                        g)

                Expect.equal (xs (collect results)) [ [| 1; 2; 3 |]; [| 4 |] ] "the partial group, then the rest")

            test "groups keep the order of an ordered stage before them" (fun () ->
                let p =
                    kit.Map
                        { opts with
                            Workers = 3
                            Ordered = true
                        }
                    >=> batch 5 None opts

                let groups = collect (Pipeline.toSeqFrom (items [ Jitter ] [ 0..99 ]) p)
                Expect.equal (xs groups) [ for g in 0..19 -> [| for x in 1..5 -> 5 * g + x |] ] "in order, in fives")

            test "a failure downstream of a batch stops an endless source" (fun () ->
                let source = CountingSource()

                let fail =
                    Stage.map (fun (g: Item array) ->
                        if g[0].X > 100 then
                            raise (ContractFailure "late")

                        g)

                let e =
                    catchExn (fun () ->
                        collect (Pipeline.toSeqFrom (items [] source.Items) (batch 7 None opts >=> fail))
                        |> ignore)

                Expect.isTrue (e :? ContractFailure) $"the failure surfaced, got {e}")

            test "cancellation stops a batch stage" (fun () ->
                let source = CountingSource()
                use cts = new CancellationTokenSource()

                let e =
                    catchExn (fun () ->
                        for g in
                            Pipeline.streamFromSeq (items [] source.Items) (batch 4 None { opts with Workers = 2 })
                            |> Pipeline.toBlockingSeq cts.Token do
                            if g[0].X > 50 then
                                cts.Cancel())

                Expect.isTrue (e :? OperationCanceledException) $"cancelled, got {e.GetType().Name}")

            test "stopping early shuts a batch stage down" (fun () ->
                let source = CountingSource()
                let p = batch 4 None { opts with Workers = 2 }
                let five = collect (Pipeline.toSeqFrom (items [] source.Items) p |> Seq.truncate 5)
                Expect.equal (five |> List.map Array.length) [ 4; 4; 4; 4; 4 ] "five full groups")
        ]
