namespace Pyper

open System
open System.Collections.Generic
open System.Threading
open System.Threading.Tasks

/// Counters of the runtime's live workers, for leak checks in tests and diagnostics.
module internal Live =
    let mutable private threads = 0
    let mutable private tasks = 0
    let mutable private processes = 0

    let threadStarted () =
        Interlocked.Increment &threads |> ignore

    let threadEnded () =
        Interlocked.Decrement &threads |> ignore

    let taskStarted () = Interlocked.Increment &tasks |> ignore
    let taskEnded () = Interlocked.Decrement &tasks |> ignore

    let processStarted () =
        Interlocked.Increment &processes |> ignore

    let processEnded () =
        Interlocked.Decrement &processes |> ignore

    /// Worker processes of all runs that have not been reaped yet.
    let processCount () = Volatile.Read &processes
    /// Worker threads of all runs that have not finished yet.
    let threadCount () = Volatile.Read &threads
    /// Async workers of all runs that have not finished yet.
    let taskCount () = Volatile.Read &tasks

/// Keys under which a failure's exception records where it came from.
module internal ErrorKeys =
    [<Literal>]
    let Stage = "Pyper.Stage"

    [<Literal>]
    let Others = "Pyper.OtherErrors"

    [<Literal>]
    let RemoteStackTrace = "Pyper.RemoteStackTrace"

