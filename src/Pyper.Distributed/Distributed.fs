namespace Pyper.Distributed

open System
open System.Runtime.CompilerServices
open System.Runtime.InteropServices
open System.Threading
open System.Threading.RateLimiting
open System.Threading.Tasks
open Pyper
open Pyper.FSharp

module internal Checks =
    let server (s: NatsServer) =
        if isNull (box s) then
            raise (ArgumentNullException("server", "A distributed stage needs the NATS server (NatsServer)."))

    let stage<'a, 'b>
        (f: obj)
        locate
        (server: NatsServer)
        workers
        capacity
        ordered
        name
        timeout
        onError
        counts
        rateLimit
        (bound: byte[])
        (state: FunctionRef -> FunctionRef[])
        =
        let workersValue = defaultArg workers 1
        // The map stages' own checks and messages ("Stage 'x' (map): ...").
        let policy =
            Build.policyOf StageKind.Map (Build.options workers capacity ordered name timeout onError counts rateLimit)

        let stage =
            Build.remoteStage<'a, 'b>
                Executor.Distributed
                (fun fref -> DistributedExecutor<'a, 'b>(server, max 1 workersValue, fref, policy, bound, state fref))
                f
                locate
                workers
                capacity
                ordered
                name
        // After the stage's own checks, so a bad option or function is reported first.
        if isNull (box server) then
            raise (
                ArgumentNullException(
                    "server",
                    $"Stage '{stage.Stages.Head.Name}': a distributed stage needs the NATS server (NatsServer)."
                )
            )

        stage

    /// No per-worker state.
    let stateless (_: FunctionRef) : FunctionRef[] = Array.empty

    /// A stage's per-worker state functions (`init`, then `dispose` if any), checked as the process
    /// executor checks them (null, then how a worker re-creates each: refused naming it), and in
    /// the assembly of the stage's function `fref` (a worker loads that one assembly).
    let state (name: string option) (init: obj) locateInit (dispose: obj option) locateDispose (fref: FunctionRef) =
        BuildState.stateChecks name init dispose
        let stage = Build.describe name StageKind.Map

        let located (what: string) (locate: unit -> Result<FunctionRef, string>) =
            match locate () with
            | Ok r when r.Assembly <> fref.Assembly ->
                raise (
                    ArgumentException(
                        $"{stage}: cannot run on distributed workers: {what} is in {IO.Path.GetFileName r.Assembly}, the function in {IO.Path.GetFileName fref.Assembly}: init, f and dispose must be in one assembly.",
                        what
                    )
                )
            | Ok r -> r
            | Error why -> raise (ArgumentException($"{stage}: cannot run in worker processes: {what}: {why}.", what))

        [|
            located "init" locateInit
            if dispose.IsSome then
                located "dispose" locateDispose
        |]

    /// A C# stage: its options as the C# API gives them.
    let csharp<'a, 'b>
        (f: obj)
        locate
        server
        (workers: int)
        (capacity: int)
        (ordered: bool)
        (name: string)
        (timeout: Nullable<TimeSpan>)
        (onError: Pyper.ErrorPolicy)
        (counts: FailureCounts)
        (rateLimit: RateLimiter)
        bound
        state
        =
        let onError =
            if isNull onError then
                None
            else
                Some(onError.ToCore<'a> name)

        Pyper.Pipeline<'a, 'b>(
            stage<'a, 'b>
                f
                locate
                server
                (Some workers)
                (Some capacity)
                (Some ordered)
                (Option.ofObj name)
                (Option.ofNullable timeout)
                onError
                (if isNull (box counts) then None else Some counts)
                (Option.ofObj rateLimit)
                bound
                state
        )

[<AbstractClass; Sealed>]
type Worker =
    static member ServeAsync
        (
            server: NatsServer,
            assemblies: string,
            [<Optional; DefaultParameterValue(0)>] parallelism: int,
            [<Optional>] cancellationToken: CancellationToken
        ) : Task =
        Checks.server server

        if String.IsNullOrWhiteSpace assemblies || not (IO.Directory.Exists assemblies) then
            raise (ArgumentException($"The assemblies folder '{assemblies}' does not exist.", "assemblies"))

        if parallelism < 0 then
            raise (
                ArgumentOutOfRangeException("parallelism", parallelism, "parallelism must be 0 (one per core) or more.")
            )

        let dir = IO.Path.GetFullPath assemblies
        ProcessHost.resolveIn dir

        let p =
            if parallelism = 0 then
                Environment.ProcessorCount
            else
                parallelism

        WorkerLoop.serve server dir p ignore ignore cancellationToken

[<AbstractClass; Sealed>]
type DistributedStage =
    static member Map<'a, 'b>
        (
            f: Func<'a, 'b>,
            server: NatsServer,
            [<Optional; DefaultParameterValue(1)>] workers: int,
            [<Optional; DefaultParameterValue(1024)>] capacity: int,
            [<Optional; DefaultParameterValue(false)>] ordered: bool,
            [<Optional; DefaultParameterValue(null: string)>] name: string,
            [<Optional; DefaultParameterValue(Nullable<TimeSpan>())>] timeout: Nullable<TimeSpan>,
            [<Optional; DefaultParameterValue(null: Pyper.ErrorPolicy)>] onError: Pyper.ErrorPolicy,
            [<Optional>] counts: FailureCounts,
            [<Optional; DefaultParameterValue(null: RateLimiter)>] rateLimit: RateLimiter
        ) : Pyper.Pipeline<'a, 'b> =
        Checks.csharp<'a, 'b>
            (box f)
            (fun () -> FunctionRefs.ofDelegate f)
            server
            workers
            capacity
            ordered
            name
            timeout
            onError
            counts
            rateLimit
            null
            Checks.stateless

    static member MapBound<'c, 'a, 'b>
        (
            f: Func<'c, 'a, 'b>,
            arg: 'c,
            server: NatsServer,
            [<Optional; DefaultParameterValue(1)>] workers: int,
            [<Optional; DefaultParameterValue(1024)>] capacity: int,
            [<Optional; DefaultParameterValue(false)>] ordered: bool,
            [<Optional; DefaultParameterValue(null: string)>] name: string,
            [<Optional; DefaultParameterValue(Nullable<TimeSpan>())>] timeout: Nullable<TimeSpan>,
            [<Optional; DefaultParameterValue(null: Pyper.ErrorPolicy)>] onError: Pyper.ErrorPolicy,
            [<Optional>] counts: FailureCounts,
            [<Optional; DefaultParameterValue(null: RateLimiter)>] rateLimit: RateLimiter
        ) : Pyper.Pipeline<'a, 'b> =
        let bound = Build.bound (Option.ofObj name) arg

        Checks.csharp<'a, 'b>
            (box f)
            (fun () -> Build.boundDelegateRef f)
            server
            workers
            capacity
            ordered
            name
            timeout
            onError
            counts
            rateLimit
            bound
            Checks.stateless

    static member MapWithState<'s, 'a, 'b>
        (
            init: Func<'s>,
            f: Func<'s, 'a, 'b>,
            server: NatsServer,
            [<Optional>] dispose: Action<'s>,
            [<Optional; DefaultParameterValue(1)>] workers: int,
            [<Optional; DefaultParameterValue(1024)>] capacity: int,
            [<Optional; DefaultParameterValue(false)>] ordered: bool,
            [<Optional; DefaultParameterValue(null: string)>] name: string,
            [<Optional; DefaultParameterValue(Nullable<TimeSpan>())>] timeout: Nullable<TimeSpan>,
            [<Optional; DefaultParameterValue(null: Pyper.ErrorPolicy)>] onError: Pyper.ErrorPolicy,
            [<Optional>] counts: FailureCounts,
            [<Optional; DefaultParameterValue(null: RateLimiter)>] rateLimit: RateLimiter
        ) : Pyper.Pipeline<'a, 'b> =
        let dispose = Option.ofObj dispose

        Checks.csharp<'a, 'b>
            (box f)
            (fun () -> Build.boundDelegateRef f)
            server
            workers
            capacity
            ordered
            name
            timeout
            onError
            counts
            rateLimit
            null
            (Checks.state
                (Option.ofObj name)
                (box init)
                (fun () -> FunctionRefs.ofDelegate init)
                (Option.map box dispose)
                (fun () -> FunctionRefs.ofDelegate dispose.Value))

[<AbstractClass; Sealed; Extension>]
type DistributedPipelineExtensions =
    [<Extension>]
    static member MapDistributed<'i, 'o, 'n>
        (
            pipeline: Pyper.Pipeline<'i, 'o>,
            f: Func<'o, 'n>,
            server: NatsServer,
            [<Optional; DefaultParameterValue(1)>] workers: int,
            [<Optional; DefaultParameterValue(1024)>] capacity: int,
            [<Optional; DefaultParameterValue(false)>] ordered: bool,
            [<Optional; DefaultParameterValue(null: string)>] name: string,
            [<Optional; DefaultParameterValue(Nullable<TimeSpan>())>] timeout: Nullable<TimeSpan>,
            [<Optional; DefaultParameterValue(null: Pyper.ErrorPolicy)>] onError: Pyper.ErrorPolicy,
            [<Optional>] counts: FailureCounts,
            [<Optional; DefaultParameterValue(null: RateLimiter)>] rateLimit: RateLimiter
        ) : Pyper.Pipeline<'i, 'n> =
        if isNull pipeline then
            raise (ArgumentNullException("pipeline"))

        pipeline.Then(
            DistributedStage.Map<'o, 'n>(
                f,
                server,
                workers,
                capacity,
                ordered,
                name,
                timeout,
                onError,
                counts,
                rateLimit
            )
        )

    [<Extension>]
    static member MapBoundDistributed<'i, 'o, 'c, 'n>
        (
            pipeline: Pyper.Pipeline<'i, 'o>,
            f: Func<'c, 'o, 'n>,
            arg: 'c,
            server: NatsServer,
            [<Optional; DefaultParameterValue(1)>] workers: int,
            [<Optional; DefaultParameterValue(1024)>] capacity: int,
            [<Optional; DefaultParameterValue(false)>] ordered: bool,
            [<Optional; DefaultParameterValue(null: string)>] name: string,
            [<Optional; DefaultParameterValue(Nullable<TimeSpan>())>] timeout: Nullable<TimeSpan>,
            [<Optional; DefaultParameterValue(null: Pyper.ErrorPolicy)>] onError: Pyper.ErrorPolicy,
            [<Optional>] counts: FailureCounts,
            [<Optional; DefaultParameterValue(null: RateLimiter)>] rateLimit: RateLimiter
        ) : Pyper.Pipeline<'i, 'n> =
        if isNull pipeline then
            raise (ArgumentNullException("pipeline"))

        pipeline.Then(
            DistributedStage.MapBound<'c, 'o, 'n>(
                f,
                arg,
                server,
                workers,
                capacity,
                ordered,
                name,
                timeout,
                onError,
                counts,
                rateLimit
            )
        )

