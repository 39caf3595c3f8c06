/// Per-worker state (issue #17) in worker processes, and recycling a worker's state after N calls
/// on every executor.
module Pyper.Tests.ProcessStateTests

open System
open System.Collections.Concurrent
open System.IO
open System.Threading
open System.Threading.Tasks
open Expecto
open FsCheck
open Pyper
open Pyper.FSharp
open Pyper.Tests.Helpers

/// One worker's state: the process it was made in, its number among the states made there, and
/// what it saw (a folder to write to when disposed, the calls it served).
[<AllowNullLiteral>]
type Probe(pid: int, number: int) =
    member _.Pid = pid
    member _.Number = number
    member val Folder: string = null with get, set
    member val Calls = 0 with get, set

/// Functions worker processes run: module functions of this compiled assembly. Counters live in
/// the process's AppDomain data (a test module's values are not initialised in a worker process).
module StateRemote =
    let private bump (key: string) =
        let n =
            match AppDomain.CurrentDomain.GetData key with
            | :? int as n -> n + 1
            | _ -> 1

        AppDomain.CurrentDomain.SetData(key, box n)
        n

    /// A state numbered by the states made in this process so far.
    let init () =
        Probe(Environment.ProcessId, bump "pyper-test-state-inits")

    /// The item's folder is kept for `dispose`; the result says which state served it.
    let tag (p: Probe) (folder: string, x: int) =
        p.Folder <- folder
        p.Calls <- p.Calls + 1
        p.Pid, p.Number, x

    /// Leaves a file named after the state, holding the calls it served, in the folder it saw.
    let dispose (p: Probe) =
        if not (isNull p.Folder) then
            File.WriteAllText(Path.Combine(p.Folder, $"{p.Pid}-{p.Number}"), string p.Calls)

    let failingInit () : Probe = invalidOp "no model here"

    /// Fails every second state it makes in this process.
    let secondInitFails () =
        let n = bump "pyper-test-second-init"

        if n % 2 = 0 then
            raise (FormatException $"state {n} cannot be made")

        init ()

    let disposeFails (_: Probe) = raise (IOException "cannot close")

    /// `dispose` that takes a while (flushing, closing a model): a worker process killed at once
    /// when its run stops would not get to write its file.
    let slowDispose (p: Probe) =
        Thread.Sleep 300
        dispose p

    /// Item x fails its first `fails` calls (counted per run and item in this process).
    let flaky (_: Probe) (run: string, x: int, fails: int) =
        if bump $"pyper-test-flaky-{run}-{x}" <= fails then
            invalidOp $"planned failure of {x}"
        else
            x * 10

    let throwsAtSeven (p: Probe) (folder: string, x: int) =
        if x = 7 then invalidOp "seven" else tag p (folder, x)

/// A temporary folder the test owns, deleted after `body`.
let private withFolder (body: string -> unit) =
    let dir = Path.Combine(Path.GetTempPath(), $"pyper-state-{Guid.NewGuid():N}")

    Directory.CreateDirectory dir |> ignore

    try
        body dir
    finally
        Directory.Delete(dir, true)

/// The dispose records in `dir`: (pid, number) -> calls served.
let private disposed (dir: string) =
    Directory.GetFiles dir
    |> Array.map (fun f ->
        let parts = (Path.GetFileName f).Split '-'
        (int parts[0], int parts[1]), int (File.ReadAllText f))
    |> Map.ofArray

let private throwsOf<'e when 'e :> exn> (what: string) (f: unit -> unit) : 'e =
    match catchExn f with
    | :? 'e as e -> e
    | e -> failtestf "%s: expected %s, got %O" what typeof<'e>.Name e

