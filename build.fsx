// The project's build script: `dotnet fsi build.fsx <target>`. It needs only the .NET SDK:
// it restores the local tools (Paket, Fantomas) and the packages itself.
//
// Targets:
//   build   restore tools and packages, build everything (Release)
//   pack    the NuGet packages Pyper and Pyper.CSharp, with symbols, into artifacts/packages
//   test    build, run every test suite, end with one line "N passed, N failed"
//   install build, pack, and use the packages from fresh C# and F# projects and a script (part of test)
//   demo    build, run the README example (F# and C#)
//   demo-distributed  build, start a nats-server and two workers here, run the README example with
//           its CPU stage distributed, kill one worker mid-run (needs nats-server)
//   bench   build, run the benchmarks (BenchmarkDotNet); extra arguments go to BenchmarkDotNet
//   profile build, trace scenario 1 in a loop with dotnet-trace and print the top frames
//           (profile [F# | C# | Dataflow | Channels] [workers]; default F# 1)
//   docs    build, generate the site (API reference and guide, docs/) into artifacts/docs with
//           fsdocs; the guide's F# snippets are evaluated, so a broken one fails (part of test)
//   format  format the F# sources with Fantomas
//   soak    build, run the long randomized fault campaign
//
// Restore, build and pack output shows only when a step fails, or always with --verbose.

#load "tests/install/Install.fsx"

open System
open System.Diagnostics
open System.IO

let root = __SOURCE_DIRECTORY__

/// `--verbose` (anywhere) shows restore, build and pack output; without it, a step's output is
/// shown only when the step fails.
let verbose = fsi.CommandLineArgs |> Array.contains "--verbose"

let args =
    fsi.CommandLineArgs
    |> Array.skip 1
    |> Array.filter ((<>) "--verbose")
    |> List.ofArray

/// Runs a program in the repository, streaming its output, for at most `limit`; returns its exit
/// code, or None when it ran out of time (it is killed, with its children).
let runFor (limit: TimeSpan) (exe: string) (arguments: string list) (env: (string * string) list) =
    let psi = ProcessStartInfo(exe, WorkingDirectory = root, UseShellExecute = false)
    arguments |> List.iter psi.ArgumentList.Add
    env |> List.iter (fun (k, v) -> psi.Environment[k] <- v)
    use p = Process.Start psi

    if p.WaitForExit limit then
        Some p.ExitCode
    else
        p.Kill true
        p.WaitForExit()
        None

/// Runs a program in the repository, streaming its output; returns its exit code.
let run (exe: string) (arguments: string list) (env: (string * string) list) =
    (runFor Threading.Timeout.InfiniteTimeSpan exe arguments env).Value

/// Runs a program in `dir` and returns its exit code and everything it printed (stdout and
/// stderr, interleaved as they came).
let captureIn (dir: string) (exe: string) (arguments: string list) (env: (string * string) list) =
    let psi =
        ProcessStartInfo(
            exe,
            WorkingDirectory = dir,
            UseShellExecute = false,
            RedirectStandardOutput = true,
            RedirectStandardError = true
        )

    arguments |> List.iter psi.ArgumentList.Add
    env |> List.iter (fun (k, v) -> psi.Environment[k] <- v)
    let out = Text.StringBuilder()

    let add (e: DataReceivedEventArgs) =
        lock out (fun () ->
            if not (isNull e.Data) then
                out.AppendLine e.Data |> ignore)

    use p = new Process(StartInfo = psi)
    p.OutputDataReceived.Add add
    p.ErrorDataReceived.Add add
    p.Start() |> ignore
    p.BeginOutputReadLine()
    p.BeginErrorReadLine()
    p.WaitForExit()
    p.ExitCode, lock out (fun () -> out.ToString())

/// Fails the build when a program failed.
let check exe arguments code =
    if code <> 0 then
        eprintfn "build.fsx: '%s %s' failed with exit code %d" exe (String.concat " " arguments) code
        exit code

