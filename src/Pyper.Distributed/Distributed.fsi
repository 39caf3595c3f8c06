namespace Pyper.Distributed

open System
open System.Runtime.CompilerServices
open System.Runtime.InteropServices
open System.Threading
open System.Threading.RateLimiting
open System.Threading.Tasks
open Pyper.FSharp

/// Serving distributed stages: from a program of one's own (`ServeAsync`), or with the worker host
/// (`dotnet Pyper.Worker.dll --nats <url> --assemblies <dir>`), on any machine that reaches the server.
[<AbstractClass; Sealed>]
type Worker =
    /// Serves every distributed stage announced on `server` whose function's assembly is in the
    /// `assemblies` folder (or already loaded in this process, same build), until `cancellationToken`
    /// is cancelled. Runs up to `parallelism` batches of each stage at once (0: one per core).
    /// Fails at once with an IOException naming the URL when the server cannot be reached.
    static member ServeAsync:
        server: NatsServer *
        assemblies: string *
        [<Optional; DefaultParameterValue(0)>] parallelism: int *
        [<Optional>] cancellationToken: CancellationToken ->
            Task

/// Distributed map stages for C# (F#: `Stage.distributed`): a one-stage pipeline to anchor on a flow
/// (`Flow.From(items) | DistributedStage.Map<int, int>(F, server)`) or to add with `Then`.
[<AbstractClass; Sealed>]
type DistributedStage =
    /// A map stage whose function runs in worker processes on any number of machines, fed through
    /// `server` (see `Stage.distributed`): a static method or a lambda that captures nothing, in a
    /// compiled assembly; anything else, a bad option or a null server is refused here. `timeout`,
    /// `onError`, `counts` and `rateLimit` are the map stages' (see `Stage.distributed` for what they
    /// do here); with any of them each item travels alone.
    static member Map<'a, 'b> :
        f: Func<'a, 'b> *
        server: NatsServer *
        [<Optional; DefaultParameterValue(1)>] workers: int *
        [<Optional; DefaultParameterValue(1024)>] capacity: int *
        [<Optional; DefaultParameterValue(false)>] ordered: bool *
        [<Optional; DefaultParameterValue(null: string)>] name: string *
        [<Optional; DefaultParameterValue(Nullable<TimeSpan>())>] timeout: Nullable<TimeSpan> *
        [<Optional; DefaultParameterValue(null: Pyper.ErrorPolicy)>] onError: Pyper.ErrorPolicy *
        [<Optional>] counts: Pyper.FailureCounts *
        [<Optional; DefaultParameterValue(null: RateLimiter)>] rateLimit: RateLimiter ->
            Pyper.Pipeline<'a, 'b>

    /// `Map` with a bound argument (Pyper's `bind`; F#: `Stage.distributedBound`): `arg` is serialized
    /// here (refused with an ArgumentException naming `arg` when it cannot cross) and sent once with
    /// the stage's announcement, not with every item; each worker calls `f` with it and each item.
    static member MapBound<'c, 'a, 'b> :
        f: Func<'c, 'a, 'b> *
        arg: 'c *
        server: NatsServer *
        [<Optional; DefaultParameterValue(1)>] workers: int *
        [<Optional; DefaultParameterValue(1024)>] capacity: int *
        [<Optional; DefaultParameterValue(false)>] ordered: bool *
        [<Optional; DefaultParameterValue(null: string)>] name: string *
        [<Optional; DefaultParameterValue(Nullable<TimeSpan>())>] timeout: Nullable<TimeSpan> *
        [<Optional; DefaultParameterValue(null: Pyper.ErrorPolicy)>] onError: Pyper.ErrorPolicy *
        [<Optional>] counts: Pyper.FailureCounts *
        [<Optional; DefaultParameterValue(null: RateLimiter)>] rateLimit: RateLimiter ->
            Pyper.Pipeline<'a, 'b>

    /// `Map` with per-worker state (F#: `Stage.distributedWithState`): each serving slot of a worker
    /// process calls `init` before its first batch of the stage, `f` with its state and each item,
    /// and `dispose` (optional) once when it stops serving the stage. `init`, `f` and `dispose` obey
    /// `f`'s rules of `Map` and are in one assembly; each is refused here, named, otherwise.
    static member MapWithState<'s, 'a, 'b> :
        init: Func<'s> *
        f: Func<'s, 'a, 'b> *
        server: NatsServer *
        [<Optional>] dispose: Action<'s> *
        [<Optional; DefaultParameterValue(1)>] workers: int *
        [<Optional; DefaultParameterValue(1024)>] capacity: int *
        [<Optional; DefaultParameterValue(false)>] ordered: bool *
        [<Optional; DefaultParameterValue(null: string)>] name: string *
        [<Optional; DefaultParameterValue(Nullable<TimeSpan>())>] timeout: Nullable<TimeSpan> *
        [<Optional; DefaultParameterValue(null: Pyper.ErrorPolicy)>] onError: Pyper.ErrorPolicy *
        [<Optional>] counts: Pyper.FailureCounts *
        [<Optional; DefaultParameterValue(null: RateLimiter)>] rateLimit: RateLimiter ->
            Pyper.Pipeline<'a, 'b>

