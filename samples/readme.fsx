// Pyper's README example as an F# script. Build first (dotnet fsi build.fsx build), then:
//   dotnet fsi samples/readme.fsx
#r "../src/Pyper.Core/bin/Release/net10.0/Pyper.Core.dll"

open System.Diagnostics
open System.Threading
open System.Threading.Tasks
open Pyper
open Pyper.FSharp

let getData (limit: int) = seq { for i in 0 .. limit - 1 -> i }

let step1 (data: int) =
    task {
        do! Task.Delay 1000
        printfn "Finished async wait %d" data
        return data
    }

let step2 (data: int) =
    Thread.Sleep 1000
    printfn "Finished sync wait %d" data
    data

/// Heavy computation whose result is used, so the JIT cannot drop the loop.
let step3 (data: int) =
    let mutable acc = 0L

    for i in 0L .. 9_999_999L do
        acc <- acc + i * i

    printfn "Finished heavy computation %d (checksum %d)" data (acc % 1000L)
    data

let pipeline =
    Stage.branch getData
    >=> Stage.mapTask (step1, workers = 20)
    >=> Stage.map (step2, workers = 20)
    >=> Stage.map (step3, workers = 20)

let clock = Stopwatch.StartNew()
let total = Pipeline.toSeq 20 pipeline |> Seq.sum
printfn "Total: %d" total
printfn "Elapsed: %.2f s" clock.Elapsed.TotalSeconds
