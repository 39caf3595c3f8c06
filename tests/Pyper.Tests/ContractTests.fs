/// The executor contract: the same behavioural tests, run against every executor.
module Pyper.Tests.ContractTests

open System
open System.Collections.Generic
open System.Runtime.CompilerServices
open System.Threading
open System.Threading.Tasks
open Expecto
open Pyper
open Pyper.FSharp
open Pyper.Tests.Helpers

/// The options a contract test gives a stage.
type Opts =
    {
        Workers: int
        Capacity: int
        Ordered: bool
        Name: string option
    }

let opts =
    {
        Workers = 1
        Capacity = 1024
        Ordered = false
        Name = None
    }

/// How an executor builds stages from the test's functions (written once, as Task functions).
type ExecutorKit =
    {
        Name: string
        Map: (int -> Task<int>) -> Opts -> Pipeline<int, int>
        Branch: (int -> Task<int list>) -> Opts -> Pipeline<int, int>
    }

let private block (t: Task<'T>) = t.GetAwaiter().GetResult()

let private toAsyncSeq (xs: int list) : IAsyncEnumerable<int> =
    System.Linq.AsyncEnumerable.ToAsyncEnumerable xs

/// Every executor the contract runs against; the process executor joins this list.
let kits: ExecutorKit list =
    [
        {
            Name = "thread"
            Map =
                fun f o ->
                    Stage.map (
                        f >> block,
                        workers = o.Workers,
                        capacity = o.Capacity,
                        ordered = o.Ordered,
                        ?name = o.Name
                    )
            Branch =
                fun f o ->
                    Stage.branch (
                        f >> block >> Seq.ofList,
                        workers = o.Workers,
                        capacity = o.Capacity,
                        ordered = o.Ordered,
                        ?name = o.Name
                    )
        }
        {
            Name = "task"
            Map =
                fun f o ->
                    Stage.mapTask (f, workers = o.Workers, capacity = o.Capacity, ordered = o.Ordered, ?name = o.Name)
            Branch =
                fun f o ->
                    Stage.branchStream (
                        (fun x -> AsyncList(fun () -> f x)),
                        workers = o.Workers,
                        capacity = o.Capacity,
                        ordered = o.Ordered,
                        ?name = o.Name
                    )
        }
        {
            Name = "valuetask"
            Map =
                fun f o ->
                    Stage.mapValueTask (
                        (fun x (_: CancellationToken) -> ValueTask<int>(f x)),
                        workers = o.Workers,
                        capacity = o.Capacity,
                        ordered = o.Ordered,
                        ?name = o.Name
                    )
            Branch =
                fun f o ->
                    Stage.branchStream (
                        (fun x -> toAsyncSeq (block (f x))),
                        workers = o.Workers,
                        capacity = o.Capacity,
                        ordered = o.Ordered,
                        ?name = o.Name
                    )
        }
        {
            Name = "fsharp-async"
            Map =
                fun f o ->
                    Stage.mapAsync (
                        (fun x -> Async.AwaitTask(f x)),
                        workers = o.Workers,
                        capacity = o.Capacity,
                        ordered = o.Ordered,
                        ?name = o.Name
                    )
            Branch =
                fun f o ->
                    Stage.branch (
                        (fun x -> Async.RunSynchronously(Async.AwaitTask(f x)) |> Seq.ofList),
                        workers = o.Workers,
                        capacity = o.Capacity,
                        ordered = o.Ordered,
                        ?name = o.Name
                    )
        }
    ]

/// Yields, so async executors really suspend.
let private yielding (f: int -> 'T) (x: int) : Task<'T> =
    task {
        do! Task.Yield()
        return f x
    }

[<MethodImpl(MethodImplOptions.NoInlining)>]
let throwingFunction (x: int) : int = raise (Boom x)

let contract (kit: ExecutorKit) =
    let run source pipeline =
        collect (Pipeline.toSeqFrom source pipeline)

    testList
        kit.Name
        [
            leakTest "map results equal the sequential model, as a multiset" (fun () ->
                for workers in [ 1; 4 ] do
                    let p = kit.Map (yielding (fun x -> x * 3)) { opts with Workers = workers }
                    let results = run [ 0..999 ] p
                    Expect.equal (sorted results) [ for x in 0..999 -> x * 3 ] $"workers = {workers}")

            leakTest "ordered results keep input order with many workers" (fun () ->
                let jitter x =
                    task {
                        if x % 7 = 0 then
                            do! Task.Yield()

                        return x + 1
                    }

                let p =
                    kit.Map
                        jitter
                        { opts with
                            Workers = 4
                            Ordered = true
                        }

                Expect.equal (run [ 0..1999 ] p) [ 1..2000 ] "in input order")

            leakTest "branch results are flattened in order within an item" (fun () ->
                let p =
                    kit.Branch
                        (yielding (fun x -> [ x; x; x ]))
                        { opts with
                            Ordered = true
                            Workers = 3
                        }

                Expect.equal
                    (run [ 1..100 ] p)
                    [
                        for x in 1..100 do
                            yield! [ x; x; x ]
                    ]
                    "flattened in order")

            leakTest "n workers run at once" (fun () ->
                let meet = Rendezvous 4

                let p =
                    kit.Map
                        (fun x ->
                            task {
                                do! meet.Arrive()
                                return x
                            })
                        { opts with Workers = 4 }

                Expect.equal (sorted (run [ 1..4 ] p)) [ 1..4 ] "all four met")

            leakTest "a failure surfaces as the original exception with the stage's name" (fun () ->
                let p =
                    kit.Map
                        (fun x ->
                            if x = 7 then
                                Task.FromResult(throwingFunction x)
                            else
                                Task.FromResult x)
                        { opts with
                            Name = Some "picky"
                            Workers = 2
                        }

                let e = catchExn (fun () -> run [ 0..100 ] p |> ignore)

                match e with
                | Boom 7 -> ()
                | e -> failtestf "expected Boom 7, got %O" e

                Expect.equal (PipelineError.stage e) (Some "picky") "the stage's name is on the exception"
                Expect.stringContains e.StackTrace "throwingFunction" "the original stack trace is kept")

            leakTest "a failure downstream stops an endless source" (fun () ->
                let source = CountingSource()

                let p =
                    kit.Map (yielding id) opts
                    >=> kit.Map
                            (fun x ->
                                if x = 100 then
                                    Task.FromResult(throwingFunction x)
                                else
                                    Task.FromResult x)
                            opts

                let e = catchExn (fun () -> run source.Items p |> ignore)
                Expect.isTrue (e :? Boom) "the failure surfaced")

            leakTest "cancellation through the token stops every worker" (fun () ->
                let source = CountingSource()
                use cts = new CancellationTokenSource()

                let p =
                    kit.Map (yielding id) { opts with Workers = 3 } >=> kit.Map (yielding id) opts

                let e =
                    catchExn (fun () ->
                        for x in (Pipeline.streamFromSeq source.Items p |> Pipeline.toBlockingSeq cts.Token) do
                            if x = 50 then
                                cts.Cancel())

                Expect.isTrue (e :? OperationCanceledException) $"cancelled, got {e.GetType().Name}")

            leakTest "stopping early shuts the run down" (fun () ->
                let source = CountingSource()

                let p =
                    kit.Map (yielding id) { opts with Workers = 2 } >=> kit.Map (yielding id) opts

                let five = collect (Pipeline.toSeqFrom source.Items p |> Seq.truncate 5)
                Expect.equal five.Length 5 "five results"
                let produced = source.Produced

                Expect.isLessThanOrEqual
                    produced
                    (int64 (Tuning.SourceReadAhead + 2 + 1024 + 1 + 1024 + 1))
                    "the source was read no further than the bounds")

            leakTest "backpressure: a paused consumer holds the source to the queues' bounds" (fun () ->
                let source = CountingSource()
                let mutable yielded = 0L
                let mutable overread = false
                let w1, cap1, w2, cap2 = 2, 5, 3, 7
                let bound = int64 (Tuning.SourceReadAhead + w1 + cap1 + w2 + cap2 + 1)

                let checkedSource =
                    source.Items
                    |> Seq.map (fun x ->
                        if source.Produced - Interlocked.Read &yielded > bound then
                            overread <- true

                        x)

                let p =
                    kit.Map
                        (yielding id)
                        { opts with
                            Workers = w1
                            Capacity = cap1
                        }
                    >=> kit.Map
                            (yielding id)
                            { opts with
                                Workers = w2
                                Capacity = cap2
                            }

                use e = (Pipeline.toSeqFrom checkedSource p).GetEnumerator()
                Expect.isTrue (e.MoveNext()) "a first result"
                Interlocked.Increment &yielded |> ignore
                // Paused here: the run fills the queues (at least the source's, whose readers block
                // holding what they took), then the source waits; it is never read past the bounds.
                let sourceQueue = int64 (Tuning.SourceReadAhead + w1)
                waitUntil $"the source queue to fill ({sourceQueue} items)" (fun () -> source.Produced >= sourceQueue)
                Expect.isLessThanOrEqual source.Produced bound "within the bounds while paused"

                for _ in 1..2000 do
                    Expect.isTrue (e.MoveNext()) "more results"
                    Interlocked.Increment &yielded |> ignore

                Expect.isFalse overread "never read further ahead than the bounds")
        ]

let tests = testList "executor contract" (kits |> List.map contract)
