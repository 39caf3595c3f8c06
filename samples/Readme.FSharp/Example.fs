/// Pyper's README example, in F# (shared by the compiled program and samples/readme.fsx): 20 items through an async stage (1 s, 20 workers),
/// a blocking stage (1 s, 20 workers) and a CPU-heavy stage (20 worker processes) in about 2 s.
module Readme.Example

open System
open System.Threading
open System.Threading.Tasks
open Pyper.FSharp

let getData (limit: int) = seq { for i in 0 .. limit - 1 -> i }

// Console.WriteLine rather than printfn: F# printf's first calls are costly, and here they would
// land on the 20 workers at once.
let step1 (data: int) =
    task {
        do! Task.Delay 1000
        Console.WriteLine("Finished async wait {0}", data)
        return data
    }

let step2 (data: int) =
    Thread.Sleep 1000
    Console.WriteLine("Finished sync wait {0}", data)
    data

let pipeline =
    Stage.branch getData
    >=> Stage.mapTask (step1, workers = 20)
    >=> Stage.map (step2, workers = 20)
    >=> Stage.map (Readme.Steps.step3, workers = 20, multiprocess = true)

/// Runs the example: prints the total and the elapsed time.
let run () =
    let clock = Diagnostics.Stopwatch.StartNew()
    let mutable total = 0

    for output in Pipeline.toSeq 20 pipeline do
        total <- total + output

    printfn "Total: %d" total
    printfn "Elapsed: %.2f s" clock.Elapsed.TotalSeconds
