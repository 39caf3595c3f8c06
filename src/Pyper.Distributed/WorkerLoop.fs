namespace Pyper.Distributed

open System
open System.Collections.Concurrent
open System.IO
open System.Runtime.Loader
open System.Threading
open System.Threading.Tasks
open NATS.Client.Core
open NATS.Client.JetStream
open NATS.Client.JetStream.Models
open Pyper

/// A stage's function with a bound argument, applied to it when the first batch runs: a failure
/// there (the argument cannot be read, the function fails on it) fails each of the stage's batches
/// in this worker, as the item's failure, instead of leaving the stage unserved.
[<Sealed>]
type internal BoundBatches(make: unit -> IBatchRunner) =
    let runner =
        lazy
            (try
                make ()
             with :? Reflection.TargetInvocationException as e when not (isNull e.InnerException) ->
                 Runtime.ExceptionServices.ExceptionDispatchInfo.Throw e.InnerException
                 Unchecked.defaultof<_>)

    interface IBatchRunner with
        member _.Run payload = runner.Value.Run payload

/// The worker's side: follows the stage announcements and serves each stage whose function it can
/// load, running `parallelism` batches of it at once. A batch is acked only once the parent has
/// replied that it has the batch's result, so a worker killed at any point loses nothing.
module internal WorkerLoop =
    /// The function of a stage, from the worker's assemblies folder (or already loaded, same build).
    /// A stage with per-worker state gives each serving slot a runner of its own.
    let private runnerOf (assemblies: string) (d: StageDescriptor) : Result<unit -> ISlotRunner, string> =
        let loaded =
            AppDomain.CurrentDomain.GetAssemblies()
            |> Array.tryFind (fun a ->
                not a.IsDynamic
                && not (String.IsNullOrEmpty a.Location)
                && a.ManifestModule.ModuleVersionId = d.AssemblyMvid)

        let path =
            match loaded with
            | Some a -> a.Location
            | None -> Path.Combine(assemblies, d.AssemblyFile)

        if not (File.Exists path) then
            Error $"{d.AssemblyFile} is not in {assemblies}"
        else
            try
                let a = AssemblyLoadContext.Default.LoadFromAssemblyPath path

                if
                    d.AssemblyMvid <> Guid.Empty
                    && a.ManifestModule.ModuleVersionId <> d.AssemblyMvid
                then
                    Error $"{path} is another build than the parent's (every machine must run the same build)"
                else
                    let fref =
                        {
                            Assembly = path
                            TypeToken = d.TypeToken
                            MethodToken = d.MethodToken
                            Instance = d.Instance
                            TypeArgs = d.TypeArgs
                            MethodArgs = d.MethodArgs
                        }

                    let shared (r: IBatchRunner) =
                        let one = SharedRunner r :> ISlotRunner
                        fun () -> one

                    if not (isNull d.State) && d.State.Length > 0 then
                        Ok(SlotStates.maker path fref d.State)
                    elif d.Bound.Length = 0 then
                        Ok(shared (ProcessHost.runner fref))
                    else
                        Ok(shared (BoundBatches(fun () -> ProcessHost.boundBatchRunner fref d.Bound)))
            with e ->
                Error $"{path} could not be loaded: {e.Message}"

    /// Sends a batch's result to the parent, then acks the batch.
    let private deliverThenAck
        (js: NatsJSContext)
        (giveUpAfter: TimeSpan)
        (d: StageDescriptor)
        (batch: int64)
        (kind: byte, reply: byte[])
        (msg: INatsJSMsg<byte[]>)
        (progress: Timer)
        (token: CancellationToken)
        : Task =
        task {
            let result = Protocol.frame kind batch reply 0 reply.Length

            let runGoesOn () : Task<bool> =
                task {
                    try
                        let! _ = js.GetConsumerAsync(d.WorkStream, d.WorkConsumer, token)
                        return true
                    with e ->
                        return not (Protocol.isGone e)
                }

            // The parent replies once it has the result; a restarting server or a reconnecting
            // parent: the result must get out, within GiveUpAfter. A deleted consumer means the
            // run is over and nobody wants it.
            let! failure =
                Protocol.deliver js.Connection d.ResultsSubject result giveUpAfter 50 runGoesOn token

            if not (isNull failure) then
                raise failure

            progress.Dispose()
            do! msg.AckAsync(cancellationToken = token)
        }

    /// Runs one batch and publishes its result, then acks it; progress keeps a long batch ours.
    let private handle
        (js: NatsJSContext)
        (giveUpAfter: TimeSpan)
        (d: StageDescriptor)
        (runner: IBatchRunner)
        (msg: INatsJSMsg<byte[]>)
        (token: CancellationToken)
        : Task =
        task {
            let data = msg.Data
            let _, batch = Protocol.header data
            let items = Array.sub data 10 (data.Length - 10)
            let every = max 50 (d.AckWaitMilliseconds / 3)

            use _progress =
                new Timer(
                    (fun _ ->
                        try
                            msg.AckProgressAsync().AsTask() |> ignore
                        with _ ->
                            ()),
                    null,
                    every,
                    every
                )

            // On a thread of its own, not the pool's: blocking or CPU-bound functions must not starve
            // the pool, which runs the progress timer and the client's I/O (a late progress ack
            // would let the server redeliver a batch that is still running).
            let call =
                Task.Factory.StartNew(
                    (fun () ->
                        try
                            Protocol.Results, runner.Run items
                        with
                        | :? StateFailureException as s ->
                            Protocol.StateFailure, RemoteFailures.encode s.InnerException
                        | e -> Protocol.Failure, RemoteFailures.encode e),
                    CancellationToken.None,
                    TaskCreationOptions.LongRunning,
                    TaskScheduler.Default
                )

            if d.TimeoutMilliseconds <= 0 then
                let! outcome = call
                do! deliverThenAck js giveUpAfter d batch outcome msg _progress token
            else
                // A stage with a timeout: a call that runs longer is given up (its thread is left to
                // end when it returns, as a thread stage's); the parent has failed the item by then.
                let! first = Task.WhenAny(call, Task.Delay(d.TimeoutMilliseconds, token))

                if obj.ReferenceEquals(first, call) then
                    do! deliverThenAck js giveUpAfter d batch call.Result msg _progress token
                else
                    // Terminated, not redelivered: the item's failure is the parent's to handle.
                    _progress.Dispose()
                    do! msg.AckTerminateAsync(cancellationToken = token)
        }

    /// Serves one stage until its consumer is deleted (the run ended) or `token` is cancelled, in
    /// `parallelism` slots, each with its runner from `slot` (closed when the slot stops: a failing
    /// `dispose` is logged, the run being over by then).
    let private serveStage
        (js: NatsJSContext)
        (giveUpAfter: TimeSpan)
        (d: StageDescriptor)
        (slot: unit -> ISlotRunner)
        (parallelism: int)
        (log: string -> unit)
        (token: CancellationToken)
        : Task =
        let one () : Task =
            task {
                let mutable go = true
                let runner = slot ()

                try
                    while go && not token.IsCancellationRequested do
                        try
                            let! consumer = js.GetConsumerAsync(d.WorkStream, d.WorkConsumer, token)

                            while go do
                                let! next =
                                    consumer.NextAsync<byte[]>(
                                        opts = NatsJSNextOpts(Expires = TimeSpan.FromSeconds 2.0),
                                        cancellationToken = token
                                    )

                                if isNull (box next) then
                                    // An idle pull: is the run still there? A deleted consumer
                                    // (404) ends the slot, which then disposes its state.
                                    let! _ = js.GetConsumerAsync(d.WorkStream, d.WorkConsumer, token)
                                    ()
                                else
                                    do! handle js giveUpAfter d runner next token
                        with
                        | :? OperationCanceledException when token.IsCancellationRequested -> go <- false
                        | e when Protocol.isGone e -> go <- false
                        | _ ->
                            // A server restart, or a deleted consumer: is the stage still there?
                            try
                                let! _ = js.GetConsumerAsync(d.WorkStream, d.WorkConsumer, token)
                                do! Task.Delay(100, token)
                            with _ ->
                                go <- false
                finally
                    try
                        runner.Close()
                    with e ->
                        log $"stage '{d.Stage}': dispose failed: {e.Message}"
            }

        Task.WhenAll(Array.init parallelism (fun _ -> Task.Run(fun () -> one ())))

    /// Serves every announced stage until `token` is cancelled. `ready` runs once the worker follows
    /// the announcements; `log` gets a line per stage served or skipped.
    let serve
        (server: NatsServer)
        (assemblies: string)
        (parallelism: int)
        (ready: unit -> unit)
        (log: string -> unit)
        (token: CancellationToken)
        : Task =
        task {
            let! conn = Protocol.connect server "Pyper worker"
            let js = NatsJSContext(conn)
            let serving = ConcurrentDictionary<string, Task>()

            try
                do! Protocol.ensureStagesStream js token

                // The stream keeps one message per stage (MaxMsgsPerSubject = 1): reading all of it
                // reads the current announcements (nats-server 2.9 refuses LastPerSubject without a filter).
                let! stages =
                    js.CreateOrderedConsumerAsync(Protocol.StagesStream, cancellationToken = token)

                ready ()

                let announce (msg: INatsJSMsg<byte[]>) =
                    try
                        let d = Protocol.decode msg.Data

                        if d.Version <> int Protocol.Version then
                            log
                                $"skipping stage '{d.Stage}': message format {d.Version}, this worker speaks {Protocol.Version}"
                        elif not (serving.ContainsKey d.WorkConsumer) then
                            match runnerOf assemblies d with
                            | Error why -> log $"skipping stage '{d.Stage}': {why}"
                            | Ok runner ->
                                log $"serving stage '{d.Stage}'"

                                serving[d.WorkConsumer] <-
                                    task {
                                        try
                                            do! serveStage js server.GiveUpAfter d runner parallelism log token
                                        finally
                                            serving.TryRemove d.WorkConsumer |> ignore
                                    }
                    with e ->
                        log $"skipping an announcement: {e.Message}"

                    Task.CompletedTask

                try
                    do!
                        AsyncStream.forEach
                            (stages.ConsumeAsync<byte[]>(cancellationToken = token))
                            token
                            (fun () -> Task.CompletedTask)
                            announce
                with :? OperationCanceledException when token.IsCancellationRequested ->
                    ()
            finally
                ()

            do! Task.WhenAll(serving.Values).ContinueWith(ignore)
            do! conn.DisposeAsync()
        }

