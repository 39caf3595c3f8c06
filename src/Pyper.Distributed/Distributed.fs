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
        =
        let workersValue = defaultArg workers 1
        // The map stages' own checks and messages ("Stage 'x' (map): ...").
        let policy =
            Build.policyOf StageKind.Map (Build.options workers capacity ordered name timeout onError counts rateLimit)

        let stage =
            Build.remoteStage<'a, 'b>
                Executor.Distributed
                (fun fref -> DistributedExecutor<'a, 'b>(server, max 1 workersValue, fref, policy, bound))
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
