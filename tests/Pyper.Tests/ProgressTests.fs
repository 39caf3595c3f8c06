/// The live progress display (Pyper.Progress), in a real terminal (tmux) and with redirected output.
module Pyper.Tests.ProgressTests

open System
open System.Diagnostics
open System.IO
open System.Reflection
open System.Threading
open Expecto
open Pyper
open Pyper.FSharp
open Pyper.Tests.Helpers

/// What `--progress-demo` runs: two named stages under the display, then "progress demo done".
let demo () =
    let p =
        Stage.map (
            (fun (x: int) ->
                Thread.Sleep 2
                x),
            workers = 4,
            name = "progress-map"
        )
        >=> Stage.branch ((fun x -> [ x; -x ]), name = "progress-branch")

    let shown =
        using (PipelineProgress.Show 50) (fun progress ->
            Pipeline.toSeqFrom [ 1..400 ] p |> Seq.length |> ignore
            progress.IsShown)

    printfn "progress demo done (shown: %b)" shown
    0

/// A generous bound for starting a .NET process on a loaded machine.
let private processGuard = TimeSpan.FromMinutes 2.0

let private self = Assembly.GetExecutingAssembly().Location

let private runIn (exe: string) (args: string list) =
    let psi =
        ProcessStartInfo(exe, RedirectStandardOutput = true, RedirectStandardError = true)

    args |> List.iter psi.ArgumentList.Add
    use p = Process.Start psi
    let out = p.StandardOutput.ReadToEndAsync()
    let err = p.StandardError.ReadToEndAsync()

    if not (p.WaitForExit processGuard) then
        p.Kill true
        failtestf "%s %A did not finish within %O" exe args processGuard

    p.ExitCode, out.Result + err.Result

let private tmuxPath () =
    (Environment.GetEnvironmentVariable "PATH").Split(':')
    |> Array.map (fun d -> Path.Combine(d, "tmux"))
    |> Array.tryFind File.Exists

let tests =
    testList
        "progress"
        [
            testCase "with redirected output the display stays quiet" (fun () ->
                let code, out = runIn "dotnet" [ self; "--progress-demo" ]
                Expect.equal code 0 $"the demo ran: {out}"
                Expect.stringContains out "progress demo done (shown: false)" "the display knew it was not shown"
                Expect.isFalse (out.Contains "progress-map") "no stage line was drawn")

            testCase "in a terminal (tmux) the display shows a line per stage with its counts" (fun () ->
                match tmuxPath () with
                | None -> skiptest "tmux is not installed (apt-get install -y tmux): the terminal test is skipped"
                | Some tmux ->
                    // A tmux server of our own (its own socket), stopped at the end.
                    let socket = $"pyper-progress-{Environment.ProcessId}"
                    let tmuxDo args = runIn tmux ([ "-L"; socket ] @ args)

                    try
                        let command = $"dotnet '{self}' --progress-demo; echo __finished__; sleep 600"

                        let code, out =
                            tmuxDo [ "new-session"; "-d"; "-s"; "t"; "-x"; "150"; "-y"; "40"; command ]

                        Expect.equal code 0 $"tmux started: {out}"
                        let mutable screen = ""

                        let finished =
                            SpinWait.SpinUntil(
                                (fun () ->
                                    screen <- snd (tmuxDo [ "capture-pane"; "-p"; "-t"; "t" ])
                                    screen.Contains "__finished__"),
                                processGuard
                            )

                        Expect.isTrue finished $"the demo finished in the terminal; the screen:\n{screen}"
                        Expect.stringContains screen "progress demo done (shown: true)" "the display was shown"
                        let lines = screen.Split '\n'

                        let line (stage: string) =
                            lines
                            |> Array.tryFindBack (fun l -> l.Contains stage)
                            |> Option.defaultWith (fun () ->
                                failtestf "no line for %s on the screen:\n%s" stage screen)

                        let numbers (l: string) =
                            l.Split([| '│'; '|'; ' ' |], StringSplitOptions.RemoveEmptyEntries)
                            |> Array.choose (fun w ->
                                match Int64.TryParse w with
                                | true, n -> Some n
                                | _ -> None)
                            |> List.ofArray

                        // Columns: In, Out, Rate/s, Queue, Busy, Errors.
                        match numbers (line "progress-map") with
                        | i :: o :: _ -> Expect.equal (i, o) (400L, 400L) $"the map stage took and gave 400:\n{screen}"
                        | _ -> failtestf "the map stage's line has no counts:\n%s" screen

                        match numbers (line "progress-branch") with
                        | i :: o :: _ ->
                            Expect.equal (i, o) (400L, 800L) $"the branch stage took 400 and gave 800:\n{screen}"
                        | _ -> failtestf "the branch stage's line has no counts:\n%s" screen
                    finally
                        tmuxDo [ "kill-server" ] |> ignore)
        ]
