namespace Pyper.Distributed

open System
open System.Collections.Concurrent
open System.Diagnostics
open System.IO
open System.Runtime.CompilerServices
open System.Runtime.ExceptionServices
open System.Text.Json
open System.Threading
open System.Threading.Tasks
open NATS.Client.Core
open NATS.Client.JetStream
open NATS.Client.JetStream.Models
open Pyper

/// One distributed stage in one run, on the parent's side: its streams, the results it waits
/// for (by batch id) and the background loops that feed them. `Run` is the executor's unit:
/// "run one batch remotely".
[<Sealed; AllowNullLiteral>]
type internal RemoteStage(conn: NatsConnection, js: NatsJSContext, id: string, server: NatsServer, stage: string) =
    let pending = ConcurrentDictionary<int64, TaskCompletionSource<byte[]>>()
    let stop = new CancellationTokenSource()
    let mutable nextId = 0L
    let mutable fault: exn = null
    let loops = ResizeArray<Task>()
    /// The results loop's current consumption, cancelled on a reconnect.
    let mutable session: CancellationTokenSource = null

    /// Fails every batch waiting now and every batch sent later with `e` (the first fault wins).
    member _.Fault(e: exn) =
        if isNull (Interlocked.CompareExchange(&fault, e, null)) then
            for kv in pending do
                kv.Value.TrySetException e |> ignore

    /// Hands a result frame to the batch waiting for it; a duplicate (a redelivered batch whose
    /// first result already came) finds no one waiting and is dropped.
    member _.Dispatch(data: byte[]) =
        let _, batch = Protocol.header data

        match pending.TryRemove batch with
        | true, waiting -> waiting.TrySetResult data |> ignore
        | _ -> ()

    /// Publishes one batch (a JSON array of items) and waits for its result frame.
    member this.Run(items: byte[], token: CancellationToken) : Task<byte[]> =
        task {
            let batch = Interlocked.Increment &nextId

            let waiting =
                TaskCompletionSource<byte[]>(TaskCreationOptions.RunContinuationsAsynchronously)

            pending[batch] <- waiting

            match Volatile.Read &fault with
            | null -> ()
            | e -> waiting.TrySetException e |> ignore

            let message = Protocol.frame 0uy batch items 0 items.Length

            // A full queue ("maximum messages exceeded": backpressure) or a restarting server: try
            // again shortly, for up to GiveUpAfter.
            let! failure =
                Protocol.publish
                    js
                    (Protocol.workSubject id)
                    message
                    (string batch)
                    server.GiveUpAfter
                    5
                    (fun () -> waiting.Task.IsCompleted)
                    token

            if not (isNull failure) then
                this.Fault(
                    IOException(
                        $"Stage '{stage}': cannot publish to the NATS server at {server.Url}: {failure.Message}",
                        failure
                    )
                )

            use _ = token.Register(fun () -> waiting.TrySetCanceled token |> ignore)
            return! waiting.Task
        }

    /// Consumes result frames; a fetch loop of its own that starts again after a server restart
    /// (the health loop cancels the current session on a reconnect: a pull consumer may stop
    /// receiving after one) and fails the stage when its queues are gone from the server.
    member private this.ResultsLoop() : Task =
        task {
            let mutable go = true

            while go && not stop.IsCancellationRequested do
                use current = CancellationTokenSource.CreateLinkedTokenSource stop.Token
                Volatile.Write(&session, current)

                let! failure =
                    task {
                        try
                            let! consumer =
                                js.GetConsumerAsync(Protocol.resultsStream id, Protocol.ResultsConsumer, current.Token)

                            let results =
                                consumer.ConsumeAsync<byte[]>(
                                    opts = NatsJSConsumeOpts(MaxMsgs = 64),
                                    cancellationToken = current.Token
                                )

                            do!
                                AsyncStream.forEach results current.Token (fun () -> Task.CompletedTask) (fun msg ->
                                    this.Dispatch msg.Data
                                    msg.AckAsync(cancellationToken = current.Token).AsTask())

                            return null
                        with e ->
                            return e
                    }

                match failure with
                | _ when stop.IsCancellationRequested -> go <- false
                | e when Protocol.isGone e ->
                    go <- false

                    this.Fault(
                        IOException(
                            $"Stage '{stage}': its queues are gone from the NATS server at {server.Url} (was it restarted without its storage?); the batches in flight are lost.",
                            e
                        )
                    )
                | _ -> do! Task.Delay(50, stop.Token).ContinueWith(ignore)
        }

    /// Fails the stage when the server reports a batch delivered MaxDeliver times without a result.
    member private this.PoisonLoop() : Task =
        task {
            let subject =
                $"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{Protocol.workStream id}.{Protocol.WorkConsumer}"

            try
                let advisories =
                    conn.SubscribeAsync<byte[]>(subject, cancellationToken = stop.Token)

                do!
                    AsyncStream.forEach advisories stop.Token (fun () -> Task.CompletedTask) (fun _ ->
                        this.Fault(
                            RemoteStageException(
                                $"Stage '{stage}': a batch was delivered {server.MaxDeliver} times (MaxDeliver) and every worker holding it died or stalled past AckWait ({server.AckWait}); it is not retried.",
                                "",
                                "",
                                Nullable()
                            )
                        )

                        Task.CompletedTask)
            with _ ->
                ()
        }

    /// Fails the stage when the server stays unreachable for GiveUpAfter (a hang guard, polled).
    member private this.HealthLoop() : Task =
        task {
            let down = Stopwatch()

            try
                while not stop.IsCancellationRequested do
                    do! Task.Delay(100, stop.Token)

                    if conn.ConnectionState = NatsConnectionState.Open then
                        if down.IsRunning then
                            // Back after a disconnect: consume results afresh.
                            try
                                (Volatile.Read &session).Cancel()
                            with _ ->
                                ()

                        down.Reset()
                    elif not down.IsRunning then
                        down.Start()
                    elif down.Elapsed > server.GiveUpAfter then
                        this.Fault(
                            IOException(
                                $"Stage '{stage}': lost the NATS server at {server.Url} for more than {server.GiveUpAfter}."
                            )
                        )
            with _ ->
                ()
        }

    member this.StartLoops() =
        loops.Add(Task.Run(fun () -> this.ResultsLoop()))
        loops.Add(Task.Run(fun () -> this.PoisonLoop()))
        loops.Add(Task.Run(fun () -> this.HealthLoop()))

    /// Stops the loops, deletes the stage's streams and its announcement, closes the connection.
    member _.DisposeAsync() : Task =
        task {
            stop.Cancel()

            // At once: each is a round trip, and deleting a file-stored stream takes the server a while.
            do!
                Task.WhenAll(
                    Protocol.bestEffort 3.0 (fun ct ->
                        js
                            .PurgeStreamAsync(
                                Protocol.StagesStream,
                                StreamPurgeRequest(Filter = Protocol.stageSubject id),
                                ct
                            )
                            .AsTask()),
                    Protocol.bestEffort 3.0 (fun ct -> js.DeleteStreamAsync(Protocol.workStream id, ct).AsTask()),
                    Protocol.bestEffort 3.0 (fun ct -> js.DeleteStreamAsync(Protocol.resultsStream id, ct).AsTask())
                )

            do! Task.WhenAll(loops).ContinueWith(ignore)
            do! conn.DisposeAsync()
            stop.Dispose()
        }

    /// Connects, creates the stage's streams and consumer, announces the stage to workers.
    static member Start(server: NatsServer, stage: string, fref: FunctionRef, workers: int) : Task<RemoteStage> =
        task {
            let! conn = Protocol.connect server $"Stage '{stage}'"
            let js = NatsJSContext(conn)
            let id = Guid.NewGuid().ToString "N"
            let remote = new RemoteStage(conn, js, id, server, stage)

            try
                let ct = CancellationToken.None

                let work =
                    StreamConfig(
                        Protocol.workStream id,
                        [| Protocol.workSubject id |],
                        Retention = StreamConfigRetention.Workqueue,
                        MaxMsgs = int64 (2 * workers),
                        Discard = StreamConfigDiscard.New,
                        MaxAge = Protocol.SafetyAge,
                        Storage = StreamConfigStorage.File
                    )

                let consumer =
                    ConsumerConfig(
                        Protocol.WorkConsumer,
                        AckPolicy = ConsumerConfigAckPolicy.Explicit,
                        AckWait = server.AckWait,
                        MaxDeliver = int64 server.MaxDeliver,
                        MaxAckPending = int64 workers
                    )

                let results =
                    StreamConfig(
                        Protocol.resultsStream id,
                        [| Protocol.resultsSubject id |],
                        Retention = StreamConfigRetention.Workqueue,
                        MaxAge = Protocol.SafetyAge,
                        Storage = StreamConfigStorage.File
                    )

                let collector =
                    ConsumerConfig(
                        Protocol.ResultsConsumer,
                        AckPolicy = ConsumerConfigAckPolicy.Explicit,
                        // Results that reached a session cancelled by a reconnect come again soon
                        // (a duplicate is dropped by batch id).
                        AckWait = min server.AckWait (TimeSpan.FromSeconds 5.0)
                    )

                // The announcements stream, the work queue and the results queue at once: the
                // parent waits for the slowest chain of round trips, not for their sum.
                let queue (config: StreamConfig) (consumer: ConsumerConfig) : Task =
                    task {
                        let! _ = js.CreateStreamAsync(config, ct)
                        let! _ = js.CreateOrUpdateConsumerAsync(config.Name, consumer, ct)
                        ()
                    }

                do! Task.WhenAll(Protocol.ensureStagesStream js ct, queue work consumer, queue results collector)

                remote.StartLoops()

                let mvid =
                    AppDomain.CurrentDomain.GetAssemblies()
                    |> Array.tryFind (fun a -> not a.IsDynamic && a.Location = fref.Assembly)
                    |> Option.map (fun a -> a.ManifestModule.ModuleVersionId)
                    |> Option.defaultValue Guid.Empty

                let descriptor =
                    {
                        Version = int Protocol.Version
                        Stage = stage
                        WorkStream = Protocol.workStream id
                        WorkSubject = Protocol.workSubject id
                        WorkConsumer = Protocol.WorkConsumer
                        ResultsSubject = Protocol.resultsSubject id
                        AssemblyFile = Path.GetFileName fref.Assembly
                        AssemblyMvid = mvid
                        TypeToken = fref.TypeToken
                        MethodToken = fref.MethodToken
                        Instance = fref.Instance
                        TypeArgs = fref.TypeArgs
                        MethodArgs = fref.MethodArgs
                        AckWaitMilliseconds = int server.AckWait.TotalMilliseconds
                    }

                let! ack =
                    js.PublishAsync(Protocol.stageSubject id, Protocol.encode descriptor, cancellationToken = ct)

                ack.EnsureSuccess()
                return remote
            with e ->
                do! remote.DisposeAsync()

                return
                    raise (
                        IOException(
                            $"Stage '{stage}': cannot set up its queues on the NATS server at {server.Url}: {e.Message}",
                            e
                        )
                    )
        }

