/// Pyper runs in OpenTelemetry: the SDK listens to Pyper's ActivitySource and Meter (both named
/// "Pyper") and prints the spans and metrics with its console exporter. A run started inside the
/// caller's span ("import") is its child, with a child span per stage.
/// `dotnet run --project samples/Telemetry.OpenTelemetry -c Release`
module Telemetry.Program

open System.Diagnostics
open System.Threading.Tasks
open OpenTelemetry
open OpenTelemetry.Metrics
open OpenTelemetry.Trace
open Pyper
open Pyper.FSharp

let app = new ActivitySource("Telemetry.Sample")

[<EntryPoint>]
let main _ =
    use tracer =
        Sdk
            .CreateTracerProviderBuilder()
            .AddSource("Telemetry.Sample", Telemetry.ActivitySourceName)
            .AddConsoleExporter()
            .Build()

    use meters =
        Sdk.CreateMeterProviderBuilder().AddMeter(Telemetry.MeterName).AddConsoleExporter().Build()

    let pipeline =
        Stage.mapTask (
            (fun (x: int) ->
                task {
                    do! Task.Delay 5
                    return x * 2
                }),
            workers = 4,
            name = "fetch"
        )
        >=> Stage.batch (10, name = "group")
        >=> Stage.map (Array.sum, name = "sum")

    let total =
        use _ = app.StartActivity "import"
        Pipeline.toSeqFrom [ 1..100 ] pipeline |> Seq.sum

    printfn "Total: %d" total
    meters.ForceFlush() |> ignore
    0