let private processes =
    testList
        "in worker processes"
        [
            leakTest "init runs in each worker process, dispose there before it parks; the next run starts afresh"
            <| fun () ->
                withKeepAlive 60_000 (fun () ->
                    withFolder (fun dir ->
                        let p =
                            Stage.mapWithState (
                                StateRemote.init,
                                StateRemote.tag,
                                dispose = StateRemote.dispose,
                                workers = 2,
                                multiprocess = true
                            )

                        let items = [ for x in 1..40 -> dir, x ]
                        let first = collect (Pipeline.toSeqFrom items p)
                        Expect.equal (first |> List.map (fun (_, _, x) -> x) |> sorted) [ 1..40 ] "all delivered"
                        let pids = first |> List.map (fun (pid, _, _) -> pid) |> List.distinct
                        Expect.isFalse (List.contains Environment.ProcessId pids) "made in worker processes"

                        // A state's number counts the states made in its process (a process
                        // parked by an earlier test may have made some).
                        let numberIn =
                            pids
                            |> List.map (fun pid ->
                                let numbers =
                                    first |> List.filter (fun (q, _, _) -> q = pid) |> List.map (fun (_, n, _) -> n)

                                Expect.equal (List.distinct numbers).Length 1 "one state per worker process"
                                pid, numbers.Head)
                            |> Map.ofList

                        // Disposed in the worker process before the run ended and the worker parked.
                        let served = first |> List.countBy (fun (pid, n, _) -> pid, n) |> Map.ofList

                        Expect.equal (disposed dir) served "each state disposed there, after its calls"
                        Expect.equal (WorkerPool.idleCount ()) 2 "both worker processes parked"

                        // The parked worker processes serve the next run, each with a fresh state.
                        let second = collect (Pipeline.toSeqFrom items p)

                        for pid, n, _ in second do
                            Expect.isTrue (List.contains pid pids) "a parked worker process serves it"
                            Expect.equal n (numberIn[pid] + 1) "a fresh state: the first was disposed"))

            leakTest "recycleAfter: the state is disposed and made anew every N calls, in the same process"
            <| fun () ->
                withFolder (fun dir ->
                    let p =
                        Stage.mapWithState (
                            StateRemote.init,
                            StateRemote.tag,
                            dispose = StateRemote.dispose,
                            multiprocess = true,
                            recycleAfter = 3
                        )

                    let results = collect (Pipeline.toSeqFrom [ for x in 1..10 -> dir, x ] p)
                    // Numbers count the states made in the process: relative to its first here.
                    let _, first, _ = results.Head
                    let numbers = results |> List.map (fun (_, n, _) -> n - first + 1)
                    Expect.equal numbers [ 1; 1; 1; 2; 2; 2; 3; 3; 3; 4 ] "a fresh state every 3 calls"
                    Expect.equal (results |> List.map (fun (pid, _, _) -> pid) |> List.distinct).Length 1 "one process"

                    let calls =
                        disposed dir |> Map.toList |> List.map (fun ((_, n), c) -> n - first + 1, c)

                    Expect.equal calls [ 1, 3; 2, 3; 3, 3; 4, 1 ] "each state disposed after its calls")

            leakTest "an init that throws fails the run with its exception, also under onError" (fun () ->
                let counts = FailureCounts()

                for onError in [ None; Some OnError.Skip ] do
                    let p =
                        Stage.mapWithState (
                            StateRemote.failingInit,
                            StateRemote.tag,
                            multiprocess = true,
                            name = "model",
                            ?onError = onError,
                            counts = counts
                        )

                    let e =
                        throwsOf<InvalidOperationException> "init" (fun () ->
                            collect (Pipeline.toSeqFrom [ "", 1; "", 2 ] p) |> ignore)

                    Expect.equal e.Message "no model here" "the original message"

                // A recycle's init too: skipping would lose the state, not an item.
                let q =
                    Stage.mapWithState (
                        StateRemote.secondInitFails,
                        StateRemote.tag,
                        multiprocess = true,
                        recycleAfter = 2,
                        onError = OnError.Skip,
                        counts = counts
                    )

                let e =
                    throwsOf<FormatException> "recycled init" (fun () ->
                        collect (Pipeline.toSeqFrom [ for x in 1..5 -> "", x ] q) |> ignore)

                Expect.equal e.Message "state 2 cannot be made" "the original message"
                Expect.equal counts.Skipped 0L "no item was skipped for it")

            leakTest "a dispose that throws fails the run with its exception" (fun () ->
                let p =
                    Stage.mapWithState (
                        StateRemote.init,
                        StateRemote.tag,
                        dispose = StateRemote.disposeFails,
                        multiprocess = true
                    )

                let e =
                    throwsOf<IOException> "dispose" (fun () -> collect (Pipeline.toSeqFrom [ "", 1 ] p) |> ignore)

                Expect.equal e.Message "cannot close" "the original message")

            leakTest "a run that fails or stops early still disposes in the worker process" (fun () ->
                withFolder (fun dir ->
                    let p =
                        Stage.mapWithState (
                            StateRemote.init,
                            StateRemote.throwsAtSeven,
                            dispose = StateRemote.slowDispose,
                            multiprocess = true
                        )

                    throwsOf<InvalidOperationException> "the failure" (fun () ->
                        collect (Pipeline.toSeqFrom [ for x in 1..20 -> dir, x ] p) |> ignore)
                    |> ignore

                    waitUntil "the failed run's state to be disposed" (fun () -> (disposed dir).Count = 1)

                    let endless = Seq.initInfinite (fun i -> dir, 100 + i)

                    let q =
                        Stage.mapWithState (
                            StateRemote.init,
                            StateRemote.tag,
                            dispose = StateRemote.slowDispose,
                            multiprocess = true
                        )

                    let first = collect (Pipeline.toSeqFrom endless q |> Seq.truncate 3)
                    Expect.equal first.Length 3 "three"
                    let pid, n, _ = first.Head
                    waitUntil "the stopped run's state to be disposed" (fun () -> (disposed dir).ContainsKey(pid, n))))

            testCase "init, f and dispose must be re-creatable in a worker process; recycleAfter at least 1" (fun () ->
                let offset = Random.Shared.Next()

                let e =
                    throwsOf<ArgumentException> "a capturing init" (fun () ->
                        Stage.mapWithState ((fun () -> offset), (fun s x -> s + x), multiprocess = true, name = "s")
                        |> ignore)

                Expect.equal e.ParamName "init" "names init"
                Expect.stringContains e.Message "Stage 's' (map): cannot run in worker processes: init" "says why"

                let e =
                    throwsOf<ArgumentException> "a capturing dispose" (fun () ->
                        Stage.mapWithState (
                            StateRemote.init,
                            StateRemote.tag,
                            dispose = (fun p -> p.Calls <- offset),
                            multiprocess = true
                        )
                        |> ignore)

                Expect.equal e.ParamName "dispose" "names dispose"

                let builds: (unit -> obj) list =
                    [
                        fun () ->
                            box (Stage.mapWithState (StateRemote.init, StateRemote.tag, recycleAfter = 0, name = "s"))
                        fun () ->
                            box (
                                Stage.mapWithState (
                                    StateRemote.init,
                                    StateRemote.tag,
                                    recycleAfter = 0,
                                    name = "s",
                                    multiprocess = true
                                )
                            )
                        fun () ->
                            box (
                                Stage.mapTaskWithState (
                                    (fun () -> 0),
                                    (fun s x _ -> Task.FromResult(s + x)),
                                    recycleAfter = -1,
                                    name = "s"
                                )
                            )
                    ]

                for build in builds do
                    let e =
                        throwsOf<ArgumentOutOfRangeException> "recycleAfter" (fun () -> build () |> ignore)

                    Expect.equal e.ParamName "recycleAfter" "names the option"
                    Expect.stringContains e.Message "Stage 's' (map): recycleAfter must be at least 1" "says what")
        ]

