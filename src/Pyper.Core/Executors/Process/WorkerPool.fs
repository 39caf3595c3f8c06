namespace Pyper

open System
open System.Diagnostics
open System.IO
open System.Net.Sockets
open System.Runtime.ExceptionServices
open System.Threading
open System.Threading.Tasks

/// A worker process's exit as a task, from one `Exited` handler added when the process starts.
/// Nothing else subscribes to `Process.Exited`, and nothing calls `WaitForExitAsync`, which adds
/// and removes a handler of its own on each call. The event's add and remove are not thread-safe:
/// two waits at once (a crash's exit code while a stopped run closes the worker) could lose one
/// wait's handler, and that wait never returned. A stopped run then hung.
[<Sealed>]
type internal ProcessExit(proc: Process, exited: unit -> unit) =
    let ended = TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)

    do
        // The handler runs under the Process's lock: what awaits `Task` continues elsewhere.
        proc.add_Exited (
            EventHandler(fun _ _ ->
                try
                    exited ()
                finally
                    ended.TrySetResult() |> ignore)
        )

        proc.EnableRaisingEvents <- true

        if proc.HasExited then
            ended.TrySetResult() |> ignore

    /// Completes once the process has exited.
    member _.Task: Task = ended.Task

    /// Whether the process exits within `ms` milliseconds (awaited, no thread blocked).
    member _.Within(ms: int) : Task<bool> =
        task {
            try
                do! ended.Task.WaitAsync(TimeSpan.FromMilliseconds(float ms))
                return true
            with :? TimeoutException ->
                return false
        }

/// A worker process and its connection. It serves one process-stage worker at a time; between
/// runs it parks in `WorkerPool` (starting a .NET runtime costs about 100 ms of CPU here).
[<Sealed; AllowNullLiteral>]
type internal WorkerProcess(proc: Process, exit: ProcessExit, stream: NetworkStream) =
    [<VolatileField>]
    let mutable onExit: Action = null

    let mutable closed = 0

    member _.Process = proc
    member _.Exit = exit
    member _.Stream = stream

    /// What to do if the process exits on its own: fail the stage it serves, or leave the pool.
    member _.OnExit
        with get () = onExit
        and set (v: Action) = onExit <- v

    /// The keep-alive timer while parked (set and cleared under the pool's lock).
    member val Timer: Timer = null with get, set

    /// True once it has served a stage and parked: a reused worker.
    member val Reused = false with get, set

    /// Called by the process's Exited event.
    member _.Exited() =
        match onExit with
        | null -> () // being closed on purpose
        | f -> f.Invoke()

    /// Ends the process (once): closing the connection makes it exit; with `wait` it has 2 s
    /// before it is killed, else it is killed at once unless it has already exited. The worker
    /// process alone is killed (`Kill()`): `Kill(true)` looks for its descendants among every
    /// process of the machine, which took 60-560 ms on a loaded machine, while a failed run's
    /// consumer waited.
    member _.Close(wait: bool) =
        if Interlocked.Exchange(&closed, 1) = 0 then
            onExit <- null
            stream.Dispose()
            WorkerProcess.End(proc, wait)

    /// Like `Close`, without blocking a thread while the process exits.
    member _.CloseAsync(wait: bool) : Task =
        if Interlocked.Exchange(&closed, 1) = 0 then
            onExit <- null
            stream.Dispose()

            task {
                let! exited =
                    if proc.HasExited then Task.FromResult true
                    elif not wait then Task.FromResult false
                    else exit.Within 2000

                if not exited then
                    try
                        proc.Kill()
                    with _ ->
                        ()

                    do! exit.Task

                proc.Dispose()
            }
        else
            Task.CompletedTask

    /// Reaps a worker process (killing it unless it exits within 2 s, with `wait`, or at once).
    static member End(proc: Process, wait: bool) =
        if not (proc.WaitForExit(if wait then 2000 else 0)) then
            try
                proc.Kill()
            with _ ->
                ()

            proc.WaitForExit()

        proc.Dispose()

