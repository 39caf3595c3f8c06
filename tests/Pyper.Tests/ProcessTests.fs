/// The process executor: worker processes, their functions, failures and clean-up.
module Pyper.Tests.ProcessTests

open System
open System.Diagnostics
open System.IO
open System.Threading
open System.Threading.Tasks
open Expecto
open Pyper
open Pyper.FSharp
open Pyper.Tests.Helpers

/// An F# record item: it crosses the process boundary as JSON.
type Reading =
    {
        Sensor: string
        Value: float
        Tags: string list
    }

/// An item that cannot be serialized.
type Holder = { Make: Func<int> }

/// An exception the parent cannot re-create: no constructor it knows how to call.
type Unrebuildable(code: Guid) =
    inherit Exception($"boom {code}")

/// Functions that worker processes run: module functions of this compiled assembly.
module Remote =
    let triple (x: int) = x * 3
    let identity (x: int) = x

    let calibrate (r: Reading) =
        { r with
            Value = r.Value * 2.0
            Tags = "calibrated" :: r.Tags
        }

    let failAtSeven (x: int) = if x = 7 then invalidOp "seven" else x

    let boomAtSeven (x: int) =
        if x = 7 then raise (Unrebuildable Guid.Empty) else x

    let hold (h: Holder) = h

    let shout (x: int) =
        printfn "worker %d says %d" Environment.ProcessId x
        x

/// A test that checks threads, tasks and worker processes afterwards.
let processTest name body = leakTest name body

/// Starts the ProcessProbe (tests/Pyper.ProcessProbe, built beside this test program) with `args`
/// and `tmpdir` as its TMPDIR, its output redirected.
let startProbe (args: string list) (tmpdir: string) =
    let here = Path.GetDirectoryName(typeof<Reading>.Assembly.Location)
    let config = DirectoryInfo(here).Parent.Name

    let probe =
        Path.GetFullPath(
            Path.Combine(
                here,
                "..",
                "..",
                "..",
                "..",
                "Pyper.ProcessProbe",
                "bin",
                config,
                "net10.0",
                "Pyper.ProcessProbe.dll"
            )
        )

    let psi =
        ProcessStartInfo("dotnet", UseShellExecute = false, RedirectStandardOutput = true)

    psi.ArgumentList.Add "exec"
    psi.ArgumentList.Add probe

    for a in args do
        psi.ArgumentList.Add a

    psi.Environment["TMPDIR"] <- tmpdir
    Process.Start psi

/// How long a run may take to fail after one of its worker processes is killed. The crash path
/// itself may wait: up to 1 s for the dead worker's exit code (WorkerPool.exitCode), then up to
/// 2 s for it to exit when it is closed (WorkerProcess.Close) before the run's other workers are
/// stopped; the rest of the bound is slack for a loaded 2-core machine. A run that missed the
/// crash would wait for a result forever, until the hang guard (20 s), twice this bound.
let crashBound = TimeSpan.FromSeconds(1.0 + 2.0 + 7.0)

/// How long a worker process may take to exit once its parent is gone: its watchdog polls every
/// 100 ms, then the runtime shuts down; the rest is slack for a loaded machine. A worker that did
/// not watch its parent would live on until the hang guard (20 s), twice this bound.
let orphanBound = TimeSpan.FromSeconds(0.1 + 9.9)

/// The processes of `pids` still alive (zombies count as gone).
let private alive (pids: int[]) =
    pids
    |> Array.filter (fun pid ->
        try
            let stat = File.ReadAllText $"/proc/{pid}/stat"
            stat.Substring(stat.LastIndexOf ')' + 2).[0] <> 'Z'
        with _ ->
            false)

