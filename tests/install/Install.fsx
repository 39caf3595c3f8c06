/// The install test, run by `dotnet fsi build.fsx test` (loaded by build.fsx): packs Pyper,
/// Pyper.CSharp and Pyper.Progress into a temporary folder feed and uses them as a user would, in a temporary folder
/// outside the repository: a C# and an F# console app (`dotnet new console`, `dotnet add
/// package`) run the README example with its worker-process stage (`dotnet run`, and a
/// framework-dependent `dotnet publish` for C#), and an F# script takes Pyper with
/// `#r "nuget: Pyper"` and runs a process stage. Each of the four is one passed or failed check.
///
/// Offline and fresh: the packages come from the folder feed, this machine's global packages
/// folder (as a local source) and the source build.fsx found (PYPER_NUGET_SOURCE, given on the
/// command line, never written to a file), into a temporary NUGET_PACKAGES folder, so no stale
/// copy of Pyper from the machine's cache can be used; the version carries a unique suffix too.
module Install

open System
open System.IO

/// Runs a program in a folder with extra environment variables: exit code and output.
type Capture = string -> string -> string list -> (string * string) list -> int * string

exception private StepFailed of string

/// The install checks as (passed, failed) counts.
let run (root: string) (verbose: bool) (captureIn: Capture) : (int * int) list =
    let work = Path.Combine(Path.GetTempPath(), $"pyper-install-{Guid.NewGuid():N}")
    let feed = Path.Combine(work, "feed")
    let packages = Path.Combine(work, "packages")
    let cs = Path.Combine(work, "InstallCs")
    let fs = Path.Combine(work, "InstallFs")
    let env = [ ("NUGET_PACKAGES", packages) ]

    /// Runs one command; its output, or StepFailed with what it printed.
    let step (dir: string) (arguments: string list) =
        let code, out = captureIn dir "dotnet" arguments env

        if verbose then
            printf "%s" out

        if code <> 0 then
            let command = String.concat " " arguments
            raise (StepFailed $"'dotnet {command}' failed (exit code {code}):\n{out}")

        out

    /// This machine's global packages folder (not the temporary one), used as a local source.
    let globalPackages () =
        let code, out =
            captureIn root "dotnet" [ "nuget"; "locals"; "global-packages"; "--list" ] []

        if code <> 0 then
            raise (StepFailed $"'dotnet nuget locals global-packages --list' failed:\n{out}")

        out.Substring(out.IndexOf(':') + 1).Trim()

    /// Pack, two console projects, one restore and one build for both; the Pyper version used.
    let setUp () =
        let stamp = DateTime.UtcNow.ToString "yyyyMMddHHmmss"

        for project in [ "src/Pyper.Core"; "src/Pyper.CSharp"; "src/Pyper.Progress" ] do
            step
                root
                [
                    "pack"
                    project
                    "-c"
                    "Release"
                    "--no-build"
                    "-o"
                    feed
                    $"-p:VersionSuffix=install.{stamp}"
                ]
            |> ignore

        let version =
            Directory.GetFiles(feed, "Pyper.*.nupkg")
            |> Array.map Path.GetFileName
            |> Array.find (fun f -> not (f.StartsWith "Pyper.CSharp." || f.StartsWith "Pyper.Progress."))
            |> fun f -> f.Substring("Pyper.".Length, f.Length - "Pyper.".Length - ".nupkg".Length)

        let create (lang: string) (name: string) (package: string) =
            step
                work
                [
                    "new"
                    "console"
                    "-lang"
                    lang
                    "-n"
                    name
                    "-o"
                    name
                    "--no-restore"
                    "--no-update-check"
                ]
            |> ignore

            step work [ "add"; name; "package"; package; "--version"; version; "--no-restore" ]
            |> ignore

        create "C#" "InstallCs" "Pyper.CSharp"
        File.Copy(Path.Combine(root, "samples", "Readme.CSharp", "Program.cs"), Path.Combine(cs, "Program.cs"), true)
        create "F#" "InstallFs" "Pyper"
        // The compiled sample turns the progress display on (quiet here: the output is captured).
        step work [ "add"; "InstallFs"; "package"; "Pyper.Progress"; "--version"; version; "--no-restore" ]
        |> ignore

        // The README example's F# sources, as the compiled sample has them.
        File.Copy(Path.Combine(root, "samples", "Readme.Steps", "Steps.fs"), Path.Combine(fs, "Steps.fs"))
        File.Copy(Path.Combine(root, "samples", "Readme.FSharp", "Example.fs"), Path.Combine(fs, "Example.fs"))
        File.Copy(Path.Combine(root, "samples", "Readme.FSharp", "Program.fs"), Path.Combine(fs, "Program.fs"), true)
        let fsproj = Path.Combine(fs, "InstallFs.fsproj")

        File.WriteAllText(
            fsproj,
            File
                .ReadAllText(fsproj)
                .Replace(
                    """<Compile Include="Program.fs" />""",
                    """<Compile Include="Steps.fs" /><Compile Include="Example.fs" /><Compile Include="Program.fs" />"""
                )
        )

        step work [ "new"; "sln"; "-n"; "Install"; "--no-update-check" ] |> ignore
        let sln = Directory.GetFiles(work, "Install.sln*") |> Array.exactlyOne
        step work [ "sln"; sln; "add"; cs; fs ] |> ignore

        let sources =
            [
                feed
                globalPackages ()
                Environment.GetEnvironmentVariable "PYPER_NUGET_SOURCE"
            ]
            |> List.filter (String.IsNullOrEmpty >> not)
            |> List.collect (fun s -> [ "--source"; s ])

        step work ([ "restore"; sln ] @ sources) |> ignore

        step work [ "build"; sln; "-c"; "Release"; "--no-restore"; "--nologo"; "-v"; "minimal" ]
        |> ignore

        version, sources

    /// One check: passed when its commands succeed and the last prints "Total: 190".
    let check (name: string) (body: unit -> string) =
        let ok, report =
            try
                let out = body ()

                if out.Contains "Total: 190" then
                    true, "passed (Total: 190)"
                else
                    false, $"FAILED (no \"Total: 190\"), printed:\n{out}"
            with StepFailed message ->
                false, $"FAILED: {message}"

        printfn "install: %s: %s" name report
        if ok then 1, 0 else 0, 1

    let fsDll = Path.Combine(fs, "bin", "Release", "net10.0", "InstallFs.dll")

    /// A script that takes Pyper from the package and runs a process stage; the CPU step comes from
    /// the F# app's compiled assembly (worker processes cannot run code made in FSI).
    let script (version: string) (sources: string list) =
        let feeds =
            sources
            |> List.filter (fun s -> s <> "--source" && Directory.Exists s)
            |> List.map (fun s -> $"#i \"nuget: {s}\"")
            |> String.concat "\n"

        $"""{feeds}
#r "nuget: Pyper, {version}"
#r "{fsDll}"

open System.IO
open Pyper.FSharp

// Pyper.Core.dll is the package's (lib/net10.0), with no worker host beside it: the host must be
// found in the package's tools folder.
let core = typeof<Pyper.RemoteStageException>.Assembly.Location

if not (core.StartsWith(System.Environment.GetEnvironmentVariable "NUGET_PACKAGES")) then
    failwithf "Pyper.Core.dll was loaded from %%s, not from the package" core

if File.Exists(Path.Combine(Path.GetDirectoryName core, "Pyper.Worker.dll")) then
    failwith "a worker host beside the package's Pyper.Core.dll: the test would not test the package layout"

let pipeline =
    Stage.branch (fun (n: int) -> seq {{ 0 .. n - 1 }})
    >=> Stage.map (Readme.Steps.step3, workers = 4, multiprocess = true)

printfn "Total: %%d" (Pipeline.toSeq 20 pipeline |> Seq.sum)
"""

    try
        Directory.CreateDirectory work |> ignore

        match
            (try
                Ok(setUp ())
             with StepFailed message ->
                 Error message)
        with
        | Error message ->
            printfn "install: setting up (pack, dotnet new, restore, build) FAILED: %s" message
            List.replicate 4 (0, 1)
        | Ok(version, sources) ->
            [
                check "C# console app, dotnet run" (fun () ->
                    step work [ "run"; "--project"; cs; "-c"; "Release"; "--no-build" ])
                check "C# console app, framework-dependent dotnet publish" (fun () ->
                    let output = Path.Combine(work, "published")

                    step work [ "publish"; cs; "-c"; "Release"; "--no-restore"; "-o"; output ]
                    |> ignore

                    step work [ Path.Combine(output, "InstallCs.dll") ])
                check "F# console app" (fun () -> step work [ fsDll ])
                check "F# script, #r \"nuget: Pyper\"" (fun () ->
                    let path = Path.Combine(work, "check.fsx")
                    File.WriteAllText(path, script version sources)
                    step work [ "fsi"; path ])
            ]
    finally
        try
            Directory.Delete(work, true)
        with _ ->
            ()