/// Worker processes of process stages, reused across runs like dedicated threads: a worker
/// whose stage finished cleanly parks, connected and idle, and serves the next process-stage
/// worker (whatever its function: each use sends the function anew); after the keep-alive
/// (`DedicatedThreads.keepAlive`, the same setting) it is closed. A worker whose stage failed
/// or was stopped is never reused.
module internal WorkerPool =
    /// Parked workers; only this module parks, takes and removes them. A parked worker's timer is
    /// set before it parks and disposed by whoever takes it out: a timer that fires after that finds
    /// the worker gone from the lot and does nothing.
    let private idle = ParkingLot<WorkerProcess>()

    /// Observes a task we may stop waiting for, so that its failure is never unobserved.
    let private observe (t: Task) =
        t.ContinueWith(
            (fun (t: Task) -> t.Exception |> ignore),
            CancellationToken.None,
            TaskContinuationOptions.ExecuteSynchronously,
            TaskScheduler.Default
        )
        |> ignore

    /// The failure of a worker process that exited while serving `stage`.
    let crash (stage: string) (pid: int) (code: Nullable<int>) =
        RemoteStageException(
            $"Stage '{stage}': worker process {pid} exited unexpectedly (exit code {code}).",
            "",
            "",
            code
        )

    /// The exit code of a worker process that is going away (it gets a second to exit), or null;
    /// awaited, so that no thread blocks while it exits.
    let exitCode (w: WorkerProcess) : Task<Nullable<int>> =
        task {
            let! exited = w.Exit.Within 1000

            if exited then
                try
                    return Nullable w.Process.ExitCode
                with _ ->
                    return Nullable() // closed (disposed) meanwhile
            else
                return Nullable()
        }

    /// Starts a worker process and waits until it connects (or exits, or the run stops);
    /// `listening` is called with the channel's address before the process starts (tests).
    let startWith (listening: string -> unit) (stage: string) (token: CancellationToken) : Task<WorkerProcess> =
        task {
            // A missing host fails the stage here, before any channel exists.
            let host = WorkerProcesses.workerPath ()
            use listener = WorkerChannel.listen (WorkerChannel.defaultKind ())
            listening listener.Address
            let proc = WorkerProcesses.start host listener.Address
            let mutable worker: WorkerProcess = null

            let exit =
                ProcessExit(
                    proc,
                    fun () ->
                        match worker with
                        | null -> ()
                        | w -> w.Exited()
                )

            try
                let accept = listener.AcceptFrom(proc.Id, token)
                let exited = exit.Task.WaitAsync token
                observe accept
                observe exited
                let! first = Task.WhenAny(accept, exited)
                token.ThrowIfCancellationRequested() // a stopped run: no error of ours

                if not (obj.ReferenceEquals(first, accept)) then
                    raise (crash stage proc.Id (Nullable proc.ExitCode))

                // Its exit from here on goes to the OnExit the caller sets (which then checks
                // HasExited, for an exit in between).
                worker <- WorkerProcess(proc, exit, new NetworkStream(accept.GetAwaiter().GetResult(), true))
                return worker
            with e ->
                WorkerProcess.End(proc, false)
                ExceptionDispatchInfo.Throw e
                return null
        }

    /// A parked worker, or a new one. The caller sets `OnExit` at once.
    let acquire (stage: string) (token: CancellationToken) : Task<WorkerProcess> =
        let rec parked () =
            match idle.TryTake() with
            | null -> null
            | w ->
                w.Timer.Dispose()
                w.Timer <- null

                if w.Process.HasExited then
                    w.Close false
                    parked ()
                else
                    w

        match parked () with
        | null -> startWith ignore stage token
        | w -> Task.FromResult w

    /// A worker whose stage finished cleanly (no batch in flight): parks it for the keep-alive.
    let release (w: WorkerProcess) =
        let keepAlive = DedicatedThreads.keepAlive ()

        if keepAlive = 0 || w.Process.HasExited then
            w.Close true
        else
            w.Reused <- true

            w.OnExit <-
                Action(fun () ->
                    if idle.Remove w then
                        w.Close false)

            // Made before the worker parks (whoever takes it out disposes it), started once it is
            // in the lot (a keep-alive that ran out before would find nothing to remove).
            let timer =
                new Timer(
                    (fun _ ->
                        if idle.Remove w then
                            w.Close true),
                    null,
                    Timeout.Infinite,
                    Timeout.Infinite
                )

            w.Timer <- timer
            idle.Park w

            try
                timer.Change(keepAlive, Timeout.Infinite) |> ignore
            with :? ObjectDisposedException ->
                () // taken already

    /// The number of parked workers.
    let idleCount () = idle.Count

    /// Closes every parked worker now and waits until each has exited (tests check that nothing
    /// is left; a host may call it before unloading).
    let retireIdle () =
        for w in idle.TakeAll() do
            w.Timer.Dispose()
            w.Timer <- null
            w.Close true
