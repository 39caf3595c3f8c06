/// The README example with its CPU stage distributed (`dotnet fsi build.fsx demo-distributed`):
/// `Readme.Distributed <nats-url> [<worker pid to kill after the first result>]`.
module Readme.Distributed

open System
open System.Diagnostics
open Pyper.FSharp
open Pyper.Distributed
open Readme.Example

[<EntryPoint>]
let main argv =
    let server = NatsServer(argv[0]).WithAckWait(TimeSpan.FromSeconds 2.0)
    let victim = Array.tryItem 1 argv |> Option.map int

    let pipeline =
        Stage.branch getData
        >=> Stage.mapTask (step1, workers = 20)
        >=> Stage.map (step2, workers = 20)
        >=> Stage.distributed (Readme.Steps.step3, server, workers = 20)

    let clock = Stopwatch.StartNew()
    let mutable total = 0
    let mutable first = true

    for output in Pipeline.toSeq 20 pipeline do
        if first then
            first <- false

            victim
            |> Option.iter (fun pid ->
                Process.GetProcessById(pid).Kill()
                printfn "Killed worker %d mid-run" pid)

        total <- total + output

    printfn "Total: %d" total
    printfn "Elapsed: %.2f s" clock.Elapsed.TotalSeconds
    0