/// `MapDistributed`: the fluent form of `DistributedStage.Map` on any C# pipeline
/// (`Pipeline.Start<int>().Branch(GetData).MapDistributed(Step3, server, workers: 20)`).
[<AbstractClass; Sealed; Extension>]
type DistributedPipelineExtensions =
    /// Adds a distributed map stage (see `DistributedStage.Map`); the input type flows from the left.
    [<Extension>]
    static member MapDistributed<'i, 'o, 'n> :
        pipeline: Pyper.Pipeline<'i, 'o> *
        f: Func<'o, 'n> *
        server: NatsServer *
        [<Optional; DefaultParameterValue(1)>] workers: int *
        [<Optional; DefaultParameterValue(1024)>] capacity: int *
        [<Optional; DefaultParameterValue(false)>] ordered: bool *
        [<Optional; DefaultParameterValue(null: string)>] name: string *
        [<Optional; DefaultParameterValue(Nullable<TimeSpan>())>] timeout: Nullable<TimeSpan> *
        [<Optional; DefaultParameterValue(null: Pyper.ErrorPolicy)>] onError: Pyper.ErrorPolicy *
        [<Optional>] counts: Pyper.FailureCounts *
        [<Optional; DefaultParameterValue(null: RateLimiter)>] rateLimit: RateLimiter ->
            Pyper.Pipeline<'i, 'n>

    /// Adds a distributed map stage with a bound argument (see `DistributedStage.MapBound`).
    [<Extension>]
    static member MapBoundDistributed<'i, 'o, 'c, 'n> :
        pipeline: Pyper.Pipeline<'i, 'o> *
        f: Func<'c, 'o, 'n> *
        arg: 'c *
        server: NatsServer *
        [<Optional; DefaultParameterValue(1)>] workers: int *
        [<Optional; DefaultParameterValue(1024)>] capacity: int *
        [<Optional; DefaultParameterValue(false)>] ordered: bool *
        [<Optional; DefaultParameterValue(null: string)>] name: string *
        [<Optional; DefaultParameterValue(Nullable<TimeSpan>())>] timeout: Nullable<TimeSpan> *
        [<Optional; DefaultParameterValue(null: Pyper.ErrorPolicy)>] onError: Pyper.ErrorPolicy *
        [<Optional>] counts: Pyper.FailureCounts *
        [<Optional; DefaultParameterValue(null: RateLimiter)>] rateLimit: RateLimiter ->
            Pyper.Pipeline<'i, 'n>

namespace Pyper.FSharp

open Pyper.Distributed

