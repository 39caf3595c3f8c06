/// Pyper's README example, in F#: 20 items through an async stage (1 s, 20 workers),
/// a blocking stage (1 s, 20 workers) and a CPU-heavy stage (20 workers) in about 2 s.
module Readme.Program

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
        printfn "Finished async wait %d" data
        return data
    }

let step2 (data: int) =
    Thread.Sleep 1000
    printfn "Finished sync wait %d" data
    data

/// Heavy computation. Unlike Python's `_ = i*i`, the result is used, so the JIT cannot drop the loop.
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

[<EntryPoint>]
let main _ =
    let clock = Stopwatch.StartNew()
    let mutable total = 0

    for output in Pipeline.toSeq 20 pipeline do
        total <- total + output

    printfn "Total: %d" total
    printfn "Elapsed: %.2f s" clock.Elapsed.TotalSeconds
    0
