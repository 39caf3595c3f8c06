/// A parent process for tests that need one of their own. With no argument (the test "parent
/// killed: workers exit on their own") it starts a process stage whose workers block forever,
/// says "started", and waits to be killed. With `run` (the channel tests, under a given TMPDIR)
/// it runs a process stage over 1..10, prints the sum of the tripled items and exits. With
/// `state DIR` (the test "parent killed: workers dispose their state") it runs a process stage
/// with per-worker state over an endless source, says "started" once both worker processes have
/// served, and waits to be killed; each state, when disposed, leaves a file in DIR named after its
/// worker process.
module Pyper.ProcessProbe.Program

open System
open System.IO
open System.Threading
open System.Threading.Tasks
open Pyper.FSharp

let block (x: int) =
    Thread.Sleep Timeout.Infinite
    x

let triple (x: int) = x * 3

/// A worker process's state: the process's id.
let stateInit () = Environment.ProcessId

let stateCall (pid: int) (_: int) = pid

/// A dispose that takes a while (flushing, closing a model), then leaves its file.
let stateDispose (pid: int) =
    Thread.Sleep 800
    let dir = Environment.GetEnvironmentVariable "PYPER_PROBE_MARKERS"
    File.WriteAllText(Path.Combine(dir, string pid), "disposed")

[<EntryPoint>]
let main argv =
    match argv with
    | [| "run" |] ->
        AppContext.SetData("Pyper.WorkerKeepAliveMilliseconds", 0) // workers end with the run

        try
            let p = Stage.map (triple, workers = 2, multiprocess = true)
            printfn "%d" (Pipeline.toSeqFrom [ 1..10 ] p |> Seq.sum)
            0
        with e ->
            printfn "%s: %s" (e.GetType().Name) e.Message
            1
    | [| "state"; dir |] ->
        Environment.SetEnvironmentVariable("PYPER_PROBE_MARKERS", dir) // the worker processes inherit it

        let p =
            Stage.mapWithState (stateInit, stateCall, dispose = stateDispose, workers = 2, multiprocess = true)

        let served = Collections.Generic.HashSet<int>()

        for pid in Pipeline.toSeqFrom (Seq.initInfinite id) p do
            if served.Add pid && served.Count = 2 then
                printfn "started"
                Thread.Sleep Timeout.Infinite // the workers idle, their states alive, until the kill

        0
    | _ ->
        let p = Stage.map (block, workers = 2, multiprocess = true)
        let run = Task.Run(fun () -> Pipeline.toSeqFrom [ 1..10 ] p |> Seq.iter ignore)
        printfn "started"
        run.Wait()
        0
