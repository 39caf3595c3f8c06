namespace Pyper.FSharp

open Pyper
open System
open System.Collections.Generic
open System.Threading
open System.Threading.Tasks

module internal Build =
    let describe (name: string option) (kind: string) =
        match name with
        | Some n -> $"Stage '{n}' ({kind})"
        | None -> $"A {kind} stage"

    /// Checks a stage's options and returns its description; throws ArgumentException naming the stage and option.
    let info (kind: string) (executor: Executor) (joins: bool) (f: obj) workers capacity ordered (name: string option) =
        let workers = defaultArg workers 1
        let capacity = defaultArg capacity Tuning.DefaultCapacity
        let ordered = defaultArg ordered false
        let stage = describe name kind

        match name with
        | Some n when String.IsNullOrWhiteSpace n ->
            raise (ArgumentException($"A {kind} stage: name must not be empty or blank.", "name"))
        | _ -> ()

        if isNull f then
            raise (ArgumentNullException("f", $"{stage}: the function is null."))

        if workers < 1 then
            raise (ArgumentOutOfRangeException("workers", workers, $"{stage}: workers must be at least 1."))

        if capacity < 0 then
            raise (
                ArgumentOutOfRangeException(
                    "capacity",
                    capacity,
                    $"{stage}: capacity must be 0 (unbounded) or a positive number of items."
                )
            )

        if ordered && joins && workers > 1 then
            raise (
                ArgumentException(
                    $"{stage}: ordered needs workers = 1, because each of the {workers} workers reads its own share of the input and their results have no common order.",
                    "ordered"
                )
            )

        StageInfo.create name kind executor workers capacity ordered

    let thread kind joins f workers capacity ordered name body =
        Wiring.stage (info kind Executor.Thread joins (box f) workers capacity ordered name) (OnThread body)

    let pool kind joins f workers capacity ordered name body =
        Wiring.stage (info kind Executor.Async joins (box f) workers capacity ordered name) (OnPool body)

    let private isAsync (t: Type) =
        typeof<Task>.IsAssignableFrom t
        || t = typeof<ValueTask>
        || (t.IsGenericType
            && (t.GetGenericTypeDefinition() = typedefof<ValueTask<_>>
                || t.GetGenericTypeDefinition() = typedefof<Async<_>>))

    /// A map stage whose workers are processes; `locate` finds how a worker re-creates the function.
    let processStage<'a, 'b> (f: obj) (locate: unit -> Result<FunctionRef, string>) workers capacity ordered name =
        let info = info "map" Executor.Process false f workers capacity ordered name
        let stage = describe name "map"

        if isAsync typeof<'b> then
            raise (
                ArgumentException(
                    $"{stage}: an async function (returning {typeof<'b>.Name}) cannot run in worker processes, as in Pyper: run it on the async executor (Stage.mapTask) instead.",
                    "multiprocess"
                )
            )

        // Before the function: an item type that cannot cross makes any function useless.
        WireTypes.check stage "parameter" typeof<'a>
        WireTypes.check stage "result" typeof<'b>

        match locate () with
        | Ok fref -> Wiring.stage info (OnPool(ProcessWorkers.processMap fref)): Pipeline<'a, 'b>
        | Error why -> raise (ArgumentException($"{stage}: cannot run in worker processes: {why}.", "f"))

    /// For the C# facade: a process map stage from a delegate.
    let processOfDelegate<'a, 'b> (f: Func<'a, 'b>) (workers: int) (capacity: int) (ordered: bool) (name: string) =
        processStage<'a, 'b>
            (box f)
            (fun () ->
                let m = f.Method
                let ps = m.GetParameters()

                // A worker process reads items as the method's own types: they must be the stage's.
                if
                    ps.Length = 1
                    && (ps[0].ParameterType <> typeof<'a> || m.ReturnType <> typeof<'b>)
                then
                    Error
                        $"the method takes {ps[0].ParameterType} and returns {m.ReturnType}, but the stage's items are {typeof<'a>} and its results {typeof<'b>}: wrap it in a lambda of the stage's own types"
                else
                    FunctionRefs.ofDelegate f)
            (Some workers)
            (Some capacity)
            (Some ordered)
            (Option.ofObj name)

    let one (x: 'T) = Seq.singleton x

    let oneAsync (t: Task<'T>) : IAsyncEnumerable<'T> =
        { new IAsyncEnumerable<'T> with
            member _.GetAsyncEnumerator _ =
                let mutable state = 0
                let mutable current = Unchecked.defaultof<'T>

                { new IAsyncEnumerator<'T> with
                    member _.Current = current

                    member _.MoveNextAsync() =
                        if state = 0 then
                            state <- 1

                            ValueTask<bool>(
                                task {
                                    let! v = t
                                    current <- v
                                    return true
                                }
                            )
                        else
                            ValueTask<bool>(false)
                  interface IAsyncDisposable with
                      member _.DisposeAsync() = ValueTask()
                }
        }

[<AbstractClass; Sealed>]
type Stage =
    static member map(f: 'a -> 'b, ?workers, ?capacity, ?ordered, ?name, ?multiprocess) =
        if defaultArg multiprocess false then
            Build.processStage<'a, 'b> (box f) (fun () -> FunctionRefs.ofFunction (box f)) workers capacity ordered name
        else
            Build.thread "map" false f workers capacity ordered name (Workers.mapThread f)

    static member mapTask(f: 'a -> Task<'b>, ?workers, ?capacity, ?ordered, ?name) =
        Build.pool "map" false f workers capacity ordered name (Workers.mapPool (fun x _ -> ValueTask<'b>(f x)))

    static member mapTask(f: 'a -> CancellationToken -> Task<'b>, ?workers, ?capacity, ?ordered, ?name) =
        Build.pool "map" false f workers capacity ordered name (Workers.mapPool (fun x ct -> ValueTask<'b>(f x ct)))

    static member mapValueTask(f: 'a -> ValueTask<'b>, ?workers, ?capacity, ?ordered, ?name) =
        Build.pool "map" false f workers capacity ordered name (Workers.mapPool (fun x _ -> f x))

    static member mapValueTask(f: 'a -> CancellationToken -> ValueTask<'b>, ?workers, ?capacity, ?ordered, ?name) =
        Build.pool "map" false f workers capacity ordered name (Workers.mapPool f)

    static member mapAsync(f: 'a -> Async<'b>, ?workers, ?capacity, ?ordered, ?name) =
        Build.pool
            "map"
            false
            f
            workers
            capacity
            ordered
            name
            (Workers.mapPool (fun x ct -> ValueTask<'b>(Async.StartImmediateAsTask(f x, ct))))

    static member branch(f: 'a -> seq<'b>, ?workers, ?capacity, ?ordered, ?name) =
        Build.thread "branch" false f workers capacity ordered name (Workers.branchThread f)

    static member branchStream(f: 'a -> IAsyncEnumerable<'b>, ?workers, ?capacity, ?ordered, ?name) =
        Build.pool "branch" false f workers capacity ordered name (Workers.branchPool (fun x _ -> f x))

    static member join(f: seq<'a> -> 'b, ?workers, ?capacity, ?ordered, ?name) =
        Build.thread "join" true f workers capacity ordered name (Workers.joinThread (f >> Build.one))

    static member joinMany(f: seq<'a> -> seq<'b>, ?workers, ?capacity, ?ordered, ?name) =
        Build.thread "join" true f workers capacity ordered name (Workers.joinThread f)

    static member joinTask(f: IAsyncEnumerable<'a> -> Task<'b>, ?workers, ?capacity, ?ordered, ?name) =
        Build.pool "join" true f workers capacity ordered name (Workers.joinPool (fun s _ -> Build.oneAsync (f s)))

    static member joinStream(f: IAsyncEnumerable<'a> -> IAsyncEnumerable<'b>, ?workers, ?capacity, ?ordered, ?name) =
        Build.pool "join" true f workers capacity ordered name (Workers.joinPool (fun s _ -> f s))

    static member batch(size: int, ?timeout: TimeSpan, ?workers, ?capacity, ?ordered, ?name) : Pipeline<'a, 'a array> =
        let stage =
            match name with
            | Some n -> $"Stage '{n}' (batch)"
            | None -> "A batch stage"

        if size < 1 then
            raise (ArgumentOutOfRangeException("size", size, $"{stage}: size must be at least 1."))

        match timeout with
        | Some t when t <= TimeSpan.Zero ->
            raise (ArgumentOutOfRangeException("timeout", t, $"{stage}: timeout must be positive."))
        | _ -> ()

        Build.pool "batch" true (box size) workers capacity ordered name (Workers.batch size timeout)
