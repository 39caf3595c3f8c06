/// Shared test helpers: hang guards, leak checks and small sources.
module Pyper.Tests.Helpers

open System
open System.Collections.Generic
open System.IO
open System.Threading
open System.Threading.Tasks
open Expecto
open Pyper
open Pyper.FSharp

/// How long any single wait in a test may take before it counts as a hang.
let hangGuard = TimeSpan.FromSeconds 60.0

/// True when `t` ends within `limit`, whatever its outcome: only its end is waited for, so its
/// exception is not thrown here (the caller takes the outcome, and the original exception, from
/// `GetAwaiter().GetResult()`).
let endsWithin (limit: TimeSpan) (t: Task) = t.ContinueWith(ignore).Wait limit

/// Runs `work`, failing the test if it does not finish within the hang guard.
let withinGuard (what: string) (work: unit -> Task<'T>) : 'T =
    let t = Task.Run<'T>(Func<Task<'T>> work)

    if not (endsWithin hangGuard t) then
        failtestf "hang: %s did not finish within %O" what hangGuard

    t.GetAwaiter().GetResult()

/// Polls `condition` until it holds (a hang guard, not a sleep: it returns as soon as it holds).
let waitUntil (what: string) (condition: unit -> bool) =
    if not (SpinWait.SpinUntil(Func<bool> condition, hangGuard)) then
        failtestf "hang: %s did not happen within %O" what hangGuard

/// Fails the test when `/proc` is missing: the leak checks read threads and processes there, and
/// without it they would see none and pass whatever the code leaked.
let private procfs (path: string) =
    if not (Directory.Exists path) then
        failtestf "%s is missing: the leak checks need Linux's /proc to see threads and processes" path

/// OS threads of this process whose name starts with "Pyper", as (thread id, name) (Linux names
/// threads in /proc).
let pyperOsThreadsById () =
    procfs "/proc/self/task"

    Directory.GetDirectories "/proc/self/task"
    |> Array.choose (fun d ->
        try
            let name = File.ReadAllText(Path.Combine(d, "comm")).Trim()

            if name.StartsWith "Pyper/" then
                Some(Path.GetFileName d, name)
            else
                None
        with _ ->
            None)

/// Process ids of the live worker processes that process `parent` started (zombies count as gone).
let workerProcesses (parent: int) =
    procfs "/proc/self"

    Directory.GetDirectories "/proc"
    |> Array.choose (fun d ->
        match Int32.TryParse(Path.GetFileName d) with
        | true, pid ->
            try
                let stat = File.ReadAllText(Path.Combine(d, "stat"))
                let fields = stat.Substring(stat.LastIndexOf ')' + 2).Split ' '
                let cmd = File.ReadAllText(Path.Combine(d, "cmdline"))

                if cmd.Contains "Pyper.Worker.dll" && int fields[1] = parent && fields[0] <> "Z" then
                    Some pid
                else
                    None
            with _ ->
                None
        | _ -> None)

/// The names of the OS threads of this process whose name starts with "Pyper".
let pyperOsThreads () = pyperOsThreadsById () |> Array.map snd

let private unobserved = ref 0

/// The last unobserved task exception, shown by the check that finds it (which task it was).
let private lastUnobserved: exn ref = ref null

do
    TaskScheduler.UnobservedTaskException.Add(fun e ->
        lastUnobserved.Value <- e.Exception
        Interlocked.Increment &unobserved.contents |> ignore
        e.SetObserved())

/// What an earlier test that failed left alive (a hung run's workers: a test gives up on a run
/// after the hang guard, and nothing can stop a blocked thread). Later leak checks count only what
/// goes beyond it, so one hang fails one test instead of every test after it. Zero and empty until
/// a test fails; lowered again as leftovers end.
type private Leftovers =
    {
        mutable Threads: int
        mutable Tasks: int
        mutable Processes: int
        mutable OsThreads: Set<string>
        mutable Pids: Set<int>
    }

let private left =
    {
        Threads = 0
        Tasks = 0
        Processes = 0
        OsThreads = Set.empty
        Pids = Set.empty
    }

/// Pyper OS threads that are not parked, by thread id.
let private busyOsThreads () =
    pyperOsThreadsById ()
    |> Array.filter (fun (_, name) -> name <> DedicatedThreads.IdleName)
    |> Array.map fst
    |> Set.ofArray