/// The stages' shared remote state: one RemoteStage per stage and run, made by its first worker
/// loop and closed by its last.
module internal RemoteStages =
    [<AllowNullLiteral>]
    type private Shared(start: Lazy<Task<RemoteStage>>) =
        member val Users = 0 with get, set
        member _.Stage = start

    let private table = ConditionalWeakTable<obj, Shared>()

    let private enter (key: obj) (start: unit -> Task<RemoteStage>) =
        lock table (fun () ->
            let shared =
                match table.TryGetValue key with
                | true, s -> s
                | _ ->
                    let s = Shared(lazy (start ()))
                    table.Add(key, s)
                    s

            shared.Users <- shared.Users + 1
            shared)

    let private leave (key: obj) (shared: Shared) : Task =
        let last =
            lock table (fun () ->
                shared.Users <- shared.Users - 1

                if shared.Users = 0 then
                    table.Remove key |> ignore
                    true
                else
                    false)

        if last && shared.Stage.IsValueCreated then
            task {
                try
                    let! remote = shared.Stage.Value
                    do! remote.DisposeAsync()
                with _ ->
                    () // it never started: its own start cleaned up
            }
        else
            Task.CompletedTask

    /// Runs `body` with the stage's RemoteStage (started by the first caller), then leaves it
    /// (the last one out closes it) — also when `body` fails.
    let using (key: obj) (start: unit -> Task<RemoteStage>) (body: RemoteStage -> Task) : Task =
        task {
            let shared = enter key start
            let mutable failure: ExceptionDispatchInfo = null

            try
                let! remote = shared.Stage.Value
                do! body remote
            with e ->
                failure <- ExceptionDispatchInfo.Capture e

            do! leave key shared

            if not (isNull failure) then
                failure.Throw()
        }

