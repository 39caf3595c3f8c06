namespace Pyper.FSharp

open Pyper
open System
open System.Collections.Generic
open System.Text.Json
open System.Threading
open System.Threading.Tasks

/// The stage builders behind `Stage`: option checks, the executor each function shape runs on,
/// and the remote stages other executors' packages (Pyper.Distributed) build on.
module internal Build =
    let describe (name: string option) (kind: StageKind) =
        match name with
        | Some n -> $"Stage '{n}' ({StageInfo.label kind})"
        | None -> $"A {StageInfo.label kind} stage"

    /// Refuses a null function, naming the stage.
    let notNull (kind: StageKind) (name: string option) (f: obj) =
        if isNull f then
            raise (ArgumentNullException("f", $"{describe name kind}: the function is null."))

    /// Checks a stage's options and returns its description; throws ArgumentException naming the stage and option.
    let info (kind: StageKind) (executor: Executor) (joins: bool) workers capacity ordered (name: string option) =
        let workers = defaultArg workers 1
        let capacity = defaultArg capacity StageDefaults.Capacity
        let ordered = defaultArg ordered false
        let stage = describe name kind

        match name with
        | Some n when String.IsNullOrWhiteSpace n ->
            raise (ArgumentException($"A {StageInfo.label kind} stage: name must not be empty or blank.", "name"))
        | _ -> ()

        if workers < 1 then
            raise (ArgumentOutOfRangeException("workers", workers, $"{stage}: workers must be at least 1."))

        let most =
            if executor = Executor.Process then
                Tuning.MaxProcessWorkers
            else
                Tuning.MaxWorkers

        if workers > most then
            let what =
                if executor = Executor.Process then
                    "worker processes"
                else
                    "workers in one process"

            raise (
                ArgumentOutOfRangeException(
                    "workers",
                    workers,
                    $"{stage}: workers must be at most {most} ({what}); got {workers}."
                )
            )

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

    /// A map stage's options as the user gave them; each is checked where it is used (`mapInfo`,
    /// `policyOf`), so every map builder takes one value instead of eight arguments.
    type MapOptions<'a> =
        {
            Workers: int option
            Capacity: int option
            Ordered: bool option
            Name: string option
            Timeout: TimeSpan option
            OnError: OnError<'a> option
            Counts: FailureCounts option
            RateLimit: System.Threading.RateLimiting.RateLimiter option
        }

    /// A map stage's options, from `Stage`'s optional arguments.
    let options workers capacity ordered name timeout onError counts rateLimit : MapOptions<'a> =
        {
            Workers = workers
            Capacity = capacity
            Ordered = ordered
            Name = name
            Timeout = timeout
            OnError = onError
            Counts = counts
            RateLimit = rateLimit
        }

    /// The options of a stage that takes no policy (branch and join stages).
    let plain workers capacity ordered name : MapOptions<'a> =
        options workers capacity ordered name None None None None

    /// A map stage's checked description on `executor`.
    let mapInfo (executor: Executor) (o: MapOptions<'a>) =
        info StageKind.Map executor false o.Workers o.Capacity o.Ordered o.Name

    /// A stage's checked policy (None when no policy option is set).
    let policyOf (kind: StageKind) (o: MapOptions<'a>) =
        PolicyRules.check (describe o.Name kind) o.Timeout o.OnError o.Counts o.RateLimit

    /// A stage whose workers are dedicated threads running `loop`.
    let thread kind joins f workers capacity ordered name loop =
        notNull kind name (box f)
        Interpreter.stage (info kind Executor.Thread joins workers capacity ordered name) (ThreadExecutor loop)

    /// The blocking map loop for `f`: the plain one, or the policy-aware one.
    let threadLoop (policy: StagePolicy<'a> option) (f: 'a -> 'b) =
        match policy with
        | None -> Loops.mapThread f
        | Some p -> Policies.mapThread p f

    /// The async map loop for `g`: the plain one, or the policy-aware one.
    let poolLoop (policy: StagePolicy<'a> option) (g: 'a -> CancellationToken -> ValueTask<'b>) =
        match policy with
        | None -> Loops.mapPool g
        | Some p -> Policies.mapPool p g

    /// A blocking map stage on dedicated threads: the plain loop, or the policy-aware one when a
    /// timeout or failure policy is set.
    let mapThread (f: 'a -> 'b) (o: MapOptions<'a>) =
        notNull StageKind.Map o.Name (box f)
        let info = mapInfo Executor.Thread o
        Interpreter.stage info (ThreadExecutor(threadLoop (policyOf StageKind.Map o) f))

    /// `mapThread` for a delegate: without a policy its loop calls the delegate directly.
    let mapThreadFunc (f: Func<'a, 'b>) (o: MapOptions<'a>) =
        notNull StageKind.Map o.Name (box f)
        let info = mapInfo Executor.Thread o

        let loop =
            match policyOf StageKind.Map o with
            | None -> Loops.mapThreadFunc f
            | Some p -> Policies.mapThread p f.Invoke

        Interpreter.stage info (ThreadExecutor loop)

    /// An async map stage (`g` is the function as called with a token): the plain loop, or the
    /// policy-aware one when a timeout or failure policy is set.
    let mapPool (f: obj) (g: 'a -> CancellationToken -> ValueTask<'b>) (o: MapOptions<'a>) =
        notNull StageKind.Map o.Name f
        let info = mapInfo Executor.Async o
        Interpreter.stage info (AsyncExecutor(poolLoop (policyOf StageKind.Map o) g))

    /// A stage whose workers are async loops (`loop`) on the thread pool.
    let pool kind joins f workers capacity ordered name loop =
        notNull kind name (box f)
        Interpreter.stage (info kind Executor.Async joins workers capacity ordered name) (AsyncExecutor loop)

    let private isAsync (t: Type) =
        typeof<Task>.IsAssignableFrom t
        || t = typeof<ValueTask>
        || (t.IsGenericType
            && (t.GetGenericTypeDefinition() = typedefof<ValueTask<_>>
                || t.GetGenericTypeDefinition() = typedefof<Async<_>>))

    /// A stage of `stageKind` whose workers run in other processes (`kind`: on this machine or
    /// distributed); `locate` finds how a worker re-creates the function, `executor` makes the
    /// stage's executor. 'a and 'b are the stage's items and results (a branch's or join's elements).
    let remoteStageOf<'a, 'b>
        (stageKind: StageKind)
        (kind: Executor)
        (executor: FunctionRef -> StageExecutor<'a, 'b>)
        (f: obj)
        (locate: unit -> Result<FunctionRef, string>)
        workers
        capacity
        ordered
        name
        =
        notNull stageKind name f
        let joins = stageKind = StageKind.Join
        let info = info stageKind kind joins workers capacity ordered name
        let stage = describe name stageKind

        if isAsync typeof<'b> then
            let instead =
                match stageKind with
                | StageKind.Branch -> "Stage.branchStream"
                | StageKind.Join -> "Stage.joinTask or Stage.joinStream"
                | _ -> "Stage.mapTask"

            raise (
                ArgumentException(
                    $"{stage}: an async function (returning {typeof<'b>.Name}) cannot run in worker processes, as in Pyper: run it on the async executor ({instead}) instead.",
                    "multiprocess"
                )
            )

        // Before the function: an item type that cannot cross makes any function useless.
        WireTypes.check stage "parameter" typeof<'a>
        WireTypes.check stage "result" typeof<'b>

        match locate () with
        | Ok fref -> Interpreter.stage info (executor fref)
        | Error why -> raise (ArgumentException($"{stage}: cannot run in worker processes: {why}.", "f"))

    /// A map stage whose workers run in other processes (see `remoteStageOf`).
    let remoteStage<'a, 'b>
        (kind: Executor)
        (executor: FunctionRef -> StageExecutor<'a, 'b>)
        (f: obj)
        (locate: unit -> Result<FunctionRef, string>)
        workers
        capacity
        ordered
        name
        =
        remoteStageOf<'a, 'b> StageKind.Map kind executor f locate workers capacity ordered name

    /// How a worker re-creates a delegate of `shape`, refusing a method whose own types are not the
    /// stage's (a worker process reads items as the method's own types, or their elements).
    let delegateRefOf<'a, 'b> (shape: Shape) (f: Delegate) =
        let m = f.Method
        let ps = m.GetParameters()

        if ps.Length = 1 && Runners.itemTypes shape m <> (typeof<'a>, typeof<'b>) then
            let what =
                match shape with
                | Shape.Map -> "items"
                | _ -> "items (sequence elements)"

            Error
                $"the method takes {ps[0].ParameterType} and returns {m.ReturnType}, but the stage's {what} are {typeof<'a>} and its results {typeof<'b>}: wrap it in a lambda of the stage's own types"
        else
            FunctionRefs.ofDelegate f

    /// How a worker re-creates a delegate (map stages).
    let delegateRef<'a, 'b> (f: Func<'a, 'b>) = delegateRefOf<'a, 'b> Shape.Map f

    /// A stage of `shape` whose workers are processes on this machine: the plain loops, or (map
    /// stages) the policy-aware one when a timeout or failure policy is set. `bound` is the JSON of
    /// a bound argument (see `bound`; map stages), or null.
    let processStageOf<'a, 'b> (shape: Shape) f locate (o: MapOptions<'a>) (bound: byte[]) =
        let stageKind =
            match shape with
            | Shape.Map -> StageKind.Map
            | Shape.Branch -> StageKind.Branch
            | _ -> StageKind.Join

        let policy = policyOf stageKind o

        remoteStageOf<'a, 'b>
            stageKind
            Executor.Process
            (fun fref -> ProcessExecutor<'a, 'b>(shape, ProcessConnection.setup shape fref bound, policy))
            f
            locate
            o.Workers
            o.Capacity
            o.Ordered
            o.Name

    /// A branch or join stage (or a map without options) whose workers are processes on this
    /// machine: no policy, no bound argument.
    let processPlain<'a, 'b> shape f locate workers capacity ordered name =
        processStageOf<'a, 'b> shape f locate (plain workers capacity ordered name) null

    /// A map stage whose workers are processes on this machine (see `processStageOf`).
    let processStage<'a, 'b> f locate (o: MapOptions<'a>) (bound: byte[]) =
        processStageOf<'a, 'b> Shape.Map f locate o bound

    /// A process stage's bound argument as JSON (sent once to each worker process), refused with
    /// an ArgumentException (`arg`) naming the stage when it cannot cross to a worker process.
    let bound<'c> (name: string option) (arg: 'c) : byte[] =
        let stage = describe name StageKind.Map

        try
            WireTypes.check stage "bound argument" typeof<'c>
        with :? ArgumentException as e ->
            raise (ArgumentException(e.Message, "arg", e))

        try
            JsonSerializer.SerializeToUtf8Bytes(arg, Wire.options)
        with e ->
            raise (
                ArgumentException(
                    $"{stage}: the bound argument (a {typeof<'c>}) cannot be sent to a worker process: {e.Message}",
                    "arg",
                    e
                )
            )

    /// How a worker re-creates a two-parameter delegate (an argument, then the item), refusing a
    /// method whose own types are not the stage's.
    let boundDelegateRef<'c, 'a, 'b> (f: Func<'c, 'a, 'b>) =
        let m = f.Method
        let ps = m.GetParameters()

        if
            ps.Length = 2
            && (ps[0].ParameterType <> typeof<'c>
                || ps[1].ParameterType <> typeof<'a>
                || m.ReturnType <> typeof<'b>)
        then
            Error
                $"the method takes {ps[0].ParameterType} and {ps[1].ParameterType} and returns {m.ReturnType}, but the stage's argument is {typeof<'c>}, its items {typeof<'a>} and its results {typeof<'b>}: wrap it in a lambda of the stage's own types"
        else
            FunctionRefs.ofDelegate f

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
                                    let! v = NullResult.task t
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