/// The state of one run: its cancellation, its first failure, its workers.
[<Sealed>]
type internal RunContext(userToken: CancellationToken) =
    let cts = CancellationTokenSource.CreateLinkedTokenSource userToken
    let sync = obj ()
    let abortables = List<IAbortable>()
    let starters = List<unit -> unit>()
    let workers = List<Task>()
    /// The task of the source's own thread or async loop (null for a run over one input).
    let mutable source: Task = null
    let mutable error: exn = null
    /// While the first failure is provisional (a brief failure frame's exception): what completes
    /// once its details have come (`Refine`) or will not; else null.
    let mutable settling: Task = null
    let mutable stages = 0
    let mutable registration = Unchecked.defaultof<CancellationTokenRegistration>
    /// 1 once the token source is disposed: cancelling then is skipped rather than thrown and
    /// caught (an ended run's consumer disposing it would otherwise throw once per run).
    let mutable disposed = 0
    let telemetry = RunTelemetry()

    static let tag (e: exn) (key: string) (value: obj) =
        try
            e.Data[key] <- value
        with _ ->
            ()

    /// The run's token: cancelled on failure, on the user's cancellation and on early stop.
    member _.Token = cts.Token

    /// The run's metrics and activities.
    member _.Telemetry = telemetry


    /// The first failure, or null.
    member _.Error = Volatile.Read &error

    /// The 1-based position of the next stage wired into this run.
    member _.NextStageIndex() =
        stages <- stages + 1
        stages

    /// Registers a queue or turnstile to wake when the run stops.
    member _.Register(a: IAbortable) = abortables.Add a

    /// Registers what starts a stage's workers, once the whole run is wired.
    member _.OnStart(start: unit -> unit) = starters.Add start

    /// Records a failure. The first one in time stops the run; later ones are attached to it.
    member this.Fail(stage: string, e: exn) = this.Fail(stage, e, null)

    /// Records a failure that stands for another until `settled` completes (a worker process's
    /// brief failure frame, until its full frame has come, or will not): it stops the run at once,
    /// and `WhenErrorSettled` waits for `settled` while it is the run's first failure.
    member _.Fail(stage: string, e: exn, settled: Task) =
        let first =
            lock sync (fun () ->
                if isNull error then
                    tag e ErrorKeys.Stage stage
                    error <- e
                    settling <- settled
                    telemetry.Failed stage
                    true
                else
                    if not (obj.ReferenceEquals(e, error)) then
                        let others =
                            match error.Data[ErrorKeys.Others] with
                            | :? List<exn> as l -> l
                            | _ ->
                                let l = List<exn>()
                                tag error ErrorKeys.Others l
                                l

                        // One failure may be reported twice (a crashed worker process: by its
                        // exit and by its connection); it is listed once.
                        if not (others.Contains e) then
                            tag e ErrorKeys.Stage stage
                            others.Add e
                            telemetry.Failed stage

                    false)

        if first && Volatile.Read &disposed = 0 then
            try
                cts.Cancel()
            with :? ObjectDisposedException ->
                () // a late report (a worker process exiting) after the run had finished

    /// Puts `e` in the place of `provisional`, a failure recorded by `Fail` that stood for it
    /// until its details came (a worker process's brief failure frame): the run's first failure,
    /// or one of the others, with the same stage.
    member _.Refine(provisional: exn, e: exn) =
        lock sync (fun () ->
            if obj.ReferenceEquals(error, provisional) then
                tag e ErrorKeys.Stage provisional.Data[ErrorKeys.Stage]

                match provisional.Data[ErrorKeys.Others] with
                | null -> ()
                | others -> tag e ErrorKeys.Others others

                error <- e
                settling <- null
            elif not (isNull error) then
                match error.Data[ErrorKeys.Others] with
                | :? List<exn> as others ->
                    match others.IndexOf provisional with
                    | -1 -> ()
                    | i ->
                        tag e ErrorKeys.Stage provisional.Data[ErrorKeys.Stage]
                        others[i] <- e
                | _ -> ())

    /// Completes once the run's first failure is final: at once, unless it is a provisional one
    /// (see `Fail`) whose details may still come. The consumer raises the failure then, without
    /// waiting for the workers to end (disposing the enumerator waits for them).
    member _.WhenErrorSettled() : Task =
        match lock sync (fun () -> settling) with
        | null -> Task.CompletedTask
        | t -> t

    /// Stops the run: every queue and turnstile wakes its waiters, who then leave.
    member _.Cancel() =
        if Volatile.Read &disposed = 0 then
            try
                cts.Cancel()
            with :? ObjectDisposedException ->
                () // the run had just finished

    /// True when a worker's exception is only the echo of the run stopping.
    member _.IsStopEcho(e: exn) =
        match e with
        | :? RunAbortedException -> true
        | :? OperationCanceledException -> cts.IsCancellationRequested
        | _ -> false

    /// Runs `body` on a dedicated thread (see `DedicatedThreads`), then `ended` with null, or with
    /// the exception `body` threw; the task completes once the thread has parked.
    static member private OnThread(name: string, body: unit -> unit, ended: exn -> unit) : Task =
        let done' = TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)
        Live.threadStarted ()

        DedicatedThreads.start
            name
            (fun () ->
                try
                    try
                        body ()
                        ended null
                    with e ->
                        ended e
                finally
                    Live.threadEnded ())
            done'.SetResult

        done'.Task

    /// Runs `body` as an async loop on the thread pool, then `ended` with null, or with the
    /// exception `body` threw.
    static member private OnPool(body: unit -> Task, ended: exn -> unit) : Task =
        Live.taskStarted ()

        let run () : Task =
            task {
                try
                    try
                        do! body ()
                        ended null
                    with e ->
                        ended e
                finally
                    Live.taskEnded ()
            }

        Task.Run run

    /// Runs a stage's worker on a dedicated thread; `ended` hears how it ended.
    member _.StartThread(name: string, body: unit -> unit, ended: exn -> unit) =
        workers.Add(RunContext.OnThread(name, body, ended))

    /// Runs a stage's worker as an async loop on the thread pool; `ended` hears how it ended.
    member _.StartTask(body: unit -> Task, ended: exn -> unit) =
        workers.Add(RunContext.OnPool(body, ended))

    /// Runs the source's pump on a dedicated thread. Unlike a stage's worker, the end of the run
    /// does not wait for it while it is held inside the user's code (see `WhenFinished`).
    member _.StartSourceThread(name: string, body: unit -> unit, ended: exn -> unit) =
        source <- RunContext.OnThread(name, body, ended)

    /// Runs the source's pump as an async loop; see `StartSourceThread`.
    member _.StartSourceTask(body: unit -> Task, ended: exn -> unit) =
        source <- RunContext.OnPool(body, ended)

    /// Starts every stage of the run.
    member _.Start() =
        registration <-
            cts.Token.Register(fun () ->
                for a in abortables do
                    a.Abort())

        telemetry.Start()

        // A run cancelled before it starts starts nothing: not even the source reads an item.
        if not cts.IsCancellationRequested then
            for s in starters do
                s ()

    /// Releases a run that never started.
    member _.DisposeUnstarted() =
        Volatile.Write(&disposed, 1)
        cts.Dispose()

    /// Blocks the calling thread until every worker of the run has finished and its threads have
    /// parked. A blocking consumer calls it before `WhenFinished`: a thread stage's worker task
    /// completes asynchronously (through the thread pool), but a blocked `Wait` is woken directly,
    /// so the end of a short run needs no thread-pool hop before the consumer hears it.
    member _.WaitWorkers() =
        for w in workers do
            w.Wait()

    /// Completes when every worker of the run has finished and its threads have parked, and the
    /// source's pump has finished too, or is detached: once every stage is done, the pump's own
    /// code ends at once (its queue is aborted), so only the user's code (a MoveNext that blocks
    /// or ignores the token) can still hold it. It gets `Tuning.SourceGraceMilliseconds`; after
    /// that it is left to finish by itself, which it does (disposing the source's enumerator)
    /// as soon as that call returns, delivering nothing more.
    member this.WhenFinished() : Task =
        task {
            do! Task.WhenAll(workers)
            let source = source

            if not (isNull source || source.IsCompleted) then
                try
                    do! source.WaitAsync(TimeSpan.FromMilliseconds(float Tuning.SourceGraceMilliseconds))
                with :? TimeoutException ->
                    // Detached. Cancelling the run's token (if it was not already) lets a source
                    // that observes it end sooner; every stage is done, so nothing else notices.
                    this.Cancel()

            telemetry.Finish(Volatile.Read &error, cts.IsCancellationRequested)
            registration.Dispose()
            Volatile.Write(&disposed, 1)
            cts.Dispose()
        }