namespace Pyper.FSharp

// Not `open Pyper`: the C# API's `Pyper.Stage` would hide `Pyper.FSharp.Stage` here.
open Pyper.Distributed

[<AutoOpen>]
module DistributedStages =
    type Stage with
        static member distributed
            (
                f: 'a -> 'b,
                server: NatsServer,
                ?workers,
                ?capacity,
                ?ordered,
                ?name,
                ?timeout,
                ?onError,
                ?counts,
                ?rateLimit
            ) =
            Checks.stage<'a, 'b>
                (box f)
                (fun () -> Pyper.FunctionRefs.ofFunction (box f))
                server
                workers
                capacity
                ordered
                name
                timeout
                onError
                counts
                rateLimit
                null
                Checks.stateless

        static member distributedBound
            (
                f: 'c -> 'a -> 'b,
                arg: 'c,
                server: NatsServer,
                ?workers,
                ?capacity,
                ?ordered,
                ?name,
                ?timeout,
                ?onError,
                ?counts,
                ?rateLimit
            ) =
            let bound = Pyper.FSharp.Build.bound name arg

            Checks.stage<'a, 'b>
                (box f)
                (fun () -> Pyper.FunctionRefs.ofFunction (box f))
                server
                workers
                capacity
                ordered
                name
                timeout
                onError
                counts
                rateLimit
                bound
                Checks.stateless

        static member distributedWithState
            (
                init: unit -> 's,
                f: 's -> 'a -> 'b,
                server: NatsServer,
                ?dispose: 's -> unit,
                ?workers,
                ?capacity,
                ?ordered,
                ?name,
                ?timeout,
                ?onError,
                ?counts,
                ?rateLimit
            ) =
            Checks.stage<'a, 'b>
                (box f)
                (fun () -> Pyper.FunctionRefs.ofFunction (box f))
                server
                workers
                capacity
                ordered
                name
                timeout
                onError
                counts
                rateLimit
                null
                (Checks.state
                    name
                    (box init)
                    (fun () -> Pyper.FunctionRefs.ofFunction (box init))
                    (Option.map box dispose)
                    (fun () -> Pyper.FunctionRefs.ofFunction (box dispose.Value)))