/// A distributed map stage's worker loop on the parent's side: `Loops.mapBatches` with a batch
/// runner that sends each batch through the stage's RemoteStage.
module internal ParentSide =
    let body<'a, 'b> (server: NatsServer) (workers: int) (fref: FunctionRef) (env: WorkerEnv<'a, 'b>) : Task =
        RemoteStages.using env (fun () -> RemoteStage.Start(server, env.Name, fref, workers)) (fun remote ->
            WireWarmUp.arrays<'a, 'b>()
            let token = env.Ctx.Token

            let runBatch (input: 'a[]) (n: int) (output: 'b[]) : Task<int64> =
                task {
                    let items =
                        try
                            JsonSerializer.SerializeToUtf8Bytes(Array.sub input 0 n, Wire.options)
                        with e ->
                            raise (
                                NotSupportedException(
                                    $"Stage '{env.Name}': an item of type {typeof<'a>} cannot be sent to a worker process: {e.Message}",
                                    e
                                )
                            )

                    let! reply = remote.Run(items, token)
                    let kind, _ = Protocol.header reply

                    if kind = Protocol.Results then
                        // The function's time in the worker (TimeSpan ticks, 8 bytes), then the results.
                        let cost =
                            System.Buffers.Binary.BinaryPrimitives.ReadInt64LittleEndian(ReadOnlySpan(reply, 10, 8))

                        let results =
                            JsonSerializer.Deserialize<'b[]>(ReadOnlySpan(reply, 18, reply.Length - 18), Wire.options)

                        Array.blit results 0 output 0 n
                        return cost * Stopwatch.Frequency / TimeSpan.TicksPerSecond
                    else
                        return
                            raise (
                                RemoteExceptions.decode
                                    env.Name
                                    typeof<'b>
                                    (ReadOnlySpan(reply, 10, reply.Length - 10))
                            )
                }

            Loops.mapBatches runBatch env)

/// The distributed executor: each of a stage's workers is an awaiting loop on the thread pool that
/// sends batches through the stage's JetStream streams (`ParentSide.body`) to whichever worker
/// processes serve it, on any machine.
[<Sealed>]
type internal DistributedExecutor<'a, 'b>(server: NatsServer, workers: int, fref: FunctionRef) =
    inherit StageExecutor<'a, 'b>()
    override _.Kind = Executor.Distributed
    override _.Quantum = Sizer.RemoteQuantum

    override _.Start(env, ended) =
        env.Ctx.StartTask((fun () -> ParentSide.body server workers fref env), ended)
