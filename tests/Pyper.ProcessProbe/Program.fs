/// A parent process for tests that need one of their own. With no argument (the test "parent
/// killed: workers exit on their own") it starts a process stage whose workers block forever,
/// says "started", and waits to be killed. With `run` (the channel tests, under a given TMPDIR)
/// it runs a process stage over 1..10, prints the sum of the tripled items and exits.
module Pyper.ProcessProbe.Program

open System
open System.Threading
open System.Threading.Tasks
open Pyper.FSharp

let block (x: int) =
    Thread.Sleep Timeout.Infinite
    x

let triple (x: int) = x * 3

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
    | _ ->
        let p = Stage.map (block, workers = 2, multiprocess = true)
        let run = Task.Run(fun () -> Pipeline.toSeqFrom [ 1..10 ] p |> Seq.iter ignore)
        printfn "started"
        run.Wait()
        0