/// Records what is alive now as left over by a failed test (parked threads and worker processes
/// are retired first: they are no one's leftovers) and says so on stderr.
let recordLeftovers () =
    DedicatedThreads.retireIdle ()
    WorkerPool.retireIdle ()
    // Retired worker processes exit by themselves; what still serves a run stays (bounded wait).
    SpinWait.SpinUntil(
        (fun () -> (workerProcesses Environment.ProcessId).Length <= Live.processCount ()),
        TimeSpan.FromSeconds 5.0
    )
    |> ignore

    left.Threads <- Live.threadCount ()
    left.Tasks <- Live.taskCount ()
    left.Processes <- Live.processCount ()
    left.OsThreads <- busyOsThreads ()
    left.Pids <- Set.ofArray (workerProcesses Environment.ProcessId)

    if left.Threads + left.Tasks + left.Processes > 0 || not left.Pids.IsEmpty then
        eprintfn
            "leak checks: a failed test left %d worker threads, %d async workers, %d worker processes alive (pids %A); later checks count only what goes beyond them"
            left.Threads
            left.Tasks
            left.Processes
            (Set.toList left.Pids)

/// Forgets the leftover worker threads and async workers that have ended since: they no longer
/// excuse anything.
let private forgetEndedWorkers () =
    left.Threads <- min left.Threads (Live.threadCount ())
    left.Tasks <- min left.Tasks (Live.taskCount ())

/// Whether every worker thread and async worker of every run has ended, apart from those a failed
/// earlier test left behind (recorded as leftovers: a test is not blamed for them).
let runWorkersGone () =
    forgetEndedWorkers ()
    Live.threadCount () <= left.Threads && Live.taskCount () <= left.Tasks

/// Writes a file named `name` into `folder` whole: aside first, then moved in, so that a reader
/// polling the folder never sees it half written.
let writeWhole (folder: string) (name: string) (text: string) =
    let aside = Directory.CreateDirectory(Path.Combine(folder, ".aside")).FullName
    File.WriteAllText(Path.Combine(aside, name), text)
    File.Move(Path.Combine(aside, name), Path.Combine(folder, name))

/// Runs a leak check; when it fails, what it found is recorded as leftovers before the failure
/// goes on, so the next test is not blamed for it.
let private blamingOnce (check: unit -> unit) =
    try
        check ()
    with _ ->
        recordLeftovers ()
        reraise ()

/// Worker processes of this test process that no failed test left behind.
let private newWorkerProcesses () =
    workerProcesses Environment.ProcessId
    |> Array.filter (fun pid -> not (left.Pids.Contains pid))

/// Asserts that no worker thread, async worker or worker process of any run is alive, that
/// every dedicated thread has parked and that every worker process left is parked in the pool;
/// then retires the parked threads and checks none is left (an exited thread may linger in
/// /proc for an instant: polled, with a hang guard). Parked worker processes stay for the next
/// test (see `assertNoLeaks`). What a failed earlier test left (`Leftovers`) is not counted.
let assertNoLeaksKeepingProcesses () =
    blamingOnce (fun () ->
        // Leftovers that have ended since no longer excuse anything.
        forgetEndedWorkers ()
        left.Processes <- min left.Processes (Live.processCount ())
        left.OsThreads <- Set.intersect left.OsThreads (busyOsThreads ())
        left.Pids <- Set.intersect left.Pids (Set.ofArray (workerProcesses Environment.ProcessId))

        Expect.equal (Live.threadCount () - left.Threads) 0 "no worker thread of a run is alive"
        Expect.equal (Live.taskCount () - left.Tasks) 0 "no async worker of a run is alive"
        Expect.equal (Live.processCount () - left.Processes) 0 "no worker process serves a stage"

        for id, name in pyperOsThreadsById () do
            if not (left.OsThreads.Contains id) then
                Expect.equal name DedicatedThreads.IdleName "every Pyper thread left has parked"

        // A worker process stopped by its run is reaped as the run ends; one that exits is polled for.
        waitUntil "every worker process left to be parked" (fun () ->
            (newWorkerProcesses ()).Length = WorkerPool.idleCount ())

        DedicatedThreads.retireIdle ()

        let unparked () =
            pyperOsThreadsById ()
            |> Array.filter (fun (id, _) -> not (left.OsThreads.Contains id))

        if not (SpinWait.SpinUntil((fun () -> Array.isEmpty (unparked ())), hangGuard)) then
            failtestf "Pyper OS threads are left: %A" (unparked ()))

