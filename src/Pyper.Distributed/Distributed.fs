namespace Pyper.Distributed

open System
open System.Runtime.CompilerServices
open System.Runtime.InteropServices
open System.Threading
open System.Threading.Tasks
open Pyper
open Pyper.FSharp

module internal Checks =
    let server (s: NatsServer) =
        if isNull (box s) then
            raise (ArgumentNullException("server", "A distributed stage needs the NATS server (NatsServer)."))

    let stage<'a, 'b> (f: obj) locate (server: NatsServer) workers capacity ordered name =
        let workersValue = defaultArg workers 1

        let stage =
            Build.remoteStage<'a, 'b>
                Executor.Distributed
                (fun fref -> DistributedExecutor<'a, 'b>(server, max 1 workersValue, fref))
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
            [<Optional; DefaultParameterValue(null: string)>] name: string
        ) : Pyper.Pipeline<'a, 'b> =
        Pyper.Pipeline<'a, 'b>(
            Checks.stage<'a, 'b>
                (box f)
                (fun () -> FunctionRefs.ofDelegate f)
                server
                (Some workers)
                (Some capacity)
                (Some ordered)
                (Option.ofObj name)
        )

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
            [<Optional; DefaultParameterValue(null: string)>] name: string
        ) : Pyper.Pipeline<'i, 'n> =
        if isNull pipeline then
            raise (ArgumentNullException("pipeline"))

        pipeline.Then(DistributedStage.Map<'o, 'n>(f, server, workers, capacity, ordered, name))

namespace Pyper.FSharp

// Not `open Pyper`: the C# API's `Pyper.Stage` would hide `Pyper.FSharp.Stage` here.
open Pyper.Distributed

[<AutoOpen>]
module DistributedStages =
    type Stage with
        static member distributed(f: 'a -> 'b, server: NatsServer, ?workers, ?capacity, ?ordered, ?name) =
            Checks.stage<'a, 'b>
                (box f)
                (fun () -> Pyper.FunctionRefs.ofFunction (box f))
                server
                workers
                capacity
                ordered
                name