/// `Stage.distributed`, beside the other stage constructors (with a reference to Pyper.Distributed).
[<AutoOpen>]
module DistributedStages =
    type Stage with
        /// A map stage whose function runs in worker processes on any number of machines, fed through
        /// the NATS JetStream server `server`. The function obeys the process executor's rules (a module
        /// function or static method of a compiled assembly, or a lambda there that captures nothing;
        /// items and results serializable) and is refused here otherwise. Start workers with
        /// `dotnet Pyper.Worker.dll --nats <url> --assemblies <dir>` or `Worker.ServeAsync`; they may join
        /// and leave during a run. `workers` bounds the batches in flight across all of them (each batch
        /// runs its items one after another in one worker), `capacity`, `ordered` and `name` mean what
        /// they mean for every stage. Without a policy option the run fails at its first failure;
        /// cancelling or stopping it early deletes its queues from the server.
        ///
        /// The map stages' production options apply, checked here with the same messages, and each
        /// item then travels alone (a batch of one) so that the policy sees its own outcome:
        /// - `onError`: an item whose function threw in a worker (its exception rebuilt, as without a
        ///   policy), or that could not cross, failed its attempt; Retry sends it again (to any worker)
        ///   after the backoff, Skip drops it, DeadLetter hands it to the sink in this process. A worker
        ///   process that dies mid-item is not a failure: JetStream gives the item to another worker
        ///   (past the server's MaxDeliver the run fails, whatever the policy), and so is the loss of
        ///   the server or of the run's queues.
        /// - `counts`: retries, skipped, dead-lettered and timed-out items, counted in this process.
        /// - `rateLimit`: one permit per attempt, taken in this process before the item is sent and
        ///   given back when its result (or failure) has come back.
        /// - `timeout`: an item whose result has not come back within it (from its publication: a
        ///   wait for a free worker counts) fails its attempt with the map stages' TimeoutException
        ///   (stage name, input position) and counts as timed out. The parent drops its late result,
        ///   and the worker gives the call up at the timeout: it terminates the message (never
        ///   redelivered) and leaves the call's thread behind, like a thread stage.
        static member distributed:
            f: ('a -> 'b) *
            server: NatsServer *
            ?workers: int *
            ?capacity: int *
            ?ordered: bool *
            ?name: string *
            ?timeout: System.TimeSpan *
            ?onError: OnError<'a> *
            ?counts: Pyper.FailureCounts *
            ?rateLimit: System.Threading.RateLimiting.RateLimiter ->
                Pipeline<'a, 'b>

        /// `distributed` with a bound argument (Pyper's `bind`): `arg` is serialized here (refused
        /// with an ArgumentException naming `arg` when it cannot cross, as for `Stage.mapBound` with
        /// `multiprocess`) and sent with the stage's announcement (one per worker loop of the stage), not
        /// with every item; each worker process applies `f` to it once per announcement it serves, when
        /// it first runs a batch of it (a failure there fails that worker's calls of the stage, as the
        /// items' failures), then calls the result with each item.
        static member distributedBound:
            f: ('c -> 'a -> 'b) *
            arg: 'c *
            server: NatsServer *
            ?workers: int *
            ?capacity: int *
            ?ordered: bool *
            ?name: string *
            ?timeout: System.TimeSpan *
            ?onError: OnError<'a> *
            ?counts: Pyper.FailureCounts *
            ?rateLimit: System.Threading.RateLimiting.RateLimiter ->
                Pipeline<'a, 'b>

        /// `distributed` with per-worker state (as `Stage.mapWithState` with `multiprocess`): each
        /// serving slot of a worker process (`--parallel` of them per worker) calls `init` before its
        /// first batch of the stage, `f` with its state and each item, and `dispose` once when it
        /// stops serving the stage: the run's queue is gone (the run ended, failed or was cancelled),
        /// or the worker stops. The state never crosses: only items and results do. `init`, `f` and
        /// `dispose` obey `f`'s rules of `distributed` and are in one assembly; each is refused here,
        /// named, otherwise. A failure of `init` fails the run whatever `onError` says; a failure of
        /// `dispose` comes after the run has ended, and is logged by the worker.
        static member distributedWithState:
            init: (unit -> 's) *
            f: ('s -> 'a -> 'b) *
            server: NatsServer *
            ?dispose: ('s -> unit) *
            ?workers: int *
            ?capacity: int *
            ?ordered: bool *
            ?name: string *
            ?timeout: System.TimeSpan *
            ?onError: OnError<'a> *
            ?counts: Pyper.FailureCounts *
            ?rateLimit: System.Threading.RateLimiting.RateLimiter ->
                Pipeline<'a, 'b>