/// `assertNoLeaksKeepingProcesses`, then the parked worker processes retire too and none is left.
let assertNoLeaks () =
    assertNoLeaksKeepingProcesses ()

    blamingOnce (fun () ->
        WorkerPool.retireIdle ()
        waitUntil "worker processes to be gone" (fun () -> Array.isEmpty (newWorkerProcesses ())))

/// A test case that runs `check` (a leak check) and looks for unobserved task exceptions after its
/// body. A body that fails may leave its run behind (a hang): that is recorded as leftovers.
let leakTestWith (check: unit -> unit) name (body: unit -> unit) =
    testCase name (fun () ->
        let before = unobserved.Value

        try
            body ()
        with _ ->
            recordLeftovers ()
            reraise ()

        check ()
        GC.Collect()
        GC.WaitForPendingFinalizers()
        Expect.equal unobserved.Value before $"no unobserved task exception (the last: {lastUnobserved.Value})")

/// A test case that checks for leaks (threads, tasks, processes) and unobserved task exceptions after its body.
let leakTest name body = leakTestWith assertNoLeaks name body

/// Collects a whole run, with a hang guard.
let collect (results: seq<'T>) : 'T list =
    withinGuard "collecting the results" (fun () -> Task.Run(fun () -> List.ofSeq results))

/// Collects an async run, with a hang guard and an optional token.
let collectAsync (results: IAsyncEnumerable<'T>) : 'T list =
    withinGuard "collecting the results" (fun () ->
        task {
            let acc = ResizeArray()
            let e = results.GetAsyncEnumerator()

            try
                let mutable go = true

                while go do
                    let! more = e.MoveNextAsync()
                    go <- more

                    if more then
                        acc.Add e.Current
            finally
                e.DisposeAsync().AsTask().Wait()

            return List.ofSeq acc
        })

/// Runs `f` and returns the exception it throws, failing if it throws none.
let catchExn (f: unit -> unit) : exn =
    try
        f ()
        failtest "expected an exception"
    with
    | :? AssertException -> reraise ()
    | e -> e

/// An endless source counting how many items were read from it.
type CountingSource() =
    let mutable produced = 0L
    member _.Produced = Interlocked.Read &produced

    member _.Items =
        seq {
            while true do
                let n = Interlocked.Increment &produced
                yield int n
        }

/// An async stream of the list a Task gives, yielding before each item.
type AsyncList<'T>(items: unit -> Task<'T list>) =
    interface IAsyncEnumerable<'T> with
        member _.GetAsyncEnumerator ct =
            let mutable rest = None
            let mutable current = Unchecked.defaultof<'T>

            { new IAsyncEnumerator<'T> with
                member _.Current = current

                member _.MoveNextAsync() =
                    ValueTask<bool>(
                        task {
                            ct.ThrowIfCancellationRequested()
                            do! Task.Yield()

                            if rest.IsNone then
                                let! xs = items ()
                                rest <- Some xs

                            match rest with
                            | Some(x :: xs) ->
                                current <- x
                                rest <- Some xs
                                return true
                            | _ -> return false
                        }
                    )
              interface IAsyncDisposable with
                  member _.DisposeAsync() = ValueTask()
            }

/// A countdown that completes when `n` callers have arrived: proves `n` workers run at once.
type Rendezvous(n: int) =
    let mutable arrived = 0
    let all = TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)

    member _.Arrive() : Task =
        if Interlocked.Increment &arrived = n then
            all.SetResult()

        all.Task.WaitAsync hangGuard

/// The sorted results, for comparing multisets.
let sorted (xs: 'T list) = List.sort xs

/// A thrown-and-caught test exception type, so tests can check the original type surfaces.
exception Boom of int

/// Runs `body` with the keep-alive of parked threads and worker processes set to `ms`, then
/// restores the default.
let withKeepAlive (ms: int) (body: unit -> unit) =
    AppContext.SetData(DedicatedThreads.KeepAliveSetting, ms)

    try
        body ()
    finally
        AppContext.SetData(DedicatedThreads.KeepAliveSetting, null)
