namespace Pyper.FSharp

open Pyper
open System
open System.Runtime.ExceptionServices
open System.Threading
open System.Threading.Tasks

/// The builders of map stages with per-worker state: on threads, async workers and worker
/// processes (where the state lives in the worker process).
module internal BuildState =
    open Build

    /// Refuses a null `init` or `dispose` of a stage with per-worker state.
    let stateChecks (name: string option) (init: obj) (dispose: obj option) =
        if isNull init then
            raise (ArgumentNullException("init", $"{describe name StageKind.Map}: init is null."))

        match dispose with
        | Some d when isNull d ->
            raise (ArgumentNullException("dispose", $"{describe name StageKind.Map}: dispose is null."))
        | _ -> ()

    /// The original exception of a state failure (a recycle's `init` or `dispose`, raised inside a
    /// call as a StateFailureException so that no policy takes it for the item's failure).
    let private original (e: exn) =
        match e with
        | :? StateFailureException as s -> s.InnerException
        | e -> e

    /// `make` applied to the cell's state, for each call: once, or, when the cell recycles, again
    /// for each new state (its failure then is the state's: a StateFailureException).
    let private perState (cell: StateCell<'s>) (recycle: int) (make: 's -> 'g) : unit -> 'g =
        let current = ref (make cell.State)

        if recycle = 0 then
            fun () -> current.Value
        else
            fun () ->
                if cell.Tick() then
                    try
                        current.Value <- make cell.State
                    with e ->
                        raise (StateFailureException e)

                current.Value

    /// An in-process stage with state: its functions and options checked, in this order, into its
    /// description on `executor`, its policy and its recycle count.
    let private prepared executor (init: obj) (f: obj) (dispose: obj option) (o: MapOptions<'a>) recycleAfter =
        notNull StageKind.Map o.Name f
        stateChecks o.Name init dispose
        let info = mapInfo executor o
        let policy = policyOf StageKind.Map o
        struct (info, policy, WorkerStates.recycle (describe o.Name StageKind.Map) recycleAfter)

    /// A blocking map stage with per-worker state: `init` on each worker's thread before its
    /// first item, `dispose` on it when the worker ends; with `recycleAfter`, both again after
    /// every `recycleAfter` calls (on the thread that makes the call).
    let mapThreadWithState
        (init: unit -> 's)
        (f: 's -> 'a -> 'b)
        (dispose: ('s -> unit) option)
        (o: MapOptions<'a>)
        recycleAfter
        =
        let struct (info, policy, recycle) =
            prepared Executor.Thread (box init) (box f) (Option.map box dispose) o recycleAfter

        let loop (env: WorkerEnv<'a, 'b>) =
            let cell = StateCell<'s>(init, dispose, recycle)
            cell.Open()

            try
                try
                    let g = perState cell recycle f

                    let call = if recycle = 0 then g () else fun x -> g () x

                    threadLoop policy call env
                with e ->
                    ExceptionDispatchInfo.Throw(original e)
            finally
                cell.Close()

        Interpreter.stage info (ThreadExecutor loop)

    /// An async map stage with per-worker state: `init` once per async worker before its first
    /// item, `dispose` when the worker ends; with `recycleAfter`, both again after every
    /// `recycleAfter` calls.
    let mapPoolWithState
        (init: unit -> 's)
        (f: 's -> 'a -> CancellationToken -> Task<'b>)
        (dispose: ('s -> unit) option)
        (o: MapOptions<'a>)
        recycleAfter
        =
        let struct (info, policy, recycle) =
            prepared Executor.Async (box init) (box f) (Option.map box dispose) o recycleAfter

        let loop (env: WorkerEnv<'a, 'b>) : Task =
            task {
                let cell = StateCell<'s>(init, dispose, recycle)
                cell.Open()

                try
                    try
                        let g = perState cell recycle f
                        do! poolLoop policy (fun x ct -> ValueTask<'b>(NullResult.task (g () x ct))) env
                    with e ->
                        ExceptionDispatchInfo.Throw(original e)
                finally
                    cell.Close()
            }

        Interpreter.stage info (AsyncExecutor loop)

    /// A map stage with per-worker state whose workers are processes on this machine: `init`, `f`
    /// and `dispose` are re-created in each worker process (`locate...`: how; each refused here,
    /// naming it, when it cannot be), which makes, uses and disposes its state there (see
    /// `Wire.InitState`). The state itself never crosses: only items and results do.
    let processWithState<'s, 'a, 'b>
        (init: obj)
        (locateInit: unit -> Result<FunctionRef, string>)
        (f: obj)
        (locateF: unit -> Result<FunctionRef, string>)
        (dispose: obj option)
        (locateDispose: unit -> Result<FunctionRef, string>)
        (o: MapOptions<'a>)
        recycleAfter
        =
        notNull StageKind.Map o.Name f
        stateChecks o.Name init dispose
        let stage = describe o.Name StageKind.Map
        let policy = policyOf StageKind.Map o
        let recycle = WorkerStates.recycle stage recycleAfter

        let located (what: string) (locate: unit -> Result<FunctionRef, string>) =
            match locate () with
            | Ok r -> r
            | Error why -> raise (ArgumentException($"{stage}: cannot run in worker processes: {what}: {why}.", what))

        let executor (fref: FunctionRef) =
            let initRef = located "init" locateInit
            let disposeRef = dispose |> Option.map (fun _ -> located "dispose" locateDispose)
            let setup = ProcessConnection.stateSetup recycle initRef fref disposeRef
            ProcessExecutor<'a, 'b>(Shape.Map, setup, policy) :> StageExecutor<'a, 'b>

        remoteStageOf<'a, 'b> StageKind.Map Executor.Process executor f locateF o.Workers o.Capacity o.Ordered o.Name

    /// `Stage.mapWithState`: on threads, or, with `multiprocess`, in worker processes.
    let mapWithState
        (init: unit -> 's)
        (f: 's -> 'a -> 'b)
        (dispose: ('s -> unit) option)
        multiprocess
        (o: MapOptions<'a>)
        recycleAfter
        =
        if defaultArg multiprocess false then
            processWithState<'s, 'a, 'b>
                (box init)
                (fun () -> FunctionRefs.ofFunction (box init))
                (box f)
                (fun () -> FunctionRefs.ofFunction (box f))
                (Option.map box dispose)
                (fun () -> FunctionRefs.ofFunction (box dispose.Value))
                o
                recycleAfter
        else
            mapThreadWithState init f dispose o recycleAfter

    /// `Stage.mapWithStateFunc` (delegates: the C# facade's): on threads, or, with `multiprocess`,
    /// in worker processes (`f` then of the stage's own types, as for `mapBoundFunc`).
    let mapWithStateFunc
        (init: Func<'s>)
        (f: Func<'s, 'a, 'b>)
        (dispose: Action<'s> option)
        multiprocess
        (o: MapOptions<'a>)
        recycleAfter
        =
        if defaultArg multiprocess false then
            processWithState<'s, 'a, 'b>
                (box init)
                (fun () -> FunctionRefs.ofDelegate init)
                (box f)
                (fun () -> boundDelegateRef f)
                (Option.map box dispose)
                (fun () -> FunctionRefs.ofDelegate dispose.Value)
                o
                recycleAfter
        else
            // A null delegate stays null: the checks name it.
            let orNull (d: obj) g =
                if isNull d then Unchecked.defaultof<_> else g

            mapThreadWithState
                (orNull init (fun () -> init.Invoke()))
                (orNull f (fun s x -> f.Invoke(s, x)))
                (dispose |> Option.map (fun d -> orNull d d.Invoke))
                o
                recycleAfter
