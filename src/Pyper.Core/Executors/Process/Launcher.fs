namespace Pyper

open System
open System.Diagnostics
open System.IO
open System.Reflection
open System.Runtime.InteropServices
open System.Text.Json.Serialization
open System.Threading

/// Starting worker processes, in the parent.
module internal WorkerProcesses =
    let private dotnetHost =
        lazy
            (match Environment.GetEnvironmentVariable "DOTNET_HOST_PATH" with
             | null
             | "" ->
                 let exe =
                     if OperatingSystem.IsWindows() then
                         "dotnet.exe"
                     else
                         "dotnet"

                 let root =
                     Path.GetFullPath(Path.Combine(RuntimeEnvironment.GetRuntimeDirectory(), "..", "..", ".."))

                 let candidate = Path.Combine(root, exe)
                 if File.Exists candidate then candidate else exe
             | path -> path)

    /// The folder of this assembly, or null when it has no file (bundled into a single-file app).
    let private coreFolder () =
        match typeof<FunctionRef>.Assembly.Location with
        | null
        | "" -> null
        | location -> Path.GetDirectoryName location

    /// Folders searched for the worker host, in order: next to this assembly (an app's output
    /// folder, where the package's build targets copy it), then the package's own copy
    /// (`lib/net10.0/Pyper.Core.dll` -> `tools/net10.0/`, for a script's `#r "nuget: Pyper"`).
    let private defaultSearch () =
        match coreFolder () with
        | null -> []
        | dir -> [ dir; Path.GetFullPath(Path.Combine(dir, "..", "..", "tools", "net10.0")) ]

    /// Tests replace the folders searched for the host (None: the default).
    let mutable internal searchOverride: string list option = None

    /// The worker host's path, or a FileNotFoundException that names every folder searched.
    let workerPath () =
        let folders = searchOverride |> Option.defaultWith defaultSearch

        let found =
            folders
            |> List.tryFind (fun dir ->
                File.Exists(Path.Combine(dir, "Pyper.Worker.dll"))
                && File.Exists(Path.Combine(dir, "Pyper.Worker.runtimeconfig.json")))

        match found with
        | Some dir -> Path.Combine(dir, "Pyper.Worker.dll")
        | None ->
            let where =
                match folders with
                | [] -> "nowhere: Pyper.Core.dll has no file location (it is bundled into a single-file app)"
                | _ -> folders |> String.concat ", "

            raise (
                FileNotFoundException(
                    "Pyper's worker host, Pyper.Worker.dll with its Pyper.Worker.runtimeconfig.json, which "
                    + "runs the worker processes of multiprocess stages, was not found. Looked in "
                    + where
                    + ". It comes with the Pyper package: referencing the package copies it to the app's "
                    + "output (build, run, publish), and a script's #r \"nuget: Pyper\" finds it in the "
                    + "package. Reference the package rather than copying Pyper.Core.dll alone, publish "
                    + "without PublishSingleFile (worker processes load Pyper.Core.dll from a file), or run "
                    + "the stage on threads (without multiprocess).",
                    "Pyper.Worker.dll"
                )
            )

    /// Folders the worker loads Pyper.Core and its dependencies from when they are not beside it
    /// (the package's host, beside no Pyper.Core.dll): the folders this process loaded them from.
    let private probeFolders () =
        [
            typeof<FunctionRef>.Assembly
            typeof<list<int>>.Assembly
            typeof<JsonFSharpConverter>.Assembly
        ]
        |> List.choose (fun a ->
            match a.Location with
            | null
            | "" -> None
            | location -> Some(Path.GetDirectoryName location))
        |> List.distinct

    /// Starts the worker host `host` (from `workerPath`), which connects to `socketPath`.
    let start (host: string) (socketPath: string) =
        let psi = ProcessStartInfo(dotnetHost.Value, UseShellExecute = false)

        for a in
            [
                "exec"
                host
                "--socket"
                socketPath
                "--parent"
                string Environment.ProcessId
            ] do
            psi.ArgumentList.Add a

        for dir in probeFolders () do
            psi.ArgumentList.Add "--probe"
            psi.ArgumentList.Add dir

        // Workers exist for CPU-heavy work and start often: methods with loops are compiled
        // optimized at once (no tier-0 code with on-stack replacement), and no time goes to
        // instrumenting code for profile-guided recompilation.
        psi.Environment["DOTNET_TC_QuickJitForLoops"] <- "0"
        psi.Environment["DOTNET_TieredPGO"] <- "0"
        Process.Start psi
