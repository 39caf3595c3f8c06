namespace Pyper.FSharp

open Pyper
open System
open System.Collections.Generic
open System.Threading
open System.Threading.RateLimiting
open System.Threading.Tasks

[<AbstractClass; Sealed>]
type Stage =
    static member map
        (f: 'a -> 'b, ?workers, ?capacity, ?ordered, ?name, ?multiprocess, ?timeout, ?onError, ?counts, ?rateLimit)
        =
        if defaultArg multiprocess false then
            Build.processStage<'a, 'b>
                (box f)
                (fun () -> FunctionRefs.ofFunction (box f))
                (Build.options workers capacity ordered name timeout onError counts rateLimit)
                null
        else
            Build.mapThread f (Build.options workers capacity ordered name timeout onError counts rateLimit)

    static member mapFunc
        (f: Func<'a, 'b>, ?workers, ?capacity, ?ordered, ?name, ?multiprocess, ?timeout, ?onError, ?counts, ?rateLimit)
        =
        if defaultArg multiprocess false then
            Build.processStage<'a, 'b>
                (box f)
                (fun () -> Build.delegateRef f)
                (Build.options workers capacity ordered name timeout onError counts rateLimit)
                null
        else
            Build.mapThreadFunc f (Build.options workers capacity ordered name timeout onError counts rateLimit)

    static member mapBound
        (
            f: 'c -> 'a -> 'b,
            arg: 'c,
            ?workers,
            ?capacity,
            ?ordered,
            ?name,
            ?multiprocess,
            ?timeout,
            ?onError,
            ?counts,
            ?rateLimit
        ) =
        if defaultArg multiprocess false then
            let bound = Build.bound name arg

            Build.processStage<'a, 'b>
                (box f)
                (fun () -> FunctionRefs.ofFunction (box f))
                (Build.options workers capacity ordered name timeout onError counts rateLimit)
                bound
        else
            Build.notNull StageKind.Map name (box f)
            Build.mapThread (f arg) (Build.options workers capacity ordered name timeout onError counts rateLimit)

    static member mapBoundFunc
        (
            f: Func<'c, 'a, 'b>,
            arg: 'c,
            ?workers,
            ?capacity,
            ?ordered,
            ?name,
            ?multiprocess,
            ?timeout,
            ?onError,
            ?counts,
            ?rateLimit
        ) =
        if defaultArg multiprocess false then
            let bound = Build.bound name arg

            Build.processStage<'a, 'b>
                (box f)
                (fun () -> Build.boundDelegateRef f)
                (Build.options workers capacity ordered name timeout onError counts rateLimit)
                bound
        else
            Build.notNull StageKind.Map name (box f)

            Build.mapThread
                (fun x -> f.Invoke(arg, x))
                (Build.options workers capacity ordered name timeout onError counts rateLimit)

    static member mapTask
        (f: 'a -> Task<'b>, ?workers, ?capacity, ?ordered, ?name, ?timeout, ?onError, ?counts, ?rateLimit)
        =
        Build.mapPool
            (box f)
            (fun x _ -> ValueTask<'b>(NullResult.task (f x)))
            (Build.options workers capacity ordered name timeout onError counts rateLimit)

    static member mapTask
        (
            f: 'a -> CancellationToken -> Task<'b>,
            ?workers,
            ?capacity,
            ?ordered,
            ?name,
            ?timeout,
            ?onError,
            ?counts,
            ?rateLimit
        ) =
        Build.mapPool
            (box f)
            (fun x ct -> ValueTask<'b>(NullResult.task (f x ct)))
            (Build.options workers capacity ordered name timeout onError counts rateLimit)

    static member mapValueTask
        (f: 'a -> ValueTask<'b>, ?workers, ?capacity, ?ordered, ?name, ?timeout, ?onError, ?counts, ?rateLimit)
        =
        Build.mapPool
            (box f)
            (fun x _ -> f x)
            (Build.options workers capacity ordered name timeout onError counts rateLimit)

    static member mapValueTask
        (
            f: 'a -> CancellationToken -> ValueTask<'b>,
            ?workers,
            ?capacity,
            ?ordered,
            ?name,
            ?timeout,
            ?onError,
            ?counts,
            ?rateLimit
        ) =
        Build.mapPool (box f) f (Build.options workers capacity ordered name timeout onError counts rateLimit)

    static member mapAsync
        (f: 'a -> Async<'b>, ?workers, ?capacity, ?ordered, ?name, ?timeout, ?onError, ?counts, ?rateLimit)
        =
        Build.mapPool
            (box f)
            (fun x ct -> ValueTask<'b>(Async.StartImmediateAsTask(NullResult.check "Async" "an Async value" (f x), ct)))
            (Build.options workers capacity ordered name timeout onError counts rateLimit)

    static member mapWithState
        (
            init: unit -> 's,
            f: 's -> 'a -> 'b,
            ?dispose,
            ?workers,
            ?capacity,
            ?ordered,
            ?name,
            ?timeout,
            ?onError,
            ?counts,
            ?rateLimit,
            ?multiprocess,
            ?recycleAfter
        ) =
        BuildState.mapWithState
            init
            f
            dispose
            multiprocess
            (Build.options workers capacity ordered name timeout onError counts rateLimit)
            recycleAfter

    static member mapWithStateFunc
        (
            init: Func<'s>,
            f: Func<'s, 'a, 'b>,
            ?dispose: Action<'s>,
            ?workers,
            ?capacity,
            ?ordered,
            ?name,
            ?timeout,
            ?onError,
            ?counts,
            ?rateLimit,
            ?multiprocess,
            ?recycleAfter
        ) =
        BuildState.mapWithStateFunc
            init
            f
            dispose
            multiprocess
            (Build.options workers capacity ordered name timeout onError counts rateLimit)
            recycleAfter

    static member mapTaskWithState
        (
            init: unit -> 's,
            f: 's -> 'a -> CancellationToken -> Task<'b>,
            ?dispose,
            ?workers,
            ?capacity,
            ?ordered,
            ?name,
            ?timeout,
            ?onError,
            ?counts,
            ?rateLimit,
            ?recycleAfter
        ) =
        BuildState.mapPoolWithState
            init
            f
            dispose
            (Build.options workers capacity ordered name timeout onError counts rateLimit)
            recycleAfter

    static member branch(f: 'a -> seq<'b>, ?workers, ?capacity, ?ordered, ?name, ?multiprocess) =
        if defaultArg multiprocess false then
            Build.processPlain<'a, 'b>
                Shape.Branch
                (box f)
                (fun () -> FunctionRefs.ofFunction (box f))
                workers
                capacity
                ordered
                name
        else
            Build.thread StageKind.Branch false f workers capacity ordered name (Loops.branchThread f)

    static member branchFunc(f: Func<'a, IEnumerable<'b>>, ?workers, ?capacity, ?ordered, ?name, ?multiprocess) =
        if defaultArg multiprocess false then
            Build.processPlain<'a, 'b>
                Shape.Branch
                (box f)
                (fun () -> Build.delegateRefOf<'a, 'b> Shape.Branch f)
                workers
                capacity
                ordered
                name
        else
            Stage.branch (
                (if isNull f then Unchecked.defaultof<_> else f.Invoke),
                ?workers = workers,
                ?capacity = capacity,
                ?ordered = ordered,
                ?name = name
            )

    static member branchStream(f: 'a -> IAsyncEnumerable<'b>, ?workers, ?capacity, ?ordered, ?name) =
        Build.pool StageKind.Branch false f workers capacity ordered name (Loops.branchPool (fun x _ -> f x))

    static member join(f: seq<'a> -> 'b, ?workers, ?capacity, ?ordered, ?name, ?multiprocess) =
        if defaultArg multiprocess false then
            Build.processPlain<'a, 'b>
                Shape.Join
                (box f)
                (fun () -> FunctionRefs.ofFunction (box f))
                workers
                capacity
                ordered
                name
        else
            Build.thread StageKind.Join true f workers capacity ordered name (Loops.joinThread (f >> Build.one))

    static member joinFunc(f: Func<IEnumerable<'a>, 'b>, ?workers, ?capacity, ?ordered, ?name, ?multiprocess) =
        if defaultArg multiprocess false then
            Build.processPlain<'a, 'b>
                Shape.Join
                (box f)
                (fun () -> Build.delegateRefOf<'a, 'b> Shape.Join f)
                workers
                capacity
                ordered
                name
        else
            Stage.join (
                (if isNull f then Unchecked.defaultof<_> else f.Invoke),
                ?workers = workers,
                ?capacity = capacity,
                ?ordered = ordered,
                ?name = name
            )

    static member joinMany(f: seq<'a> -> seq<'b>, ?workers, ?capacity, ?ordered, ?name, ?multiprocess) =
        if defaultArg multiprocess false then
            Build.processPlain<'a, 'b>
                Shape.JoinMany
                (box f)
                (fun () -> FunctionRefs.ofFunction (box f))
                workers
                capacity
                ordered
                name
        else
            Build.thread StageKind.Join true f workers capacity ordered name (Loops.joinThread f)

    static member joinManyFunc
        (f: Func<IEnumerable<'a>, IEnumerable<'b>>, ?workers, ?capacity, ?ordered, ?name, ?multiprocess)
        =
        if defaultArg multiprocess false then
            Build.processPlain<'a, 'b>
                Shape.JoinMany
                (box f)
                (fun () -> Build.delegateRefOf<'a, 'b> Shape.JoinMany f)
                workers
                capacity
                ordered
                name
        else
            Stage.joinMany (
                (if isNull f then Unchecked.defaultof<_> else f.Invoke),
                ?workers = workers,
                ?capacity = capacity,
                ?ordered = ordered,
                ?name = name
            )

    static member joinTask(f: IAsyncEnumerable<'a> -> Task<'b>, ?workers, ?capacity, ?ordered, ?name) =
        Build.pool
            StageKind.Join
            true
            f
            workers
            capacity
            ordered
            name
            (Loops.joinPool (fun s _ -> Build.oneAsync (f s)))

    static member joinStream(f: IAsyncEnumerable<'a> -> IAsyncEnumerable<'b>, ?workers, ?capacity, ?ordered, ?name) =
        Build.pool StageKind.Join true f workers capacity ordered name (Loops.joinPool (fun s _ -> f s))

    static member batch(size: int, ?timeout: TimeSpan, ?workers, ?capacity, ?ordered, ?name) : Pipeline<'a, 'a array> =
        let stage = Build.describe name StageKind.Batch

        if size < 1 then
            raise (ArgumentOutOfRangeException("size", size, $"{stage}: size must be at least 1."))

        if size > Array.MaxLength then
            raise (
                ArgumentOutOfRangeException(
                    "size",
                    size,
                    $"{stage}: size must be at most {Array.MaxLength} (the largest array); a group is allocated as its items come."
                )
            )

        match timeout with
        | Some t when t <= TimeSpan.Zero ->
            raise (ArgumentOutOfRangeException("timeout", t, $"{stage}: timeout must be positive."))
        | _ -> ()

        let info =
            Build.info StageKind.Batch Executor.Async true workers capacity ordered name

        Interpreter.stage info (AsyncExecutor(Loops.batch size timeout))
