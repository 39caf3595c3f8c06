/// Per-worker state (issue #17) on the distributed executor: each test starts its own nats-server
/// and worker hosts (see `DistributedTests.withCluster`), kills them at the end and checks that
/// nothing of the run is left on the server.
module Pyper.Tests.DistributedStateTests

open System
open System.IO
open Expecto
open Pyper
open Pyper.FSharp
open Pyper.Distributed
open Pyper.Tests.Helpers
open Pyper.Tests.DistributedTests

/// One serving slot's state: the worker process it was made in, its number among the states made
/// there, the folder its items named and the calls it served.
[<AllowNullLiteral>]
type SlotProbe(pid: int, number: int) =
    member _.Pid = pid
    member _.Number = number
    member val Folder: string = null with get, set
    member val Calls = 0 with get, set

/// Functions that distributed workers run: module functions of this compiled assembly. Counters
/// live in the worker process's AppDomain data.
module StateRemote =
    let init () =
        let key = "pyper-test-distributed-state-inits"

        let n =
            lock AppDomain.CurrentDomain (fun () ->
                let n =
                    match AppDomain.CurrentDomain.GetData key with
                    | :? int as n -> n + 1
                    | _ -> 1

                AppDomain.CurrentDomain.SetData(key, box n)
                n)

        SlotProbe(Environment.ProcessId, n)

    /// Keeps the item's folder for `dispose`; the result says which state served the item.
    let tag (p: SlotProbe) (folder: string, x: int) =
        p.Folder <- folder
        p.Calls <- p.Calls + 1
        p.Pid, p.Number, x * 2

    /// Writes the calls served to a new file named after the state, one per dispose (whole).
    let dispose (p: SlotProbe) =
        if not (isNull p.Folder) then
            writeWhole p.Folder $"{p.Pid}-{p.Number}.{Guid.NewGuid():N}" (string p.Calls)

    let failingInit () : SlotProbe = invalidOp "no model here"

    let tagUnlessSeven (p: SlotProbe) (folder: string, x: int) =
        if x = 7 then invalidOp "seven" else tag p (folder, x)

    let plain (_: SlotProbe) (x: int) = x

/// The disposals written to `folder` so far: each state's name and the calls it served, once per
/// dispose.
let private disposals (folder: DirectoryInfo) =
    folder.GetFiles()
    |> Array.map (fun i -> i.Name.Substring(0, i.Name.IndexOf '.'), int (File.ReadAllText i.FullName))
    |> Array.groupBy fst
    |> Array.map (fun (state, ds) -> state, ds |> Array.map snd |> List.ofArray)
    |> List.ofArray
    |> List.sortBy fst