/// Runs a program, showing its output, and fails the build when it fails.
let exec exe arguments =
    run exe arguments [] |> check exe arguments

/// Runs a restore, build or pack step and fails the build when it fails: its output is shown with
/// --verbose, else only when it fails.
let quiet exe arguments =
    if verbose then
        exec exe arguments
    else
        let code, out = captureIn root exe arguments []

        if code <> 0 then
            eprintf "%s" out

        check exe arguments code

/// Runs a program and returns its exit code and what it printed.
let capture (exe: string) (arguments: string list) =
    let psi =
        ProcessStartInfo(exe, WorkingDirectory = root, UseShellExecute = false, RedirectStandardOutput = true)

    arguments |> List.iter psi.ArgumentList.Add
    use p = Process.Start psi
    let out = p.StandardOutput.ReadToEnd()
    p.WaitForExit()
    p.ExitCode, out

/// `dotnet run` arguments for a built project of the solution, then the program's own arguments.
let runProject (project: string) (arguments: string list) =
    [ "run"; "--project"; project; "-c"; "Release"; "--no-build"; "--" ] @ arguments

/// paket.dependencies names its package source through PYPER_NUGET_SOURCE; unless it is set
/// already, take the first enabled source of this machine's own NuGet configuration.
let setPackageSource () =
    match Environment.GetEnvironmentVariable "PYPER_NUGET_SOURCE" with
    | null
    | "" ->
        let enabled =
            capture "dotnet" [ "nuget"; "list"; "source"; "--format"; "short" ]
            |> snd
            |> fun s -> s.Split('\n', StringSplitOptions.RemoveEmptyEntries ||| StringSplitOptions.TrimEntries)
            |> Array.tryPick (fun line ->
                if line.StartsWith "E " then
                    Some(line.Substring(2).Trim())
                else
                    None)

        match enabled with
        | Some source -> Environment.SetEnvironmentVariable("PYPER_NUGET_SOURCE", source)
        | None ->
            eprintfn "build.fsx: no enabled NuGet source in this machine's configuration (dotnet nuget list source)"
            exit 2
    | _ -> ()

let restore () =
    Environment.SetEnvironmentVariable("DOTNET_CLI_TELEMETRY_OPTOUT", "1")
    Environment.SetEnvironmentVariable("DOTNET_NOLOGO", "1")
    setPackageSource ()
    quiet "dotnet" [ "tool"; "restore" ]
    // paket.lock is not tracked (it records the resolved feed address): resolve from the exact pins.
    quiet "dotnet" [ "paket"; "install" ]

let build () =
    restore ()
    quiet "dotnet" [ "build"; "Pyper.sln"; "-c"; "Release"; "--nologo"; "-v"; "minimal" ]

/// Packs the packages (Pyper, Pyper.CSharp, Pyper.Progress: the IsPackable projects) from the Release build
/// into `output`, with extra MSBuild arguments.
let packTo (output: string) (extra: string list) =
    for project in [ "src/Pyper.Core"; "src/Pyper.CSharp"; "src/Pyper.Progress" ] do
        quiet "dotnet" ([ "pack"; project; "-c"; "Release"; "--nologo"; "-o"; output ] @ extra)

/// The `pack` target: a deterministic build with normalised paths (for SourceLink), packed with
/// symbols into artifacts/packages.
let pack () =
    restore ()
    let output = Path.Combine(root, "artifacts", "packages")
    packTo output [ "-p:ContinuousIntegrationBuild=true" ]

    for file in Directory.GetFiles(output, "*.*nupkg") |> Array.sort do
        printfn "pack: %s" (Path.GetRelativePath(root, file))

/// The failed tests' lines the test programs reported, printed again above the closing line.
let failures = ResizeArray<string>()