let tests =
    testList
        "process executor"
        [
            testCase "a multiprocess stage says it runs on the process executor" (fun () ->
                let p = Stage.map (Remote.triple, workers = 2, multiprocess = true)
                Expect.equal p.Stages.Head.Executor Executor.Process "a process stage"

                Expect.equal
                    (Stage.map Remote.triple).Stages.Head.Executor
                    Executor.Thread
                    "without multiprocess, a thread stage"

                Expect.equal
                    (string p)
                    "Pipeline<Int32, Int32>: map #1 (2 workers, processes)"
                    "shown as a process stage")

            processTest "F# records and lists cross the boundary" (fun () ->
                let p = Stage.map (Remote.calibrate, multiprocess = true)

                let r =
                    {
                        Sensor = "s1"
                        Value = 1.5
                        Tags = [ "raw" ]
                    }

                Expect.equal
                    (collect (Pipeline.toSeq r p))
                    [
                        { r with
                            Value = 3.0
                            Tags = [ "calibrated"; "raw" ]
                        }
                    ]
                    "calibrated")

            processTest "workers print freely; the data channel is separate" (fun () ->
                let p = Stage.map (Remote.shout, workers = 2, multiprocess = true)
                Expect.equal (sorted (collect (Pipeline.toSeqFrom [ 1..20 ] p))) [ 1..20 ] "all results")

            testCase "a capturing closure is refused when the stage is built" (fun () ->
                let k = Environment.ProcessorCount // a value the closure must capture

                let e =
                    Expect.throwsC (fun () -> Stage.map ((fun x -> x * k), multiprocess = true) |> ignore) id

                Expect.isTrue (e :? ArgumentException) "ArgumentException"
                Expect.equal (e :?> ArgumentException).ParamName "f" "names the function"
                Expect.stringContains e.Message "captures values" "says why"
                Expect.stringContains e.Message "module function or static method" "says what to do")

            testCase "an async function is refused for processes" (fun () ->
                let e =
                    Expect.throwsC
                        (fun () -> Stage.map ((fun (x: int) -> Task.FromResult x), multiprocess = true) |> ignore)
                        id

                Expect.equal (e :?> ArgumentException).ParamName "multiprocess" "names the option"
                Expect.stringContains e.Message "async function" "says why"
                Expect.stringContains e.Message "Stage.mapTask" "says what to do")

            testCase "an item type that cannot be serialized is refused when the stage is built" (fun () ->
                let e =
                    Expect.throwsC
                        (fun () -> Stage.map (Remote.hold, multiprocess = true, name = "holder") |> ignore)
                        id

                Expect.isTrue (e :? ArgumentException) $"ArgumentException, got {e.GetType()}"
                Expect.stringContains e.Message "Stage 'holder'" "the stage"
                Expect.stringContains e.Message "Func" "the type")

            processTest
                "a missing worker host fails the stage at once, naming the file, where it looked and what to do"
                (fun () ->
                    // Parked workers would serve the stage without looking for the host.
                    WorkerPool.retireIdle ()
                    let empty = Path.Combine(Path.GetTempPath(), $"pyper-no-host-{Guid.NewGuid():N}")
                    let other = Path.Combine(empty, "other")
                    Directory.CreateDirectory other |> ignore
                    WorkerProcesses.searchOverride <- Some [ empty; other ]

                    try
                        let p = Stage.map (Remote.triple, workers = 2, multiprocess = true, name = "heavy")

                        let e = catchExn (fun () -> collect (Pipeline.toSeqFrom [ 0..20 ] p) |> ignore)

                        match e with
                        | :? FileNotFoundException as e ->
                            Expect.equal e.FileName "Pyper.Worker.dll" "the missing file"
                            Expect.stringContains e.Message "Pyper.Worker.dll" "names the file"
                            Expect.stringContains e.Message empty "the first folder searched"
                            Expect.stringContains e.Message other "the second folder searched"
                            Expect.stringContains e.Message "without multiprocess" "what to do"
                            Expect.equal (PipelineError.stage e) (Some "heavy") "stage"
                        | e -> failtest $"FileNotFoundException expected, got {e}"
                    finally
                        WorkerProcesses.searchOverride <- None
                        Directory.Delete(empty, true))

            processTest "an exception type the parent cannot re-create comes as RemoteStageException" (fun () ->
                let p = Stage.map (Remote.boomAtSeven, multiprocess = true)
                let e = catchExn (fun () -> collect (Pipeline.toSeqFrom [ 0..20 ] p) |> ignore)

                match e with
                | :? RemoteStageException as r ->
                    Expect.stringContains r.RemoteType "Unrebuildable" "the remote type"
                    Expect.stringContains r.RemoteStackTrace "boomAtSeven" "the remote stack trace"
                | e -> failtestf "expected RemoteStageException, got %O" e)

            processTest "a worker killed mid-run fails the run at once, with the exit code" (fun () ->
                let source = CountingSource()

                let p =
                    Stage.map (Remote.identity, workers = 2, multiprocess = true, name = "victim")

                use e = (Pipeline.toSeqFrom source.Items p).GetEnumerator()
                Expect.isTrue (e.MoveNext()) "running"
                waitUntil "two worker processes" (fun () -> (workerProcesses Environment.ProcessId).Length = 2)
                let victim = (workerProcesses Environment.ProcessId)[0]
                let clock = Stopwatch.StartNew()
                Process.GetProcessById(victim).Kill()

                let failure =
                    catchExn (fun () ->
                        withinGuard "the failure" (fun () ->
                            Task.Run<unit>(fun () ->
                                while e.MoveNext() do
                                    ())))

                Expect.isLessThan clock.Elapsed crashBound "at once: only the crash path's own waits"

                match failure with
                | :? RemoteStageException as r ->
                    Expect.stringContains r.Message "Stage 'victim'" "names the stage"
                    Expect.equal r.ExitCode (Nullable 137) "SIGKILL's exit code"
                | other -> failtestf "expected RemoteStageException, got %O" other)

            processTest "worker processes of a run that stops early, fails or is cancelled are not kept" (fun () ->
                withKeepAlive 60_000 (fun () ->
                    let source = CountingSource()
                    let p = Stage.map (Remote.identity, workers = 2, multiprocess = true)
                    Expect.equal (collect (Pipeline.toSeqFrom source.Items p |> Seq.truncate 5)).Length 5 "five"
                    Expect.equal (WorkerPool.idleCount ()) 0 "workers stopped mid-stream are not kept"
                    let failing = Stage.map (Remote.boomAtSeven, workers = 2, multiprocess = true)

                    // An endless source, so that no worker can finish its share cleanly (and park,
                    // as it may) before the failure stops the run.
                    catchExn (fun () -> collect (Pipeline.toSeqFrom (CountingSource().Items) failing) |> ignore)
                    |> ignore

                    Expect.equal (WorkerPool.idleCount ()) 0 "workers of a failed run are not kept"
                    use cts = new CancellationTokenSource()

                    catchExn (fun () ->
                        for x in Pipeline.streamFromSeq source.Items p |> Pipeline.toBlockingSeq cts.Token do
                            if x > 100 then
                                cts.Cancel())
                    |> ignore

                    Expect.equal (WorkerPool.idleCount ()) 0 "workers of a cancelled run are not kept"))

            processTest
                "a finished run parks its worker processes; the next run, of any function, takes them"
                (fun () ->
                    withKeepAlive 60_000 (fun () ->
                        let triple = Stage.map (Remote.triple, workers = 2, multiprocess = true)
                        Expect.equal (sorted (collect (Pipeline.toSeqFrom [ 1..20 ] triple))) [ 3..3..60 ] "first run"
                        let first = set (workerProcesses Environment.ProcessId)
                        Expect.equal first.Count 2 "two worker processes"
                        Expect.equal (WorkerPool.idleCount ()) 2 "both parked"
                        let identity = Stage.map (Remote.identity, workers = 2, multiprocess = true)

                        Expect.equal
                            (sorted (collect (Pipeline.toSeqFrom [ 1..20 ] identity)))
                            [ 1..20 ]
                            "another function"

                        Expect.equal (set (workerProcesses Environment.ProcessId)) first "the same two processes"
                        Expect.equal (WorkerPool.idleCount ()) 2 "parked again"))

            processTest "a parked worker process that dies leaves the pool; the next run starts another" (fun () ->
                withKeepAlive 60_000 (fun () ->
                    let p = Stage.map (Remote.triple, workers = 1, multiprocess = true)
                    Expect.equal (collect (Pipeline.toSeqFrom [ 1..5 ] p)) [ 3..3..15 ] "first run"
                    let victim = Array.exactlyOne (workerProcesses Environment.ProcessId)
                    Process.GetProcessById(victim).Kill()
                    waitUntil "the pool drops it" (fun () -> WorkerPool.idleCount () = 0)
                    Expect.equal (collect (Pipeline.toSeqFrom [ 1..5 ] p)) [ 3..3..15 ] "second run, no failure"
                    Expect.notEqual (Array.exactlyOne (workerProcesses Environment.ProcessId)) victim "a new process"))

            processTest "keep-alive 0: worker processes end with their run" (fun () ->
                withKeepAlive 0 (fun () ->
                    let p = Stage.map (Remote.triple, workers = 2, multiprocess = true)
                    Expect.equal (sorted (collect (Pipeline.toSeqFrom [ 1..20 ] p))) [ 3..3..60 ] "results"
                    Expect.equal (WorkerPool.idleCount ()) 0 "none parked"

                    waitUntil "no worker process left" (fun () ->
                        Array.isEmpty (workerProcesses Environment.ProcessId))))

            processTest "workers exit on their own when their parent is killed, leaving nothing in TMPDIR" (fun () ->
                // A TMPDIR of its own, to see what a killed parent leaves in it.
                let tmp =
                    Directory.CreateDirectory(Path.Combine(Path.GetTempPath(), $"killed-{Guid.NewGuid():N}")).FullName

                use parent = startProbe [] tmp

                let said =
                    withinGuard "the probe to start" (fun () -> parent.StandardOutput.ReadLineAsync())

                Expect.equal said "started" "the probe started"
                waitUntil "the probe's two workers" (fun () -> (workerProcesses parent.Id).Length = 2)
                let workers = workerProcesses parent.Id
                parent.Kill()
                Expect.isTrue (parent.WaitForExit hangGuard) "the probe is gone"
                let clock = Stopwatch.StartNew()
                waitUntil "the orphaned workers to exit" (fun () -> Array.isEmpty (alive workers))
                Expect.isLessThan clock.Elapsed orphanBound "on their own, soon"
                let left = Directory.GetFileSystemEntries(tmp, "pyper-*")
                Directory.Delete(tmp, true)
                Expect.equal left [||] "no pyper entry left in the parent's TMPDIR")

            processTest "workers whose parent is killed dispose their per-worker state before they exit" (fun () ->
                let dir =
                    Directory
                        .CreateDirectory(Path.Combine(Path.GetTempPath(), $"orphan-state-{Guid.NewGuid():N}"))
                        .FullName

                use parent = startProbe [ "state"; dir ] (Path.GetTempPath())

                try
                    let said =
                        withinGuard "the probe to start" (fun () -> parent.StandardOutput.ReadLineAsync())

                    Expect.equal said "started" "both worker processes served the probe"
                    let workers = workerProcesses parent.Id
                    Expect.equal workers.Length 2 "the probe's two worker processes"
                    parent.Kill()
                    Expect.isTrue (parent.WaitForExit hangGuard) "the probe is gone"
                    waitUntil "the orphaned workers to exit" (fun () -> Array.isEmpty (alive workers))

                    // Each state's dispose (0.8 s) ran before its worker process exited.
                    let markers = Directory.GetFiles dir |> Array.map Path.GetFileName |> Array.sort
                    Expect.equal markers (workers |> Array.map string |> Array.sort) "each worker disposed its state"
                finally
                    if not parent.HasExited then
                        parent.Kill()
                        parent.WaitForExit hangGuard |> ignore

                    Directory.Delete(dir, true))
        ]
