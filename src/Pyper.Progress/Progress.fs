namespace Pyper

open System
open System.Collections.Generic
open System.Diagnostics
open System.Diagnostics.Metrics
open System.Threading
open Spectre.Console

/// What the display knows about one stage of one pipeline.
[<Sealed; AllowNullLiteral>]
type internal StageRow(pipeline: string, stage: string) =
    member _.Pipeline = pipeline
    member _.Stage = stage
    member val In = 0L with get, set
    member val Out = 0L with get, set
    member val Failures = 0L with get, set
    member val Busy = 0 with get, set
    member val Queue = 0 with get, set
    /// Items handed on per second, over the last refresh.
    member val Rate = 0.0 with get, set
    member val LastOut = 0L with get, set
    /// True when the gauges reported the stage at the last sample (its run is in progress).
    member val Live = false with get, set
    /// When the stage was first seen and when its output last grew (seconds on the display's clock).
    member val FirstSeen = -1.0 with get, set
    member val LastGrew = 0.0 with get, set

/// The rows, fed by a MeterListener on Pyper's meter.
[<Sealed>]
type internal ProgressModel() =
    let sync = obj ()
    let rows = List<StageRow>()
    let index = Dictionary<struct (string * string), StageRow>()
    let listener = new MeterListener()

    static let key (tags: ReadOnlySpan<KeyValuePair<string, obj>>) =
        let mutable pipeline = ""
        let mutable stage = ""

        for t in tags do
            if t.Key = "pyper.pipeline" then
                pipeline <- string t.Value
            elif t.Key = "pyper.stage" then
                stage <- string t.Value

        struct (pipeline, stage)

    /// The row of a (pipeline, stage) key; under the lock.
    let row (struct (pipeline, stage) as key) =

        match index.TryGetValue key with
        | true, r -> r
        | _ ->
            let r = StageRow(pipeline, stage)
            index[key] <- r
            rows.Add r
            r

    let counted (instrument: Instrument) (v: int64) k =
        lock sync (fun () ->
            let r = row k

            match instrument.Name with
            | "pyper.stage.items.in" -> r.In <- r.In + v
            | "pyper.stage.items.out" -> r.Out <- r.Out + v
            | "pyper.stage.failures" -> r.Failures <- r.Failures + v
            | _ -> ())

    let gauged (instrument: Instrument) (v: int) k =
        lock sync (fun () ->
            let r = row k

            match instrument.Name with
            | "pyper.stage.workers.busy" -> r.Busy <- v
            | "pyper.stage.queue.length" -> r.Queue <- v
            | _ -> ()

            r.Live <- true)

    do
        listener.InstrumentPublished <-
            fun instrument l ->
                if
                    instrument.Meter.Name = Telemetry.MeterName
                    && instrument.Name <> "pyper.stage.batch.duration"
                then
                    l.EnableMeasurementEvents instrument

        listener.SetMeasurementEventCallback<int64>(
            MeasurementCallback<int64>(fun i v tags _ -> counted i v (key tags))
        )

        listener.SetMeasurementEventCallback<int>(MeasurementCallback<int>(fun i v tags _ -> gauged i v (key tags)))
        listener.Start()

    /// Reads the gauges and the rates at `now` (seconds), `elapsed` after the last sample;
    /// answers a snapshot of the rows. A stage in progress shows its rate over the last refresh,
    /// a finished one its average.
    member _.Sample(now: float, elapsed: float) =
        lock sync (fun () ->
            // Stages of finished runs no longer report: they show as idle and empty.
            for r in rows do
                r.Busy <- 0
                r.Queue <- 0
                r.Live <- false)

        listener.RecordObservableInstruments()

        lock sync (fun () ->
            for r in rows do
                if r.FirstSeen < 0.0 then
                    r.FirstSeen <- now - elapsed

                if r.Out > r.LastOut then
                    r.LastGrew <- now

                if r.Live && elapsed > 0.0 then
                    r.Rate <- float (r.Out - r.LastOut) / elapsed
                elif not r.Live && r.LastGrew > r.FirstSeen then
                    r.Rate <- float r.Out / (r.LastGrew - r.FirstSeen)

                r.LastOut <- r.Out

            [
                for r in rows -> r.Pipeline, r.Stage, r.In, r.Out, r.Rate, r.Queue, r.Busy, r.Failures
            ])

    interface IDisposable with
        member _.Dispose() = listener.Dispose()

