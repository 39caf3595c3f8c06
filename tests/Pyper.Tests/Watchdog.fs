/// Every test runs under a watchdog. A test still running after its limit is reported on stderr
/// (its full name and the managed stacks of every thread of this process, by the dotnet-stack
/// tool of the repository's tool manifest) and fails; its thread is abandoned and the suite goes
/// on. So a hang that no guard inside the test catches costs one limit, names itself, and shows
/// where it waits, instead of using up a CI run's whole budget without a word.
module Pyper.Tests.Watchdog

open System
open System.Diagnostics
open System.IO
open System.Threading.Tasks
open Expecto

/// The limit of one test: the longest takes about 16 s on a quiet 2-core machine.
let limit = TimeSpan.FromMinutes 5.0

/// How long dotnet-stack may take to sample this process's threads.
let private stackToolLimit = TimeSpan.FromMinutes 2.0

/// The folder holding the tool manifest (.config/dotnet-tools.json), above the test binaries.
let private toolRoot () =
    let rec up (d: DirectoryInfo) =
        if isNull d then
            None
        elif File.Exists(Path.Combine(d.FullName, ".config", "dotnet-tools.json")) then
            Some d.FullName
        else
            up d.Parent

    up (DirectoryInfo AppContext.BaseDirectory)

/// The managed stacks of every thread of this process (`dotnet dotnet-stack report`), or a line
/// saying why they could not be taken.
let stacks () : string =
    match toolRoot () with
    | None -> $"no stacks: no .config/dotnet-tools.json above {AppContext.BaseDirectory}"
    | Some root ->
        let psi =
            ProcessStartInfo(
                "dotnet",
                WorkingDirectory = root,
                UseShellExecute = false,
                RedirectStandardOutput = true,
                RedirectStandardError = true
            )

        for a in [ "dotnet-stack"; "report"; "-p"; string Environment.ProcessId ] do
            psi.ArgumentList.Add a

        try
            use p = Process.Start psi
            let out = p.StandardOutput.ReadToEndAsync()
            let err = p.StandardError.ReadToEndAsync()

            if not (p.WaitForExit stackToolLimit) then
                p.Kill true
                $"no stacks: dotnet-stack did not finish within {stackToolLimit}"
            elif p.ExitCode <> 0 then
                $"no stacks: dotnet-stack failed ({p.ExitCode}): {out.Result}{err.Result}"
            else
                out.Result
        with e ->
            $"no stacks: dotnet-stack could not run: {e.Message}"

/// Reports a test that outran its limit on `log` and fails it.
let private overrun (log: TextWriter) (name: string) (limit: TimeSpan) =
    log.WriteLine $"watchdog: test '{name}' still runs after {limit}; the managed stacks of this process:"
    log.Flush()
    log.WriteLine(stacks ())
    log.WriteLine $"watchdog: test '{name}' is abandoned (its stacks are above); the suite goes on"
    log.Flush()
    // What the abandoned test leaves alive must not fail the tests after it.
    Helpers.recordLeftovers ()
    failtestf "hang: the test did not finish within %O (the stacks of this process are printed above)" limit

/// Waits for the test's task; its own exception comes through unchanged.
let private await (log: TextWriter) (name: string) (limit: TimeSpan) (t: Task) =
    if not (Helpers.endsWithin limit t) then
        overrun log name limit

    t.GetAwaiter().GetResult()

/// The test's code, run on a thread of its own (so a hung test can be left behind) and waited
/// for at most `limit`.
let private watch (log: TextWriter) (limit: TimeSpan) (name: string) (code: TestCode) : TestCode =
    let onOwnThread (f: unit -> unit) =
        Task.Factory.StartNew(Action f, TaskCreationOptions.LongRunning)

    match code with
    | Sync f -> Sync(fun () -> await log name limit (onOwnThread f))
    | SyncWithCancel f -> SyncWithCancel(fun ct -> await log name limit (onOwnThread (fun () -> f ct)))
    | Async a -> Sync(fun () -> await log name limit (Async.StartAsTask a))
    | AsyncFsCheck(config, over, f) ->
        AsyncFsCheck(config, over, (fun c -> async { await log name limit (Async.StartAsTask(f c)) }))

/// Puts every test case of `test` under the watchdog with `limit`, reporting on `log`.
let guardWith (log: TextWriter) (limit: TimeSpan) (test: Test) : Test =
    let rec go (path: string list) test =
        match test with
        | TestCase(code, state) -> TestCase(watch log limit (String.concat "/" (List.rev path)) code, state)
        | TestList(tests, state) -> TestList(List.map (go path) tests, state)
        | TestLabel(label, inner, state) -> TestLabel(label, go (label :: path) inner, state)
        | Test.Sequenced(how, inner) -> Test.Sequenced(how, go path inner)

    go [] test

/// Puts every test case under the watchdog with `limit`, reporting on stderr.
let guard (test: Test) = guardWith Console.Error limit test