/// Runs one test program, which writes "passed failed" to the file named by PYPER_TEST_SUMMARY,
/// then one line per failed test.
/// A test program fails a test that hangs after 5 minutes and goes on; this bounds a program
/// that hangs outside its tests, well within CI's budget.
let testSuite (project: string) (extra: string list) =
    let summary = Path.GetTempFileName()
    let limit = TimeSpan.FromMinutes 45.0

    let code =
        match runFor limit "dotnet" (runProject project extra) [ ("PYPER_TEST_SUMMARY", summary) ] with
        | Some code -> code
        | None ->
            let line = $"{project}: the test program did not end within {limit}; it was killed"
            eprintfn "build.fsx: %s" line
            failures.Add line
            1

    let lines = File.ReadAllLines summary

    let reported =
        match lines with
        | [||] -> 0, 1 // the suite did not report: count it as a failure
        | _ ->
            match lines[0].Split(' ', StringSplitOptions.RemoveEmptyEntries) with
            | [| p; f |] -> int p, int f
            | _ -> 0, 1

    failures.AddRange(lines |> Array.skip (min 1 lines.Length))

    File.Delete summary
    let passed, failed = reported
    passed, (if code <> 0 && failed = 0 then 1 else failed)

/// One check as (passed, failed) counts.
let counts ok = if ok then 1, 0 else 0, 1

/// Runs an F# script with dotnet fsi: one passed test when it exits 0 and prints `expected`.
let script (path: string) (expected: string) =
    let code, out = capture "dotnet" [ "fsi"; path ]
    let ok = code = 0 && out.Contains expected

    printfn
        "%s: %s"
        path
        (if ok then
             $"passed ({expected})"
         else
             $"FAILED (exit code {code}), printed:\n{out}")

    counts ok

/// Builds and runs every benchmark once at a hundredth of its size, so the benchmarks cannot rot.
let benchSmoke () =
    let code = run "dotnet" (runProject "benchmarks/Pyper.Benchmarks" [ "--quick" ]) []

    printfn "benchmarks (smoke run): %s" (if code = 0 then "passed" else $"FAILED (exit code {code})")
    counts (code = 0)

/// The site with fsdocs: API reference from the XML docs and the guide in docs/, whose F# snippets
/// are evaluated (--eval) and whose errors fail the build (--strict). Answers whether it built;
/// its output shows only when it failed, or with --verbose.
let docsTo (output: string) =
    let arguments =
        [
            "fsdocs"
            "build"
            "--projects"
            "src/Pyper.Core/Pyper.Core.fsproj"
            "src/Pyper.CSharp/Pyper.CSharp.csproj"
            "src/Pyper.Progress/Pyper.Progress.fsproj"
            "--properties"
            "Configuration=Release"
            "--eval"
            "--strict"
            "--clean"
            "--output"
            output
        ]

    let code, out = captureIn root "dotnet" arguments []

    if verbose || code <> 0 then
        eprintf "%s" out

    code = 0

let docsCheck () =
    let ok = docsTo (Path.Combine(root, "artifacts", "docs"))
    printfn "docs (fsdocs, snippets evaluated): %s" (if ok then "passed" else "FAILED")
    counts ok

let docs () =
    build ()

    if docsCheck () <> (1, 0) then
        exit 1

    printfn "docs: artifacts/docs/index.html"

let test () =
    build ()

    let results =
        [
            testSuite "tests/Pyper.Tests" [ "--colours"; "0" ]
            benchSmoke ()
            docsCheck ()
            script "samples/readme.fsx" "Total: 190"
            script "tests/fsi/refuses-fsi-functions.fsx" "refused:"
        ]
        @ Install.run root verbose captureIn

    let passed = results |> List.sumBy fst
    let failed = results |> List.sumBy snd

    for line in Seq.truncate 60 failures do
        printfn "FAILED %s" line

    if failures.Count > 60 then
        printfn "... and %d more failed tests (see the test output above)" (failures.Count - 60)

    printfn "%d passed, %d failed" passed failed
    exit (if failed = 0 then 0 else 1)