/// Takes what the program writes to Console.Out while the display is on: the display shows the
/// last lines above the table, and the whole text is written out when it stops.
[<Sealed>]
type internal ConsoleLog() =
    inherit IO.TextWriter()
    let sync = obj ()
    let text = Text.StringBuilder()

    override _.Encoding = Text.Encoding.UTF8

    override _.Write(c: char) =
        lock sync (fun () -> text.Append c |> ignore)

    override _.Write(s: string) =
        lock sync (fun () -> text.Append s |> ignore)

    /// The last `n` complete lines.
    member _.Last(n: int) =
        lock sync (fun () ->
            let all = text.ToString().Split('\n')
            let complete = all |> Array.take (all.Length - 1)

            complete
            |> Array.skip (max 0 (complete.Length - n))
            |> Array.map (fun l -> l.TrimEnd '\r'))

    member _.All = lock sync (fun () -> text.ToString())

module internal Render =
    let withLog (log: string[]) (table: Table) : Rendering.IRenderable =
        if log.Length = 0 then
            table
        else
            Rows(Text(String.Join("\n", log)), table)

    let table rows =
        let t =
            Table()
                .Border(TableBorder.Rounded)
                .AddColumn("Stage")
                .AddColumn(TableColumn("In").RightAligned())
                .AddColumn(TableColumn("Out").RightAligned())
                .AddColumn(TableColumn("Rate/s").RightAligned())
                .AddColumn(TableColumn("Queue").RightAligned())
                .AddColumn(TableColumn("Busy").RightAligned())
                .AddColumn(TableColumn("Errors").RightAligned())

        let pipelines =
            rows |> List.map (fun (p, _, _, _, _, _, _, _) -> p) |> List.distinct

        t.Title <- TableTitle(Markup.Escape("Pyper: " + String.Join("; ", pipelines)))

        for (_, stage, i: int64, o: int64, rate: float, queue: int, busy: int, failures: int64) in rows do
            let errors = if failures > 0L then $"[red]{failures}[/]" else "0"

            t.AddRow(Markup.Escape stage, string i, string o, rate.ToString "0", string queue, string busy, errors)
            |> ignore

        t

[<Sealed>]
type PipelineProgress private (refresh: TimeSpan) =
    let original = Console.Out

    let console =
        AnsiConsole.Create(AnsiConsoleSettings(Out = AnsiConsoleOutput(original)))

    let shown = console.Profile.Capabilities.Interactive
    let stop = new ManualResetEventSlim(false)

    let model =
        if shown then
            new ProgressModel()
        else
            Unchecked.defaultof<_>

    let log = new ConsoleLog()
    let mutable last = []
    let mutable thread: Thread = null

    let draw (ctx: LiveDisplayContext) =
        let clock = Stopwatch.StartNew()
        let mutable before = 0.0
        let mutable go = true

        while go do
            go <- not (stop.Wait refresh)
            let now = clock.Elapsed.TotalSeconds
            last <- model.Sample(now, now - before)
            ctx.UpdateTarget(Render.withLog (log.Last 8) (Render.table last))
            before <- now
            ctx.Refresh()

    do
        if shown then
            // The program's own console lines go through the display (see ConsoleLog).
            Console.SetOut log

            thread <-
                Thread(
                    (fun () ->
                        console
                            .Live(Render.table [])
                            .AutoClear(true)
                            .Overflow(VerticalOverflow.Ellipsis)
                            .Start(Action<LiveDisplayContext> draw)),
                    IsBackground = true,
                    Name = "Pyper/progress"
                )

            thread.Start()

    static member Show() =
        new PipelineProgress(TimeSpan.FromMilliseconds 250.0)

    static member Show(refreshMilliseconds: int) =
        if refreshMilliseconds < 10 || refreshMilliseconds > 60_000 then
            raise (
                ArgumentOutOfRangeException(
                    nameof refreshMilliseconds,
                    refreshMilliseconds,
                    "PipelineProgress: refreshMilliseconds must be from 10 to 60,000."
                )
            )

        new PipelineProgress(TimeSpan.FromMilliseconds(float refreshMilliseconds))

    member _.IsShown = shown

    interface IDisposable with
        member _.Dispose() =
            if not stop.IsSet then
                stop.Set()

                if not (isNull thread) then
                    thread.Join()
                    (model :> IDisposable).Dispose()
                    // The live frame is cleared: the program's lines, then the last table, stay.
                    Console.SetOut original
                    original.Write log.All
                    original.Flush()
                    console.Write(Render.table last)
