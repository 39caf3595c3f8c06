/// The contract's cases for a stage that runs a step per item: map, branch and a pass-through
/// join, on every executor that has them.
module Pyper.Tests.Contract.Cases

open System
open System.IO
open System.Threading
open Expecto
open Pyper
open Pyper.FSharp
open Pyper.Tests.Helpers
open Pyper.Tests.Contract.Behaviour
open Pyper.Tests.Contract.Kits

/// A stage kind under test: it runs the head of each item's program (Behaviour.many).
type Shape =
    {
        Name: string
        Build: Opts -> Pipeline<Item, Item>
        /// Its workers take the items one by one: n workers can meet over n items.
        Concurrent: bool
        /// It may be ordered with many workers (a join cannot: each worker reads its own share).
        OrderedWorkers: bool
        /// Items in flight are bounded by the queues: the source is read at most read-ahead +
        /// Σ (workers + capacity) + 1 items ahead of the consumer.
        Bounded: bool
    }

/// The shapes a kit has.
let shapes (kit: ExecutorKit) =
    [
        {
            Name = "map"
            Build = kit.Map
            Concurrent = true
            OrderedWorkers = true
            Bounded = true
        }
        match kit.Branch with
        | Some b ->
            {
                Name = "branch"
                Build = b
                Concurrent = true
                OrderedWorkers = true
                Bounded = true
            }
        | None -> ()
        match kit.JoinMany with
        | Some j ->
            {
                Name = "pass-through join"
                Build = j
                Concurrent = false
                OrderedWorkers = false
                Bounded = false
            }
        | None -> ()
    ]

/// The values of results whose programs have run to the end.
let values (results: Item list) =
    for r in results do
        Expect.isEmpty r.Program $"every step ran on {r.X}"

    results |> List.map (fun r -> r.X)

/// Runs a pipeline over `program` on each of `xs`, collecting the values (with a hang guard).
let run (program: Fn list) (xs: seq<int>) (p: Pipeline<Item, Item>) =
    collect (Pipeline.toSeqFrom (items program xs) p) |> values

/// The source bound of a pipeline (see Shape.Bounded).
let bound (p: Pipeline<_, _>) =
    int64 Tuning.SourceReadAhead
    + (p.Stages |> List.sumBy (fun s -> int64 (s.Workers + s.Capacity)))
    + 1L

/// A fresh barrier key, and the removal of its folder afterwards.
let withBarrier (body: string -> unit) =
    let key = Guid.NewGuid().ToString "N"

    try
        body key
    finally
        let dir = barrierFolder key

        if Directory.Exists dir then
            Directory.Delete(dir, true)

/// The failure a contract case expects: ContractFailure "item n" from stage `stage`, with the
/// original stack trace (through the executor's own way of keeping it).
let expectFailure (kit: ExecutorKit) (n: int) (stage: string option) (e: exn) =
    Expect.isTrue (e :? ContractFailure) $"the original exception type, got {e}"
    Expect.equal e.Message $"item {n}" "the original message"

    if stage.IsSome then
        Expect.equal (PipelineError.stage e) stage "the stage's name is on the exception"

    Expect.stringContains (kit.StackTrace e) "failAt" "the original stack trace is kept"

