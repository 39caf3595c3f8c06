namespace Pyper.Distributed

open System
open System.Diagnostics
open System.IO
open System.Text.Json
open System.Threading
open System.Threading.Tasks
open NATS.Client.Core
open NATS.Client.JetStream
open NATS.Client.JetStream.Models
open Pyper

/// What a distributed stage publishes so that workers on any machine can serve it: its queue,
/// where results go, and its function (an assembly file name, found in the worker's `--assemblies`
/// folder, with the parent's build id, and the metadata tokens of `FunctionRef`).
type internal StageDescriptor =
    {
        /// The message format's version (`Protocol.Version`); a worker skips any other.
        Version: int
        /// The stage's name in its run (for workers' log lines).
        Stage: string
        /// The shared work stream, the run's subject in it and the run's durable consumer, which
        /// all workers share.
        WorkStream: string
        WorkSubject: string
        WorkConsumer: string
        /// Where workers send results: a request to the parent, which replies once it has the result.
        ResultsSubject: string
        AssemblyFile: string
        /// The parent's build of the assembly: a worker with another build does not serve the stage.
        AssemblyMvid: Guid
        TypeToken: int
        MethodToken: int
        Instance: bool
        /// Type arguments (assembly-qualified names) of a generic type and of a generic method.
        TypeArgs: string[]
        MethodArgs: string[]
        /// The consumer's AckWait: a running batch sends progress every third of it.
        AckWaitMilliseconds: int
        /// The stage's per-item timeout (0: none): a worker gives up a call that runs longer,
        /// terminating its message (see `WorkerLoop`).
        TimeoutMilliseconds: int
        /// The stage's bound argument as JSON (empty: none): each worker applies the function to it
        /// once, when it first runs a batch of the stage.
        Bound: byte[]
        /// A stage with per-worker state (empty: none): its `init`, then its `dispose` if any, in
        /// the function's assembly (their `Assembly` is the parent's path; a worker uses its own).
        /// Each serving slot of a worker makes its state before its first batch of the stage and
        /// disposes it when it stops serving the stage (see `SlotState`).
        State: FunctionRef[]
    }

