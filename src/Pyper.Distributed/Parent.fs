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

/// One distributed stage in one run, on the parent's side: its consumer in the shared work
/// stream, the results it waits for (by batch id) and the background loops that feed them. `Run`
/// is the executor's unit: "run one batch remotely".
[<Sealed; AllowNullLiteral>]
type internal RemoteStage(shared: SharedConnection, js: NatsJSContext, id: string, server: NatsServer, stage: string) =
    let conn = shared.Connection
    let pending = ConcurrentDictionary<int64, TaskCompletionSource<byte[]>>()
    let stop = new CancellationTokenSource()
    let mutable nextId = 0L
    let mutable fault: exn = null
    let loops = ResizeArray<Task>()
    let mutable results: INatsSub<byte[]> = null
    /// The announcement's sequence in the stages stream (0 until it is published).
    let mutable announcement = 0UL

    member private this.Gone(e: exn) =
        this.Fault(
            IOException(
                $"Stage '{stage}': its queues are gone from the NATS server at {server.Url} (was it restarted without its storage?); the batches in flight are lost.",
                e
            )
        )

    /// True unless the server says the run's consumer no longer exists.
    member private _.ConsumerExists() : Task<bool> =
        task {
            try
                let! _ =
                    js.GetConsumerAsync(Protocol.WorkStream, Protocol.workConsumer id, stop.Token)

                return true
            with e ->
                return not (Protocol.isGone e)
        }

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

            // A restarting server: try again shortly, for up to GiveUpAfter. The MsgId (unique
            // across runs: the stream is shared) drops a repeat of a publish that did get stored.
            let! failure =
                Protocol.publish
                    js
                    (Protocol.workSubject id)
                    message
                    $"{id}.{batch}"
                    server.GiveUpAfter
                    5
                    (fun () -> waiting.Task.IsCompleted)
                    token

            if not (isNull failure) then
                let! exists = this.ConsumerExists()

                if not exists then
                    this.Gone failure
                else
                    this.Fault(
                        IOException(
                            $"Stage '{stage}': cannot publish to the NATS server at {server.Url}: {failure.Message}",
                            failure
                        )
                    )

            // A cancelled wait (the run's, or an item's timeout) drops the batch: a late result finds no one.
            use _ =
                token.Register(fun () ->
                    pending.TryRemove batch |> ignore
                    waiting.TrySetCanceled token |> ignore)

            return! waiting.Task
        }

    /// Takes result frames sent to the run's results subject (requests from workers) and replies
    /// to each once it is handed over: only then does the worker ack its batch. The client
    /// subscribes again by itself after a reconnect.
    member private this.ResultsLoop(sub: INatsSub<byte[]>) : Task =
        task {
            try
                let reader = sub.Msgs
                let mutable go = true

                while go do
                    let! more = reader.WaitToReadAsync(stop.Token)

                    if not more then
                        go <- false
                    else
                        let mutable next = true

                        while next do
                            match reader.TryRead() with
                            | true, msg ->
                                this.Dispatch msg.Data

                                if not (String.IsNullOrEmpty msg.ReplyTo) then
                                    do!
                                        conn.PublishAsync(
                                            msg.ReplyTo,
                                            Array.empty<byte>,
                                            cancellationToken = stop.Token
                                        )
                            | _ -> next <- false
            with _ ->
                ()
        }

    /// Fails the stage when the server reports a batch delivered MaxDeliver times without a result,
    /// or deletes the run's consumer (InactiveThreshold passed without a worker asking for work).
    member private this.AdvisoryLoop() : Task =
        task {
            let consumer = Protocol.workConsumer id
            let subject = $"$JS.EVENT.ADVISORY.CONSUMER.*.{Protocol.WorkStream}.{consumer}"

            try
                let advisories =
                    conn.SubscribeAsync<byte[]>(subject, cancellationToken = stop.Token)

                do!
                    AsyncStream.forEach advisories stop.Token (fun () -> Task.CompletedTask) (fun msg ->
                        if msg.Subject.StartsWith "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." then
                            this.Fault(
                                RemoteStageException(
                                    $"Stage '{stage}': a batch was delivered {server.MaxDeliver} times (MaxDeliver) and every worker holding it died or stalled past AckWait ({server.AckWait}); it is not retried.",
                                    "",
                                    "",
                                    Nullable()
                                )
                            )
                        elif
                            msg.Subject.StartsWith "$JS.EVENT.ADVISORY.CONSUMER.DELETED."
                            && not stop.IsCancellationRequested
                        then
                            this.Fault(
                                IOException(
                                    $"Stage '{stage}': the NATS server at {server.Url} deleted the run's queue: no worker asked it for work for InactiveThreshold ({server.InactiveThreshold}), or it was deleted by hand; the batches in flight are lost."
                                )
                            )

                        Task.CompletedTask)
            with _ ->
                ()
        }

    /// Fails the stage when the server stays unreachable for GiveUpAfter (a hang guard, polled),
    /// or comes back without the run's consumer (restarted without its storage).
    member private this.HealthLoop() : Task =
        task {
            let down = Stopwatch()

            try
                while not stop.IsCancellationRequested do
                    do! Task.Delay(100, stop.Token)

                    if conn.ConnectionState = NatsConnectionState.Open then
                        if down.IsRunning then
                            down.Reset()
                            let! exists = this.ConsumerExists()

                            if not exists then
                                this.Gone null
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

    /// The stage's announcement was stored at `seq` in the stages stream.
    member _.Announced(seq: uint64) = announcement <- seq

    member this.StartLoops(sub: INatsSub<byte[]>) =
        results <- sub
        loops.Add(Task.Run(fun () -> this.ResultsLoop sub))
        loops.Add(Task.Run(fun () -> this.AdvisoryLoop()))
        loops.Add(Task.Run(fun () -> this.HealthLoop()))

    /// Stops the loops, deletes the run's consumer, purges its work subject (batches an early stop
    /// left), deletes its announcement, gives the shared connection back. A worker still running a batch of the
    /// run then finds no one taking its result and drops it: nothing of the run stays on the server.
    member _.DisposeAsync() : Task =
        task {
            stop.Cancel()

            // At once: each is a round trip.
            do!
                Task.WhenAll(
                    // By its sequence, not a purge filtered by subject: nats-server before 2.9.15
                    // moves every consumer of the stream past such a purge, so a worker host
                    // that had not read another run's announcement yet would never serve it.
                    (if announcement = 0UL then
                         Task.CompletedTask
                     else
                         Protocol.bestEffort 3.0 (fun ct ->
                             js
                                 .DeleteMessageAsync(
                                     Protocol.StagesStream,
                                     StreamMsgDeleteRequest(Seq = announcement, NoErase = true),
                                     ct
                                 )
                                 .AsTask()
                             :> Task)),
                    Protocol.bestEffort 3.0 (fun ct ->
                        js.DeleteConsumerAsync(Protocol.WorkStream, Protocol.workConsumer id, ct).AsTask()),
                    Protocol.bestEffort 3.0 (fun ct ->
                        js
                            .PurgeStreamAsync(
                                Protocol.WorkStream,
                                StreamPurgeRequest(Filter = Protocol.workSubject id),
                                ct
                            )
                            .AsTask())
                )

            if not (isNull results) then
                do! Protocol.bestEffort 3.0 (fun _ -> results.DisposeAsync().AsTask())

            do! Task.WhenAll(loops).ContinueWith(ignore)
            shared.Return()
            stop.Dispose()
        }

    /// Leases the shared connection, makes sure of the shared streams (once per server and process), subscribes to
    /// the run's results and creates its consumer at once, then announces the stage to workers.
    /// `timeout`, `bound` and `state` are the stage's per-item timeout, bound argument and
    /// per-worker state functions, for its workers (see `StageDescriptor`).
    static member Start
        (
            server: NatsServer,
            stage: string,
            fref: FunctionRef,
            workers: int,
            timeout: TimeSpan option,
            bound: byte[],
            state: FunctionRef[]
        ) : Task<RemoteStage> =
        task {
            let! shared = Connections.lease server $"Stage '{stage}'"
            let js = NatsJSContext(shared.Connection)
            let id = Guid.NewGuid().ToString "N"
            let remote = new RemoteStage(shared, js, id, server, stage)

            try
                let ct = CancellationToken.None

                let consumer =
                    ConsumerConfig(
                        Protocol.workConsumer id,
                        FilterSubject = Protocol.workSubject id,
                        AckPolicy = ConsumerConfigAckPolicy.Explicit,
                        AckWait = server.AckWait,
                        MaxDeliver = int64 server.MaxDeliver,
                        MaxAckPending = int64 workers,
                        // A parent that dies leaves its consumer: the server deletes it.
                        InactiveThreshold = server.InactiveThreshold
                    )

                let createConsumer () : Task =
                    task {
                        let! _ = js.CreateOrUpdateConsumerAsync(Protocol.WorkStream, consumer, ct)
                        ()
                    }

                let subscribing =
                    shared.Connection
                        .SubscribeCoreAsync<byte[]>(Protocol.resultsSubject id, cancellationToken = ct)
                        .AsTask()

                do! Protocol.ensureStreams js server.Url false ct

                do!
                    task {
                        try
                            do! createConsumer ()
                        with e when Protocol.isGone e ->
                            // The server lost the shared streams (restarted without its storage).
                            do! Protocol.ensureStreams js server.Url true ct
                            do! createConsumer ()
                    }

                let! sub = subscribing
                remote.StartLoops sub

                let mvid =
                    AppDomain.CurrentDomain.GetAssemblies()
                    |> Array.tryFind (fun a -> not a.IsDynamic && a.Location = fref.Assembly)
                    |> Option.map (fun a -> a.ManifestModule.ModuleVersionId)
                    |> Option.defaultValue Guid.Empty

                let descriptor =
                    {
                        Version = int Protocol.Version
                        Stage = stage
                        WorkStream = Protocol.WorkStream
                        WorkSubject = Protocol.workSubject id
                        WorkConsumer = Protocol.workConsumer id
                        ResultsSubject = Protocol.resultsSubject id
                        AssemblyFile = Path.GetFileName fref.Assembly
                        AssemblyMvid = mvid
                        TypeToken = fref.TypeToken
                        MethodToken = fref.MethodToken
                        Instance = fref.Instance
                        TypeArgs = fref.TypeArgs
                        MethodArgs = fref.MethodArgs
                        AckWaitMilliseconds = int server.AckWait.TotalMilliseconds
                        TimeoutMilliseconds =
                            timeout
                            |> Option.map (fun t -> int (ceil t.TotalMilliseconds))
                            |> Option.defaultValue 0
                        Bound = (if isNull bound then Array.empty else bound)
                        State = state
                    }

                // The stream keeps one message per subject: a repeat replaces the first.
                let announce () : Task =
                    task {
                        let! ack =
                            js.PublishAsync(
                                Protocol.stageSubject id,
                                Protocol.encode descriptor,
                                cancellationToken = ct
                            )

                        ack.EnsureSuccess()
                        remote.Announced ack.Seq
                    }

                try
                    do! announce ()
                with _ ->
                    // The announcements stream was lost since this process made sure of it.
                    do! Protocol.ensureStreams js server.Url true ct
                    do! announce ()

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