let cases (kit: ExecutorKit) (test: string -> (unit -> unit) -> Test) (shape: Shape) =
    let stage = shape.Build

    testList
        shape.Name
        [
            test "results equal the sequential model, as a multiset" (fun () ->
                for workers in [ 1; 4 ] do
                    let results = run [ Add 3 ] [ 0..999 ] (stage { opts with Workers = workers })
                    Expect.equal (sorted results) [ for x in 0..999 -> x + 3 ] $"workers = {workers}")

            if shape.OrderedWorkers then
                test "ordered results keep input order with many workers" (fun () ->
                    let p =
                        stage
                            { opts with
                                Workers = 4
                                Ordered = true
                            }

                    Expect.equal (run [ Jitter ] [ 0..1999 ] p) [ 1..2000 ] "in input order")
            else
                test "with one worker, results keep input order" (fun () ->
                    Expect.equal (run [ Jitter ] [ 0..1999 ] (stage opts)) [ 1..2000 ] "in input order")

            if shape.Concurrent then
                test "n workers run at once" (fun () ->
                    withBarrier (fun key ->
                        let p = stage { opts with Workers = 4 }
                        Expect.equal (sorted (run [ Meet(key, 4) ] [ 1..4 ] p)) [ 1..4 ] "all four met"))

            // Cases that stop worker processes (failures, cancellation, early stop) come last:
            // the process kit keeps its workers parked from one case to the next.
            if shape.Bounded then
                test "backpressure: a paused consumer holds the source to the queues' bounds" (fun () ->
                    let source = CountingSource()
                    let mutable yielded = 0L
                    let mutable overread = false
                    let w1, cap1, w2, cap2 = 2, 5, 3, 7

                    let p =
                        stage
                            { opts with
                                Workers = w1
                                Capacity = cap1
                            }
                        >=> kit.Map
                                { opts with
                                    Workers = w2
                                    Capacity = cap2
                                }

                    let bound = bound p

                    let checkedSource =
                        items [ Add 0; Add 0 ] source.Items
                        |> Seq.map (fun x ->
                            if source.Produced - Interlocked.Read &yielded > bound then
                                overread <- true

                            x)

                    use e = (Pipeline.toSeqFrom checkedSource p).GetEnumerator()
                    Expect.isTrue (e.MoveNext()) "a first result"
                    Interlocked.Increment &yielded |> ignore
                    // Paused here: the run fills the queues (at least the source's, whose readers
                    // block holding what they took), then the source waits; it is never read past the bounds.
                    let sourceQueue = int64 (Tuning.SourceReadAhead + w1)

                    waitUntil $"the source queue to fill ({sourceQueue} items)" (fun () ->
                        source.Produced >= sourceQueue)

                    Expect.isLessThanOrEqual source.Produced bound "within the bounds while paused"

                    for _ in 1..2000 do
                        Expect.isTrue (e.MoveNext()) "more results"
                        Interlocked.Increment &yielded |> ignore

                    Expect.isFalse overread "never read further ahead than the bounds")

            test "a failure surfaces as the original exception with the stage's name" (fun () ->
                let p =
                    stage
                        { opts with
                            Name = Some "picky"
                            Workers = 2
                        }

                let e = catchExn (fun () -> run [ FailAt 7 ] [ 0..100 ] p |> ignore)
                expectFailure kit 7 (Some "picky") e)

            test "a failure downstream stops an endless source" (fun () ->
                let source = CountingSource()
                let p = stage opts >=> kit.Map opts
                let e = catchExn (fun () -> run [ Add 0; FailAt 100 ] source.Items p |> ignore)
                expectFailure kit 100 None e)

            test "cancellation through the token stops every worker" (fun () ->
                let source = CountingSource()
                use cts = new CancellationTokenSource()
                let p = stage { opts with Workers = 3 } >=> kit.Map opts

                let e =
                    catchExn (fun () ->
                        let results =
                            Pipeline.streamFromSeq (items [ Add 0; Add 0 ] source.Items) p
                            |> Pipeline.toBlockingSeq cts.Token

                        for x in results do
                            if x.X = 50 then
                                cts.Cancel())

                Expect.isTrue (e :? OperationCanceledException) $"cancelled, got {e.GetType().Name}")

            test "stopping early shuts the run down" (fun () ->
                let source = CountingSource()
                let p = stage { opts with Workers = 2 } >=> kit.Map opts

                let five =
                    collect (Pipeline.toSeqFrom (items [ Add 0; Add 0 ] source.Items) p |> Seq.truncate 5)

                Expect.equal (values five).Length 5 "five results"

                if shape.Bounded then
                    Expect.isLessThanOrEqual source.Produced (bound p) "the source was read no further than the bounds")

        ]
