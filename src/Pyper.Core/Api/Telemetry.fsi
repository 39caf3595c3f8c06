namespace Pyper

/// The names under which runs report metrics and activities (`System.Diagnostics`): one `Meter`
/// and one `ActivitySource`, both named "Pyper". Listen to them with `dotnet-counters monitor
/// --counters Pyper`, a `MeterListener`/`ActivityListener`, or OpenTelemetry's
/// `AddMeter(Telemetry.MeterName)` and `AddSource(Telemetry.ActivitySourceName)`.
///
/// Instruments, tagged with `pyper.pipeline` (the stages' names joined by " >=> ") and
/// `pyper.stage` (the stage's name): `pyper.stage.items.in`, `pyper.stage.items.out`,
/// `pyper.stage.failures` (counters), `pyper.stage.batch.duration` (histogram, seconds),
/// `pyper.stage.workers.busy` and `pyper.stage.queue.length` (gauges, while the run is in
/// progress). Activities: `pyper.run` (a child of the caller's current activity), `pyper.stage`
/// per stage and, when the listener samples them, `pyper.batch` per batch of items.
/// Nothing is measured while nobody listens.
[<RequireQualifiedAccess>]
module Telemetry =
    /// The name of Pyper's `Meter`: "Pyper".
    [<Literal>]
    val MeterName: string = "Pyper"

    /// The name of Pyper's `ActivitySource`: "Pyper".
    [<Literal>]
    val ActivitySourceName: string = "Pyper"
