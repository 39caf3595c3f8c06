(**
---
title: Observability
category: Guide
categoryindex: 1
index: 5
---
*)
(*** hide ***)
#r "../src/Pyper.Core/bin/Release/net10.0/Pyper.Core.dll"
#r "../src/Pyper.Core/bin/Release/net10.0/System.Threading.RateLimiting.dll"
(**
# Observability

Runs report **metrics** and **traces** through .NET's own `System.Diagnostics` (no package
beyond the BCL): one `Meter` and one `ActivitySource`, both named `Pyper`
(`Telemetry.MeterName`, `Telemetry.ActivitySourceName`). Nothing is measured while nobody
listens; when someone does, measurements are taken per batch of items, not per item.

## Metrics

| instrument | kind | unit | meaning |
|---|---|---|---|
| `pyper.stage.items.in` | counter | `{item}` | items a stage's workers took from its input |
| `pyper.stage.items.out` | counter | `{item}` | results a stage handed on |
| `pyper.stage.failures` | counter | `{failure}` | failures of a stage's workers |
| `pyper.stage.batch.duration` | histogram | `s` | time a worker spent calling the function on one batch |
| `pyper.stage.workers.busy` | gauge | `{worker}` | workers inside the function now |
| `pyper.stage.queue.length` | gauge | `{item}` | results waiting in the stage's output queue |

Every measurement carries two tags: `pyper.pipeline` (the stages' names joined by ` >=> `) and
`pyper.stage` (the stage's name: give stages a `name` to read them easily). The gauges report
the stages of runs in progress only: a run shows its stages when it starts and removes them when
it has finished.

Watch a running program with `dotnet-counters` (a local tool of this repository:
`dotnet tool restore`):

```sh
dotnet dotnet-counters ps                                           # find the process
dotnet dotnet-counters monitor --counters Pyper -p <pid>            # or -n <process name>
```

For an F# script, monitor the process of `fsi.dll`, not the `dotnet fsi` launcher.

In a program, a `MeterListener` (or OpenTelemetry's `AddMeter("Pyper")`) sees the same numbers:
*)
open System.Collections.Generic
open System.Diagnostics.Metrics
open Pyper
open Pyper.FSharp

let totals = Dictionary<string, int64>()

let counted =
    use listener = new MeterListener()

    listener.InstrumentPublished <-
        fun instrument l ->
            if instrument.Meter.Name = Telemetry.MeterName then
                l.EnableMeasurementEvents instrument

    listener.SetMeasurementEventCallback<int64>(fun instrument value tags _ ->
        let mutable stage = ""

        for t in tags do
            if t.Key = "pyper.stage" then stage <- string t.Value

        let key = $"{stage} {instrument.Name}"
        lock totals (fun () -> totals[key] <- (match totals.TryGetValue key with | true, n -> n | _ -> 0L) + value))

    listener.Start()

    Stage.map ((fun (x: int) -> x * 2), workers = 2, name = "double")
    >=> Stage.branch ((fun x -> [ x; x + 1 ]), name = "pairs")
    |> Pipeline.toSeqFrom [ 1..1000 ]
    |> Seq.length
    |> ignore

    totals |> Seq.map (fun kv -> kv.Key, kv.Value) |> Seq.sort |> List.ofSeq
(*** include-value: counted ***)
(**
## Traces

With an `ActivityListener` (or OpenTelemetry's `AddSource("Pyper")`), each run is an activity
`pyper.run`, a child of the caller's current activity, so pipelines show inside the caller's
trace; each stage is a child `pyper.stage` (its display name is the stage's name), and, when the
listener samples them, each batch of items is a `pyper.batch` under its stage (tag
`pyper.batch.size`). A failed run's and stage's activities have status `Error` with the failure's
message. While a stage's function runs, `Activity.Current` is its batch's (or stage's) activity,
so the function's own activities nest under it. The caller's `Activity.Current` is never changed.

`samples/Telemetry.OpenTelemetry` wires the OpenTelemetry SDK with its console exporter:

```fsharp
use tracer =
    Sdk.CreateTracerProviderBuilder().AddSource(Telemetry.ActivitySourceName).AddConsoleExporter().Build()
use meters =
    Sdk.CreateMeterProviderBuilder().AddMeter(Telemetry.MeterName).AddConsoleExporter().Build()
```

## Progress in the terminal

The `Pyper.Progress` package draws a live table of every stage of the runs in progress (items
in and out, rate, queue length, busy workers, errors), driven by the same metrics, with
Spectre.Console. One call turns it on; disposing it stops it:

```fsharp
use _ = PipelineProgress.Show()            // F#, also in FSI (#r "nuget: Pyper.Progress")
```

```csharp
using var progress = PipelineProgress.Show();  // C#
```

While it is on, what the program writes to the console shows above the table and is written out
in full when it stops. When the terminal is not interactive (output redirected, CI) it shows
nothing: `dotnet fsi build.fsx demo` uses it in a terminal and stays quiet in a log.
*)
