namespace Pyper

open System
open System.Threading

/// The threads that run blocking workers, kept apart from the .NET thread pool so that blocking
/// functions never starve it. Starting an OS thread costs about 0.25 ms on a small VM (more than
/// a whole run of a few items), so a thread whose worker is done parks, named "Pyper/idle", and
/// serves the next worker of any run. A thread parked longer than the keep-alive exits.
///
/// The keep-alive is 2 s; the runtime setting `Pyper.WorkerKeepAliveMilliseconds` (in
/// runtimeconfig.json or `AppContext.SetData`) changes it, and 0 makes every thread exit as soon
/// as its worker is done. Parked worker processes (`WorkerPool`) use the same setting.
module internal DedicatedThreads =
    /// The name of the runtime setting that holds the keep-alive in milliseconds.
    [<Literal>]
    let KeepAliveSetting = "Pyper.WorkerKeepAliveMilliseconds"

    /// The name of a parked thread.
    [<Literal>]
    let IdleName = "Pyper/idle"

    [<Literal>]
    let private DefaultKeepAlive = 2000

    /// The keep-alive in milliseconds, read when a thread parks (so a change applies at once).
    let keepAlive () =
        let parse (s: string) =
            match Int32.TryParse s with
            | true, ms when ms >= 0 -> ms
            | _ -> DefaultKeepAlive

        match AppContext.GetData KeepAliveSetting with
        | :? int as ms when ms >= 0 -> ms
        | :? string as s -> parse s
        | _ -> DefaultKeepAlive

    /// A worker for a thread: its thread name, its body, the execution context of whoever started
    /// it (a reused thread must not carry an earlier run's AsyncLocal values, culture or trace
    /// context), and what to do once the thread has parked.
    [<Sealed; AllowNullLiteral>]
    type private Job(name: string, body: unit -> unit, parked: unit -> unit) =
        let context = ExecutionContext.Capture()
        member _.Name = name
        member _.Parked = parked

        /// Runs the body in the starter's execution context (as a new thread would).
        member _.Run() =
            match context with
            | null -> body ()
            | c -> ExecutionContext.Run(c, (fun _ -> body ()), null)

    /// One thread and the hand-off of its next job (null tells it to exit).
    [<Sealed; AllowNullLiteral>]
    type private Slot() =
        let signal = new SemaphoreSlim(0)
        member val Job: Job = null with get, set
        member val Thread: Thread = null with get, set

        /// Hands the parked thread its next job.
        member this.Give(job: Job) =
            this.Job <- job
            signal.Release() |> ignore

        /// Waits for the next job; false when none came within `timeout` ms.
        member _.Wait(timeout: int) = signal.Wait timeout

    /// Parked threads; only this module parks, takes and removes them.
    let private idle = ParkingLot<Slot>()

    let private next (slot: Slot) : Job =
        if slot.Wait(keepAlive ()) then
            slot.Job
        elif idle.Remove slot then
            null // retired
        else
            // Taken by `start` just as the keep-alive ran out: its job is on the way.
            slot.Wait Timeout.Infinite |> ignore
            slot.Job

    let private serve (slot: Slot) () =
        let mutable job = slot.Job

        while not (isNull job) do
            let current = job

            try
                if Thread.CurrentThread.Name <> current.Name then
                    Thread.CurrentThread.Name <- current.Name

                current.Run()
            finally
                Thread.CurrentThread.Name <- IdleName
                slot.Job <- null // nothing of the run stays reachable from a parked thread
                // Parked before the run hears that the worker is done, so a finished run has
                // every one of its threads either parked or exited.
                idle.Park slot
                current.Parked()

            job <- next slot

    /// Runs `body` on a dedicated thread named `name` (a parked one, or a new one), then calls
    /// `parked` once that thread has parked. `body` must not throw.
    let start (name: string) (body: unit -> unit) (parked: unit -> unit) =
        let job = Job(name, body, parked)

        let slot = idle.TryTake()

        if isNull slot then
            let slot = Slot(Job = job)
            let t = Thread(serve slot, IsBackground = true, Name = name)
            slot.Thread <- t
            t.UnsafeStart() // no context of its own: each job brings its starter's
        else
            slot.Give job

    /// The number of parked threads.
    let idleCount () = idle.Count

    /// Makes every parked thread exit now and waits until they have (tests check that nothing is
    /// left; a host may call it before unloading).
    let retireIdle () =
        let slots = idle.TakeAll()

        for s in slots do
            s.Give null

        for s in slots do
            s.Thread.Join()