/// Names, frames and the shared set-up of the distributed executor's use of JetStream.
/// Two streams are shared by every run on a server and created once: `PYPER_WORK` (work-queue
/// retention, file storage) and the announcements `PYPER_STAGES`. Per run and stage (a fresh id):
/// a subject in `PYPER_WORK` with one durable pull consumer filtered on it (shared by all workers),
/// a core subject on which the parent takes results as requests and replies once it has them, and
/// the stage's descriptor, the last message on its subject of `PYPER_STAGES`, which workers follow.
/// A run ends by deleting its consumer and purging its subjects: nothing of it is left, and no
/// stream is created or deleted per run (a file-stored stream costs the server milliseconds each).
module internal Protocol =
    /// The format version of descriptors and frames.
    [<Literal>]
    let Version = 5uy

    [<Literal>]
    let StagesStream = "PYPER_STAGES"

    [<Literal>]
    let StagesPrefix = "pyper.stages."

    [<Literal>]
    let WorkStream = "PYPER_WORK"

    [<Literal>]
    let WorkPrefix = "pyper.work."

    /// Frame kinds of a result message.
    [<Literal>]
    let Results = 3uy

    [<Literal>]
    let Failure = 4uy

    /// A failure of the slot's per-worker state (`init`): fails the run whatever the policy.
    [<Literal>]
    let StateFailure = 5uy

    /// Messages left by a parent that died without cleaning up expire after this.
    let SafetyAge = TimeSpan.FromHours 24.0

    let workSubject (id: string) = WorkPrefix + id
    let workConsumer (id: string) = $"w{id}"
    let resultsSubject (id: string) = $"pyper.results.{id}"
    let stageSubject (id: string) = StagesPrefix + id

    /// A frame: version, kind, batch id (8 bytes, little-endian), payload.
    let frame (kind: byte) (id: int64) (payload: byte[]) (offset: int) (count: int) =
        let buf = Array.zeroCreate<byte>(10 + count)
        buf[0] <- Version
        buf[1] <- kind
        System.Buffers.Binary.BinaryPrimitives.WriteInt64LittleEndian(Span(buf, 2, 8), id)
        Array.blit payload offset buf 10 count
        buf

    /// The frame's kind and batch id; the payload starts at byte 10.
    let header (buf: byte[]) =
        if buf.Length < 10 || buf[0] <> Version then
            raise (InvalidDataException $"Not a Pyper frame of version {Version}.")

        buf[1], System.Buffers.Binary.BinaryPrimitives.ReadInt64LittleEndian(ReadOnlySpan(buf, 2, 8))

    let encode (d: StageDescriptor) =
        JsonSerializer.SerializeToUtf8Bytes(d, Wire.options)

    let decode (buf: byte[]) =
        JsonSerializer.Deserialize<StageDescriptor>(ReadOnlySpan buf, Wire.options)

    /// A connection to the server, or an IOException naming its URL.
    let connect (server: NatsServer) (who: string) : Task<NatsConnection> =
        task {
            let conn = new NatsConnection(server.Options)

            try
                do! conn.ConnectAsync()
                return conn
            with e ->
                do! conn.DisposeAsync()

                return raise (IOException($"{who}: cannot connect to the NATS server at {server.Url}: {e.Message}", e))
        }

    /// Creates a shared stream, or brings an existing one to this configuration.
    let private ensure (js: NatsJSContext) (config: StreamConfig) (ct: CancellationToken) : Task =
        task {
            try
                // Creating a stream that exists with the same configuration is a no-op on the server.
                let! _ = js.CreateStreamAsync(config, ct)
                ()
            with :? NatsJSApiException ->
                let! _ = js.CreateOrUpdateStreamAsync(config, ct)
                ()
        }

    /// The announcements stream (the same configuration from every parent and worker).
    let ensureStagesStream (js: NatsJSContext) (ct: CancellationToken) : Task =
        ensure
            js
            (StreamConfig(
                StagesStream,
                [| StagesPrefix + ">" |],
                MaxMsgsPerSubject = 1L,
                MaxAge = SafetyAge,
                Storage = StreamConfigStorage.File
            ))
            ct

    /// The shared work stream. Items in flight are bounded per run by the parent (each of its
    /// `workers` loops waits for its batch's result before sending another) and by the run's
    /// consumer (`MaxAckPending`), not by the stream, which all runs share.
    let ensureWorkStream (js: NatsJSContext) (ct: CancellationToken) : Task =
        ensure
            js
            (StreamConfig(
                WorkStream,
                [| WorkPrefix + ">" |],
                Retention = StreamConfigRetention.Workqueue,
                MaxAge = SafetyAge,
                Storage = StreamConfigStorage.File
            ))
            ct

    /// The servers (by URL) on which this process has made sure of the shared streams; a server
    /// that lost them (restarted without its storage) is detected when a run's consumer cannot be
    /// created, and they are made again.
    let private ensured =
        System.Collections.Concurrent.ConcurrentDictionary<string, bool>()

    /// Both shared streams, at once; skipped when done before for `url`, unless `again`.
    let ensureStreams (js: NatsJSContext) (url: string) (again: bool) (ct: CancellationToken) : Task =
        if not again && ensured.ContainsKey url then
            Task.CompletedTask
        else
            task {
                do! Task.WhenAll(ensureStagesStream js ct, ensureWorkStream js ct)
                ensured[url] <- true
            }

    /// True when `e` says the stream (or its consumer) no longer exists.
    let isGone (e: exn) =
        match e with
        | :? NatsJSApiException as a -> a.Error.Code = 404
        | _ -> false

    /// Runs `f` with a token cancelled after `seconds`, ignoring its failure (best-effort clean-up).
    let bestEffort (seconds: float) (f: CancellationToken -> Task) : Task =
        task {
            use cts = new CancellationTokenSource(TimeSpan.FromSeconds seconds)

            try
                do! f cts.Token
            with _ ->
                ()
        }

    /// Publishes `data` on `subject` until the server stores it (its MsgId drops a repeat within
    /// the stream's duplicate window), retrying every `pause` ms while the server restarts or the
    /// stream is full. Returns null once stored or once `settled ()` says it no longer matters, and
    /// the last error when the stream is gone or the server kept failing for `giveUpAfter`.
    let publish
        (js: NatsJSContext)
        (subject: string)
        (data: byte[])
        (msgId: string)
        (giveUpAfter: TimeSpan)
        (pause: int)
        (settled: unit -> bool)
        (token: CancellationToken)
        : Task<exn> =
        task {
            let opts = NatsJSPubOpts(MsgId = msgId)
            let clock = Stopwatch.StartNew()
            let mutable outcome: exn option = None

            while outcome.IsNone do
                if settled () then
                    outcome <- Some null
                else
                    let! failure =
                        task {
                            try
                                let! ack = js.PublishAsync(subject, data, opts = opts, cancellationToken = token)
                                ack.EnsureSuccess()
                                return null
                            with e ->
                                return e
                        }

                    match failure with
                    | null -> outcome <- Some null
                    | _ when token.IsCancellationRequested -> token.ThrowIfCancellationRequested()
                    | e when isGone e || clock.Elapsed > giveUpAfter -> outcome <- Some e
                    | _ -> do! Task.Delay(pause, token)

            return outcome.Value
        }

    /// Sends a result to the parent as a request until the parent replies that it has it, retrying
    /// every `pause` ms while the server restarts or the parent reconnects. Returns null once
    /// delivered, and the last error when `wanted ()` says the run is over (its consumer is gone)
    /// or the parent kept failing for `giveUpAfter`.
    let deliver
        (conn: INatsConnection)
        (subject: string)
        (data: byte[])
        (giveUpAfter: TimeSpan)
        (pause: int)
        (wanted: unit -> Task<bool>)
        (token: CancellationToken)
        : Task<exn> =
        task {
            let opts = NatsSubOpts(ThrowIfNoResponders = true)
            let clock = Stopwatch.StartNew()
            let mutable outcome: exn option = None

            while outcome.IsNone do
                let! failure =
                    task {
                        try
                            let! _ =
                                conn.RequestAsync<byte[], byte[]>(
                                    subject,
                                    data,
                                    replyOpts = opts,
                                    cancellationToken = token
                                )

                            return null
                        with e ->
                            return e
                    }

                match failure with
                | null -> outcome <- Some null
                | _ when token.IsCancellationRequested -> token.ThrowIfCancellationRequested()
                | e when clock.Elapsed > giveUpAfter -> outcome <- Some e
                | e ->
                    let! still = wanted ()

                    if still then
                        do! Task.Delay(pause, token)
                    else
                        outcome <- Some e

            return outcome.Value
        }
