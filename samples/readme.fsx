// Pyper's README example as an F# script. Build first (dotnet fsi build.fsx build), then:
//   dotnet fsi samples/readme.fsx
#r "../src/Pyper.Core/bin/Release/net10.0/Pyper.Core.dll"
// The CPU-heavy step runs in worker processes, which cannot load code defined in FSI: it comes
// from a compiled assembly.
#r "Readme.Steps/bin/Release/net10.0/Readme.Steps.dll"

open System
open System.Diagnostics
open System.Threading
open System.Threading.Tasks
open Pyper
open Pyper.FSharp

let getData (limit: int) = seq { for i in 0 .. limit - 1 -> i }

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

let clock = Stopwatch.StartNew()
let total = Pipeline.toSeq 20 pipeline |> Seq.sum
printfn "Total: %d" total
printfn "Elapsed: %.2f s" clock.Elapsed.TotalSeconds
