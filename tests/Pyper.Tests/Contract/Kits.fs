/// The executors the contract runs against: each kit builds the contract's stages (whose steps
/// travel in the items, see Behaviour) with one executor's constructors.
module Pyper.Tests.Contract.Kits

open System
open System.Collections.Generic
open System.Threading
open System.Threading.Tasks
open Pyper
open Pyper.FSharp
open Pyper.Tests.Contract.Behaviour

/// The options a contract case gives a stage.
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

/// How an executor builds the contract's stages. A stage kind the executor has no form of is
/// None, and its cases are left out for that kit: a process branch or join plugs in here when
/// the library gets one (as `Stage.map (f, multiprocess = true)` did for map).
type ExecutorKit =
    {
        Name: string
        /// One result per item (Behaviour.one).
        Map: Opts -> Pipeline<Item, Item>
        /// Many results per item (Behaviour.many).
        Branch: (Opts -> Pipeline<Item, Item>) option
        /// One result per worker over its share of the stream (Behaviour.join).
        Join: (Opts -> Pipeline<Item, Item>) option
        /// Many results per worker over its share of the stream (Behaviour.joinMany).
        JoinMany: (Opts -> Pipeline<Item, Item>) option
        /// Groups of `size` items, with an optional timeout for partial groups.
        Batch: (int -> TimeSpan option -> Opts -> Pipeline<Item, Item array>) option
        /// Where a failure's original stack trace is (a process stage's comes as text in the exception's Data).
        StackTrace: exn -> string
        /// True when the executor's workers are processes, parked between cases instead of retired.
        Processes: bool
    }

/// An async stream of a Task's list whose first MoveNextAsync awaits the list and whose later
/// ones complete synchronously.
type private ReadyAfterFirst(items: Task<Item list>) =
    interface IAsyncEnumerable<Item> with
        member _.GetAsyncEnumerator _ =
            let mutable rest = None
            let mutable current = Unchecked.defaultof<Item>

            let next () =
                match rest with
                | Some(x :: xs) ->
                    current <- x
                    rest <- Some xs
                    true
                | _ -> false

            { new IAsyncEnumerator<Item> with
                member _.Current = current

                member _.MoveNextAsync() =
                    if rest.IsSome then
                        ValueTask<bool>(next ())
                    else
                        ValueTask<bool>(
                            task {
                                let! xs = items
                                rest <- Some xs
                                return next ()
                            }
                        )
              interface IAsyncDisposable with
                  member _.DisposeAsync() = ValueTask()
            }

let private inProcessTrace (e: exn) = e.StackTrace

/// Blocking functions on dedicated threads.
let thread =
    {
        Name = "thread"
        Map = fun o -> Stage.map (one, workers = o.Workers, capacity = o.Capacity, ordered = o.Ordered, ?name = o.Name)
        Branch =
            Some(fun o ->
                Stage.branch (
                    many >> Seq.ofList,
                    workers = o.Workers,
                    capacity = o.Capacity,
                    ordered = o.Ordered,
                    ?name = o.Name
                ))
        Join =
            Some(fun o ->
                Stage.join (join, workers = o.Workers, capacity = o.Capacity, ordered = o.Ordered, ?name = o.Name))
        JoinMany =
            Some(fun o ->
                Stage.joinMany (
                    joinMany,
                    workers = o.Workers,
                    capacity = o.Capacity,
                    ordered = o.Ordered,
                    ?name = o.Name
                ))
        Batch = None
        StackTrace = inProcessTrace
        Processes = false
    }