/// Only the install checks (also part of `test`).
let installTest () =
    build ()
    let results = Install.run root verbose captureIn
    let failed = results |> List.sumBy snd
    printfn "%d passed, %d failed" (results |> List.sumBy fst) failed
    exit (if failed = 0 then 0 else 1)

let demo () =
    build ()

    for sample in [ "samples/Readme.FSharp"; "samples/Readme.CSharp" ] do
        printfn "== %s" sample
        exec "dotnet" (runProject sample [])

/// The README example with its CPU stage on two distributed workers, one of them killed mid-run.
let demoDistributed () =
    build ()

    let natsServer =
        [
            "/usr/sbin/nats-server"
            "/usr/bin/nats-server"
            "/usr/local/bin/nats-server"
        ]
        |> List.tryFind File.Exists

    if natsServer.IsNone then
        eprintfn "demo-distributed: nats-server is not installed (Debian/Ubuntu: apt-get install -y nats-server)"
        exit 2

    let port =
        let l = new Net.Sockets.TcpListener(Net.IPAddress.Loopback, 0)
        l.Start()
        let p = (l.LocalEndpoint :?> Net.IPEndPoint).Port
        l.Stop()
        p

    let url = $"nats://127.0.0.1:{port}"
    let storage = Directory.CreateTempSubdirectory "pyper-demo-nats-"

    let bin =
        Path.Combine(root, "samples", "Readme.Distributed", "bin", "Release", "net10.0")

    let server =
        Process.Start(natsServer.Value, [ "-js"; "-a"; "127.0.0.1"; "-p"; string port; "-sd"; storage.FullName ])

    let worker () =
        let psi =
            ProcessStartInfo("dotnet", WorkingDirectory = root, UseShellExecute = false, RedirectStandardError = true)

        [
            "exec"
            Path.Combine(bin, "Pyper.Worker.dll")
            "--nats"
            url
            "--assemblies"
            bin
            "--parallel"
            "2"
            "--parent"
            string Environment.ProcessId
        ]
        |> List.iter psi.ArgumentList.Add

        let p = Process.Start psi
        let ready = Threading.Tasks.TaskCompletionSource()

        p.ErrorDataReceived.Add(fun e ->
            if not (isNull e.Data) then
                eprintfn "%s" e.Data

                if e.Data.Contains ": ready," then
                    ready.TrySetResult() |> ignore)

        p.BeginErrorReadLine()

        if not (ready.Task.Wait(TimeSpan.FromSeconds 30.0)) then
            eprintfn "demo-distributed: a worker did not start"

        p

    let workers = [ worker (); worker () ]
    printfn "== nats-server at %s, workers %A" url (workers |> List.map (fun w -> w.Id))

    let code =
        try
            run "dotnet" (runProject "samples/Readme.Distributed" [ url; string workers.Head.Id ]) []
        finally
            for p in server :: workers do
                if not p.HasExited then
                    p.Kill true

                p.WaitForExit()

            storage.Delete true

    exit code

/// A bar chart (SVG) of a BenchmarkDotNet CSV report: one bar per method and parameter, in items/s
/// (the report's mean is per item, thanks to OperationsPerInvoke).
let chart (csv: string) (svg: string) (title: string) =
    let rows = File.ReadAllLines csv |> Array.map (fun l -> l.Split ';')
    let column name = Array.findIndex ((=) name) rows[0]
    let meanAt, methodAt = column "Mean", column "Method"
    let workersAt = Array.tryFindIndex ((=) "Workers") rows[0]

    let ns (text: string) =
        let parts = text.Replace("\"", "").Trim().Split ' '

        let value =
            Double.Parse(parts[0].Replace(",", ""), Globalization.CultureInfo.InvariantCulture)

        match Array.tryItem 1 parts with
        | Some "μs"
        | Some "us" -> value * 1e3
        | Some "ms" -> value * 1e6
        | Some "s" -> value * 1e9
        | _ -> value

    let bars =
        rows
        |> Array.skip 1
        |> Array.map (fun r ->
            let label =
                match workersAt with
                | Some i -> $"{r[methodAt]} (workers {r[i]})"
                | None -> r[methodAt]

            label, 1e9 / ns r[meanAt])

    let top = bars |> Array.map snd |> Array.max

    let body =
        bars
        |> Array.mapi (fun i (label, rate) ->
            let y = 30 + 26 * i
            let w = 400.0 * rate / top

            $"""<text x="230" y="{y + 15}" text-anchor="end" font-size="12">{label}</text><rect x="240" y="{y}" width="{w:F0}" height="20" fill="#4a7ab5"/><text x="{245.0 + w:F0}" y="{y + 15}" font-size="12">{rate / 1e6:F1}M/s</text>""")
        |> String.concat "\n"

    let svgText =
        $"""<svg xmlns="http://www.w3.org/2000/svg" width="760" height="{40 + 26 * bars.Length}" font-family="sans-serif"><text x="10" y="18" font-size="14" font-weight="bold">{title}</text>
{body}
</svg>
"""

    File.WriteAllText(svg, svgText)

