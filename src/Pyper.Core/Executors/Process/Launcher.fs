namespace Pyper

open System
open System.Diagnostics
open System.IO
open System.Net.Sockets
open System.Reflection
open System.Runtime.InteropServices
open System.Runtime.Loader
open System.Text.Json
open System.Text.Json.Serialization
open System.Threading
open System.Threading.Tasks

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

    /// The worker host, shipped next to this assembly.
    let workerPath =
        lazy (Path.Combine(Path.GetDirectoryName(typeof<FunctionRef>.Assembly.Location), "Pyper.Worker.dll"))

    let start (socketPath: string) =
        let psi = ProcessStartInfo(dotnetHost.Value, UseShellExecute = false)

        for a in
            [
                "exec"
                workerPath.Value
                "--socket"
                socketPath
                "--parent"
                string Environment.ProcessId
            ] do
            psi.ArgumentList.Add a

        // Workers exist for CPU-heavy work and start often: methods with loops are compiled
        // optimized at once (no tier-0 code with on-stack replacement), and no time goes to
        // instrumenting code for profile-guided recompilation.
        psi.Environment["DOTNET_TC_QuickJitForLoops"] <- "0"
        psi.Environment["DOTNET_TieredPGO"] <- "0"
        Process.Start psi