/// Task functions, async streams and Stage.batch on the thread pool.
let task =
    {
        Name = "task"
        Map =
            fun o ->
                Stage.mapTask (
                    oneAsync,
                    workers = o.Workers,
                    capacity = o.Capacity,
                    ordered = o.Ordered,
                    ?name = o.Name
                )
        Branch =
            Some(fun o ->
                Stage.branchStream (
                    (fun x -> Pyper.Tests.Helpers.AsyncList(fun () -> manyAsync x)),
                    workers = o.Workers,
                    capacity = o.Capacity,
                    ordered = o.Ordered,
                    ?name = o.Name
                ))
        Join =
            Some(fun o ->
                Stage.joinTask (
                    joinTask,
                    workers = o.Workers,
                    capacity = o.Capacity,
                    ordered = o.Ordered,
                    ?name = o.Name
                ))
        JoinMany =
            Some(fun o ->
                Stage.joinStream (
                    joinStream,
                    workers = o.Workers,
                    capacity = o.Capacity,
                    ordered = o.Ordered,
                    ?name = o.Name
                ))
        // Stage.batch has one executor (async); its cases run once, in this kit.
        Batch =
            Some(fun size timeout o ->
                Stage.batch (
                    size,
                    ?timeout = timeout,
                    workers = o.Workers,
                    capacity = o.Capacity,
                    ordered = o.Ordered,
                    ?name = o.Name
                ))
        StackTrace = inProcessTrace
        Processes = false
    }

/// ValueTask functions taking the run's token.
let valueTask =
    { task with
        Name = "valuetask"
        Map =
            fun o ->
                Stage.mapValueTask (
                    (fun x (_: CancellationToken) -> ValueTask<Item>(oneAsync x)),
                    workers = o.Workers,
                    capacity = o.Capacity,
                    ordered = o.Ordered,
                    ?name = o.Name
                )
        // Items that are ready at once after the first: MoveNextAsync completes synchronously.
        Branch =
            Some(fun o ->
                Stage.branchStream (
                    (fun x -> ReadyAfterFirst(manyAsync x)),
                    workers = o.Workers,
                    capacity = o.Capacity,
                    ordered = o.Ordered,
                    ?name = o.Name
                ))
        Join = None
        JoinMany = None
        Batch = None
    }

/// F# Async functions; the branch's items come from an Async, as an async stream.
let fsharpAsync =
    { task with
        Name = "fsharp-async"
        Map =
            fun o ->
                Stage.mapAsync (
                    (fun x ->
                        async {
                            match! manyFSharpAsync x with
                            | [ r ] -> return r
                            | rs -> return invalidArg "x" $"a map step must give one result, not {rs.Length}"
                        }),
                    workers = o.Workers,
                    capacity = o.Capacity,
                    ordered = o.Ordered,
                    ?name = o.Name
                )
        Branch =
            Some(fun o ->
                Stage.branchStream (
                    (fun x -> Pyper.Tests.Helpers.AsyncList(fun () -> Async.StartAsTask(manyFSharpAsync x))),
                    workers = o.Workers,
                    capacity = o.Capacity,
                    ordered = o.Ordered,
                    ?name = o.Name
                ))
        Join = None
        JoinMany = None
        Batch = None
    }

/// Worker processes: module functions a worker process can load (`Behaviour.one`, `manySeq`,
/// `join`, `joinMany`).
let processes =
    {
        Name = "process"
        Map =
            fun o ->
                Stage.map (
                    one,
                    workers = o.Workers,
                    capacity = o.Capacity,
                    ordered = o.Ordered,
                    ?name = o.Name,
                    multiprocess = true
                )
        Branch =
            Some(fun o ->
                Stage.branch (
                    manySeq,
                    workers = o.Workers,
                    capacity = o.Capacity,
                    ordered = o.Ordered,
                    ?name = o.Name,
                    multiprocess = true
                ))
        Join =
            Some(fun o ->
                Stage.join (
                    join,
                    workers = o.Workers,
                    capacity = o.Capacity,
                    ordered = o.Ordered,
                    ?name = o.Name,
                    multiprocess = true
                ))
        JoinMany =
            Some(fun o ->
                Stage.joinMany (
                    joinMany,
                    workers = o.Workers,
                    capacity = o.Capacity,
                    ordered = o.Ordered,
                    ?name = o.Name,
                    multiprocess = true
                ))
        Batch = None
        StackTrace = fun e -> string e.Data["Pyper.RemoteStackTrace"]
        Processes = true
    }

/// Every executor the contract runs against.
let all = [ thread; task; valueTask; fsharpAsync; processes ]