let private available =
    [
        distributedTest "distributedWithState: init once per serving slot, f with its state, dispose once each" 2
        <| fun f _ ->
            let folder = Directory.CreateTempSubdirectory "pyper-diststate-"

            try
                let items = [ 1..200 ] |> List.map (fun x -> folder.FullName, x)

                let p =
                    Stage.distributedWithState (
                        StateRemote.init,
                        StateRemote.tag,
                        f.Server,
                        dispose = StateRemote.dispose,
                        workers = 4
                    )

                let results = collect (Pipeline.toSeqFrom items p)
                Expect.equal (results |> List.map (fun (_, _, y) -> y) |> sorted) [ 2..2..400 ] "results"

                let states =
                    results |> List.map (fun (pid, n, _) -> $"{pid}-{n}") |> List.distinct |> sorted

                // Two worker hosts of two slots each, serving each of the stage's 4 parent loops
                // (each announces the stage): at most 2 x 2 x 4 states.
                Expect.isLessThanOrEqual states.Length 16 "inits bounded by the workers' slots per announcement"

                // Each slot disposes its state when it sees the run's queue gone (after the run).
                let disposed () = disposals folder |> List.map fst

                if not (Threading.SpinWait.SpinUntil((fun () -> disposed () = states), hangGuard)) then
                    failtestf
                        "hang: not every state disposed within %O: states %A, disposed %A"
                        hangGuard
                        states
                        (disposed ())

                let calls = disposals folder |> List.map snd
                Expect.all calls (fun c -> c.Length = 1) "each state disposed exactly once"
                Expect.equal (calls |> List.sumBy List.head) 200 "the states served every item between them"
            finally
                folder.Delete true

        distributedTest "distributedWithState: a run that fails in f still disposes each state once" 1
        <| fun f _ ->
            let folder = Directory.CreateTempSubdirectory "pyper-diststate-"

            try
                let items = [ 1..40 ] |> List.map (fun x -> folder.FullName, x)

                let p =
                    Stage.distributedWithState (
                        StateRemote.init,
                        StateRemote.tagUnlessSeven,
                        f.Server,
                        dispose = StateRemote.dispose,
                        workers = 2
                    )

                match catchExn (fun () -> collect (Pipeline.toSeqFrom items p) |> ignore) with
                | :? InvalidOperationException as e -> Expect.stringContains e.Message "seven" "f's failure"
                | e -> failtestf "expected f's InvalidOperationException, got %O" e

                // A slot whose first batch held 7 tagged none of its items: it leaves no file. The
                // others: one file each, once the slots see the run gone.
                if not (Threading.SpinWait.SpinUntil((fun () -> not (List.isEmpty (disposals folder))), hangGuard)) then
                    failtest "hang: no state disposed after the failed run"

                let each = disposals folder
                Expect.all each (fun (_, c) -> c.Length = 1) $"each disposed once: {each}"

                // One worker host of two slots, serving each of the stage's 2 parent loops (each
                // announces the stage).
                Expect.isLessThanOrEqual each.Length 4 "at most one state per slot and announcement"
            finally
                folder.Delete true

        distributedTest "distributedWithState: a failing init fails the run with its message, whatever the policy" 1
        <| fun f _ ->
            for onError in [ None; Some OnError.Skip ] do
                let p =
                    Stage.distributedWithState (
                        StateRemote.failingInit,
                        StateRemote.plain,
                        f.Server,
                        ?onError = onError
                    )

                match catchExn (fun () -> collect (Pipeline.toSeqFrom [ 1..10 ] p) |> ignore) with
                | :? InvalidOperationException as e -> Expect.stringContains e.Message "no model here" "init's message"
                | e -> failtestf "expected init's InvalidOperationException, got %O" e

        testCase "distributedWithState refuses a capturing init or dispose when built, naming it" (fun () ->
            let server = NatsServer "nats://127.0.0.1:1"
            let pid = Environment.ProcessId

            let refused (paramName: string) (build: unit -> obj) =
                match catchExn (build >> ignore) with
                | :? ArgumentException as a ->
                    Expect.equal a.ParamName paramName "names the function"
                    Expect.stringContains a.Message "Stage 's' (map)" "names the stage"
                    Expect.stringContains a.Message paramName "says which function"
                | e -> failtestf "expected an ArgumentException, got %O" e

            refused "init" (fun () ->
                box (
                    Stage.distributedWithState ((fun () -> SlotProbe(pid, 0)), StateRemote.plain, server, name = "s")
                ))

            refused "dispose" (fun () ->
                box (
                    Stage.distributedWithState (
                        StateRemote.init,
                        StateRemote.plain,
                        server,
                        dispose =
                            (fun (p: SlotProbe) ->
                                if p.Pid = pid then
                                    ()),
                        name = "s"
                    )
                )))

        distributedTest "C# facade: DistributedStage.MapWithState" 1 (fun f _ ->
            withinGuard "the C# state stage" (fun () ->
                task { do! Pyper.CSharp.Tests.DistributedFacadeTests.CheckState f.Server }))
    ]

let tests =
    match natsServerPath with
    | Some _ -> testSequenced (testList "distributed state" available)
    | None -> testList "distributed state" []
