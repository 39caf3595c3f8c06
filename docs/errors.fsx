(**
---
title: Errors and cancellation
category: Guide
categoryindex: 1
index: 4
---
*)
(*** hide ***)
#r "../src/Pyper.Core/bin/Release/net10.0/Pyper.Core.dll"
#r "../src/Pyper.Core/bin/Release/net10.0/System.Threading.RateLimiting.dll"
(**
# Errors and cancellation

The first failure wins: it stops the run (every worker of every stage) and surfaces from the
consumer's loop as the **original exception**, not wrapped. `PipelineError.stage` names the stage it
came from; failures that happened while the run was stopping are listed by `PipelineError.others`.
*)
open System
open System.Threading
open Pyper.FSharp

let failing =
    Stage.map ((fun (x: int) -> if x = 3 then invalidOp "no threes" else x), name = "check")

let message =
    try
        Pipeline.toSeqFrom [ 1..10 ] failing |> Seq.iter ignore
        "no failure"
    with :? InvalidOperationException as e ->
        let stage = PipelineError.stage e |> Option.defaultValue "?"
        $"{e.Message} (stage: {stage})"
(*** include-value: message ***)
(**
## Cancellation

Pass a token to an async run (`WithCancellation(token)` in C#, or the enumerator's token), or use
`Pipeline.toBlockingSeq token`. Cancelling it stops every worker; a function that takes a
`CancellationToken` gets the run's token, which is also cancelled when the run fails or the
consumer stops early.
*)
let cancelled =
    use cts = new CancellationTokenSource()
    let results = Stage.map (fun (x: int) -> x) |> Pipeline.streamFromSeq (Seq.initInfinite id)

    try
        let mutable n = 0

        for x in Pipeline.toBlockingSeq cts.Token results do
            n <- n + 1
            if n = 100 then cts.Cancel()

        "never"
    with :? OperationCanceledException ->
        "stopped"
(*** include-value: cancelled ***)
(**
Leaving a loop early (`break`, `Seq.take`, an exception in the loop's body) also stops the run:
the enumerator's `Dispose` waits until every worker has ended.
*)