/// recycleAfter on threads and async workers.
let private inProcess =
    testList
        "recycleAfter in this process"
        [
            for threads in [ true; false ] do
                let kind = if threads then "threads" else "async"

                leakTest
                    $"{kind}: every N calls the state is disposed and made anew; a failing init fails the run"
                    (fun () ->
                        let inits = ref 0
                        let disposedStates = ConcurrentBag<int>()

                        let stage (recycle: int) (failAt: int) : Pipeline<int, int> =
                            let init () =
                                let n = Interlocked.Increment inits

                                if n = failAt then
                                    raise (FormatException $"init {n}")

                                ref n

                            let dispose (s: int ref) = disposedStates.Add s.Value

                            if threads then
                                Stage.mapWithState (
                                    init,
                                    (fun s _ -> s.Value),
                                    dispose = dispose,
                                    recycleAfter = recycle,
                                    onError = OnError.Skip
                                )
                            else
                                Stage.mapTaskWithState (
                                    init,
                                    (fun s _ _ -> Task.FromResult s.Value),
                                    dispose = dispose,
                                    recycleAfter = recycle,
                                    onError = OnError.Skip
                                )

                        let results = collect (Pipeline.toSeqFrom [ 1..10 ] (stage 4 0))
                        Expect.equal results [ 1; 1; 1; 1; 2; 2; 2; 2; 3; 3 ] "a fresh state every 4 calls"
                        Expect.equal (disposedStates |> List.ofSeq |> sorted) [ 1; 2; 3 ] "each disposed"

                        inits.Value <- 0

                        let e =
                            throwsOf<FormatException> "a recycle's init" (fun () ->
                                collect (Pipeline.toSeqFrom [ 1..10 ] (stage 2 2)) |> ignore)

                        Expect.equal e.Message "init 2" "the original exception, not a skipped item")
        ]

/// Random failures on a process stage with per-worker state (recycled at random): the books
/// balance, as on threads and async workers (PolicyTests).
let private balance (plan: (int * bool) list) (retries: byte) (recycle: byte) (deadLetter: bool) =
    let retries = int retries % 3
    let run = Guid.NewGuid().ToString "N"
    let items = plan |> List.mapi (fun i (k, _) -> run, i, abs k % 4)
    let counts = FailureCounts()
    let dead = ConcurrentBag<int>()

    let final =
        if deadLetter then
            OnError.DeadLetter(fun (_, x, _) _ _ -> dead.Add x)
        else
            OnError.Skip

    let p =
        Stage.mapWithState (
            StateRemote.init,
            StateRemote.flaky,
            workers = 1 + plan.Length % 2,
            multiprocess = true,
            recycleAfter = 1 + int recycle % 4,
            onError = OnError.Retry(retries, TimeSpan.FromTicks 10L, (fun _ -> true), final),
            counts = counts
        )

    let results = collect (Pipeline.toSeqFrom items p)
    let expected = items |> List.filter (fun (_, _, f) -> f <= retries)

    int64 results.Length + counts.Skipped + counts.DeadLettered = int64 items.Length
    && sorted results = (expected |> List.map (fun (_, x, _) -> x * 10))
    && int64 dead.Count = counts.DeadLettered

let private config =
    { FsCheckConfig.defaultConfig with
        maxTest = 6
        endSize = 12
    }

let tests =
    testSequenced
    <| testList
        "per-worker state"
        [
            processes
            inProcess
            testPropertyWithConfig config "processes with state: delivered + skipped + dead-lettered = input" balance
        ]