/// The worker host's NATS mode: `Pyper.Worker.dll --nats URL --assemblies DIR` calls `run`.
module internal WorkerHost =
    let usage =
        "usage: dotnet Pyper.Worker.dll --nats <url> --assemblies <dir> [--parallel <n>] [--user <u> --password <p> | --token <t> | --creds <file>] [--tls-ca <file>] [--tls-cert <file> --tls-key <file>] [--parent <pid>]"

    /// The server, from the command line's connection options.
    let serverOf (arg: string -> string option) =
        let url = (arg "--nats").Value

        let mutable opts =
            NatsOpts(Url = url, Name = $"pyper-worker-{Environment.MachineName}-{Environment.ProcessId}")

        let auth =
            NatsAuthOpts(
                Username = Option.toObj (arg "--user"),
                Password = Option.toObj (arg "--password"),
                Token = Option.toObj (arg "--token"),
                CredsFile = Option.toObj (arg "--creds")
            )

        let tls =
            match arg "--tls-ca", arg "--tls-cert", arg "--tls-key" with
            | None, None, None -> NatsTlsOpts.Default
            | ca, cert, key ->
                NatsTlsOpts(
                    Mode = TlsMode.Require,
                    CaFile = Option.toObj ca,
                    CertFile = Option.toObj cert,
                    KeyFile = Option.toObj key
                )

        NatsServer(NatsOpts(Url = url, Name = opts.Name, AuthOpts = auth, TlsOpts = tls))

    /// Serves until SIGTERM, Ctrl+C or the end of `--parent`; prints one line when ready.
    let run (args: string[]) : int =
        let arg (name: string) =
            match Array.tryFindIndex ((=) name) args with
            | Some i when i + 1 < args.Length -> Some args[i + 1]
            | _ -> None

        match arg "--nats", arg "--assemblies" with
        | Some url, Some dir when Directory.Exists dir ->
            let dir = Path.GetFullPath dir
            ProcessHost.resolveIn dir
            arg "--parent" |> Option.iter (int >> ProcessHost.watchParent)

            let parallelism =
                arg "--parallel"
                |> Option.map int
                |> Option.defaultValue Environment.ProcessorCount

            use stop = new CancellationTokenSource()

            Console.CancelKeyPress.Add(fun e ->
                e.Cancel <- true
                stop.Cancel())

            use _term =
                Runtime.InteropServices.PosixSignalRegistration.Create(
                    Runtime.InteropServices.PosixSignal.SIGTERM,
                    fun c ->
                        c.Cancel <- true
                        stop.Cancel()
                )

            try
                (WorkerLoop.serve
                    (serverOf arg)
                    dir
                    parallelism
                    (fun () ->
                        Console.Error.WriteLine(
                            $"Pyper worker {Environment.ProcessId}: ready, serving {url} from {dir}"
                        ))
                    (fun line -> Console.Error.WriteLine($"Pyper worker {Environment.ProcessId}: {line}"))
                    stop.Token)
                    .GetAwaiter()
                    .GetResult()

                0
            with e ->
                Console.Error.WriteLine($"Pyper worker: {e.Message}")
                1
        | _ ->
            Console.Error.WriteLine usage
            2
