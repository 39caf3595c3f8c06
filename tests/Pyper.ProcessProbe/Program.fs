/// A parent process for the test "parent killed: workers exit on their own": it starts a
/// process stage whose workers block forever, says "started", and waits to be killed.
module Pyper.ProcessProbe.Program

open System.Threading
open System.Threading.Tasks
open Pyper.FSharp

let block (x: int) =
    Thread.Sleep Timeout.Infinite
    x

[<EntryPoint>]
let main _ =
    let p = Stage.map (block, workers = 2, multiprocess = true)
    let run = Task.Run(fun () -> Pipeline.toSeqFrom [ 1..10 ] p |> Seq.iter ignore)
    printfn "started"
    run.Wait()
    0
