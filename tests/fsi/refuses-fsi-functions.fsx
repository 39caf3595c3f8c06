// Run by `dotnet fsi build.fsx test`: a function defined in an FSI session cannot run in worker
// processes, and the stage says so when it is built (not on the first item).
#r "../../src/Pyper.Core/bin/Release/net10.0/Pyper.Core.dll"
#r "../../src/Pyper.Core/bin/Release/net10.0/System.Threading.RateLimiting.dll"

open System
open Pyper.FSharp

let double (x: int) = x * 2 + Environment.ProcessorCount * 0

try
    Stage.map (double, workers = 2, multiprocess = true) |> ignore
    printfn "FAILED: the FSI-defined function was accepted"
    exit 1
with :? ArgumentException as e when e.Message.Contains "FSI session" && e.ParamName = "f" ->
    printfn "refused: %s" e.Message
    exit 0