/// The full benchmark run; extra arguments go to BenchmarkDotNet (e.g. --filter '*Overhead*').
let bench (extra: string list) =
    build ()

    exec "dotnet" (runProject "benchmarks/Pyper.Benchmarks" extra)

    let overhead =
        Path.Combine(root, "BenchmarkDotNet.Artifacts", "results", "Pyper.Benchmarks.Overhead-report.csv")

    if File.Exists overhead then
        chart
            overhead
            (Path.Combine(root, "benchmarks", "overhead.svg"))
            "3 trivial stages over 1M ints: items/s (higher is better)"

        printfn "bench: wrote benchmarks/overhead.svg"

/// Scenario 1 (3 trivial stages over 1M ints) in a loop for 8 s under dotnet-trace (sampled thread
/// time, so waiting shows as well as running), then the 25 frames where threads spent most time.
let profile (who: string) (workers: string) =
    build ()
    let trace = Path.Combine(root, "BenchmarkDotNet.Artifacts", "profile.nettrace")
    Directory.CreateDirectory(Path.GetDirectoryName trace) |> ignore

    let dll =
        Path.Combine(root, "benchmarks", "Pyper.Benchmarks", "bin", "Release", "net10.0", "Pyper.Benchmarks.dll")

    exec
        "dotnet"
        [
            "dotnet-trace"
            "collect"
            "--profile"
            "dotnet-sampled-thread-time"
            "-o"
            trace
            "--"
            "dotnet"
            dll
            "--loop"
            who
            workers
            "8"
        ]

    exec "dotnet" [ "dotnet-trace"; "report"; trace; "topN"; "-n"; "25" ]

/// The long randomized fault campaign (10,000 cases unless a count is given) and the memory probe.
let soak (cases: string) =
    build ()

    exec "dotnet" (runProject "tests/Pyper.Tests" [ "--soak"; cases ])

let format () =
    exec "dotnet" [ "tool"; "restore" ]
    exec "dotnet" [ "fantomas"; "src"; "tests"; "samples"; "build.fsx" ]

match args with
| [ "build" ] -> build ()
| [ "pack" ] -> pack ()
| [ "test" ] -> test ()
| [ "install" ] -> installTest ()
| [ "demo" ] -> demo ()
| [ "demo-distributed" ] -> demoDistributed ()
| [ "docs" ] -> docs ()
| "bench" :: extra -> bench extra
| [ "profile" ] -> profile "F#" "1"
| [ "profile"; who ] -> profile who "1"
| [ "profile"; who; workers ] -> profile who workers
| [ "format" ] -> format ()
| [ "soak" ] -> soak "10000"
| [ "soak"; cases ] -> soak cases
| _ ->
    eprintfn
        "usage: dotnet fsi build.fsx (build | pack | test | install | demo | demo-distributed | docs | bench | profile [system] [workers] | format | soak [cases]) [--verbose]"

    exit 2
