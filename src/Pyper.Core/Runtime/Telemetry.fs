namespace Pyper

open System
open System.Collections.Generic
open System.Diagnostics
open System.Diagnostics.Metrics
open System.Threading

/// The library's instruments (one `Meter`, one `ActivitySource`, both named "Pyper"). Every
/// measurement is taken per batch and only when its instrument is enabled (someone listens), so a
/// run nobody observes pays one flag test per batch.
module internal Instruments =
    [<Literal>]
    let Name = "Pyper"

    [<Literal>]
    let PipelineTag = "pyper.pipeline"

    [<Literal>]
    let StageTag = "pyper.stage"

    let meter = new Meter(Name)
    let source = new ActivitySource(Name)

    let itemsIn =
        meter.CreateCounter<int64>("pyper.stage.items.in", "{item}", "Items a stage's workers took from its input.")

    let itemsOut =
        meter.CreateCounter<int64>("pyper.stage.items.out", "{item}", "Results a stage handed to its output queue.")

    let failures =
        meter.CreateCounter<int64>("pyper.stage.failures", "{failure}", "Failures of a stage's workers.")

    let duration =
        meter.CreateHistogram<float>(
            "pyper.stage.batch.duration",
            "s",
            "Time a worker spent calling the stage's function on one batch of items."
        )

/// One stage of a run as its instruments see it: its tags, its busy workers, its output queue.
[<Sealed; AllowNullLiteral>]
type internal StageProbe(stage: string, workers: int, queueLength: unit -> int) =
    let busy = Array.zeroCreate<int> workers
    let batches = Array.zeroCreate<Activity> workers
    let previous = Array.zeroCreate<Activity> workers
    let mutable pipelineTag = KeyValuePair<string, obj>(Instruments.PipelineTag, null)
    let stageTag = KeyValuePair<string, obj>(Instruments.StageTag, stage)
    let mutable activity: Activity = null
    let mutable traceBatches = false
    let mutable ended = 0

    member _.Stage = stage
    member _.PipelineTag = pipelineTag
    member _.StageTag = stageTag
    member _.Activity = activity
    member _.QueueLength = queueLength ()

    /// Workers inside the function now.
    member _.Busy =
        let mutable s = 0

        for i in 0 .. busy.Length - 1 do
            s <- s + Volatile.Read &busy[i]

        s

    /// Called once the run is wired: the pipeline's name and the run's activity are known.
    member _.Begin(pipeline: string, run: Activity) =
        pipelineTag <- KeyValuePair<string, obj>(Instruments.PipelineTag, pipeline)

        if not (isNull run) then
            let a =
                Instruments.source.StartActivity("pyper.stage", ActivityKind.Internal, run.Context)

            if not (isNull a) then
                a.DisplayName <- stage

                a.SetTag(Instruments.PipelineTag, pipeline).SetTag(Instruments.StageTag, stage)
                |> ignore

                traceBatches <- a.IsAllDataRequested
                activity <- a

    /// Makes the stage's activity current while its workers start (an async worker keeps it);
    /// answers what to restore.
    member _.Enter() =
        let previous = Activity.Current

        if not (isNull activity) then
            Activity.Current <- activity

        previous

    /// A worker ended (with null or its exception); the last one ends the stage's activity.
    member _.WorkerEnded(e: exn) =
        let a = activity

        if not (isNull a) then
            if not (isNull e) then
                a.SetStatus(ActivityStatusCode.Error, e.Message) |> ignore

            if Interlocked.Increment &ended = workers then
                a.Stop()

    /// Ends the stage's activity if a worker never started (a run stopped before it began).
    member _.Close() =
        let a = activity

        if not (isNull a) && Interlocked.Exchange(&ended, workers) < workers then
            a.Stop()

    /// Worker `worker` (from 1) took `n` items; answers the start time when the duration is measured.
    member _.BatchStart(worker: int, n: int) : int64 =
        Volatile.Write(&busy[worker - 1], 1)

        if Instruments.itemsIn.Enabled then
            Instruments.itemsIn.Add(int64 n, pipelineTag, stageTag)

        if traceBatches then
            previous[worker - 1] <- Activity.Current

            let a =
                Instruments.source.StartActivity("pyper.batch", ActivityKind.Internal, activity.Context)

            if not (isNull a) then
                a.DisplayName <- stage + " batch"
                a.SetTag("pyper.batch.size", n) |> ignore
                batches[worker - 1] <- a

        if Instruments.duration.Enabled then
            Stopwatch.GetTimestamp()
        else
            0L

    /// Worker `worker` finished the batch it began at `start`.
    member _.BatchEnd(worker: int, start: int64) =
        Volatile.Write(&busy[worker - 1], 0)

        if start <> 0L && Instruments.duration.Enabled then
            Instruments.duration.Record(Stopwatch.GetElapsedTime(start).TotalSeconds, pipelineTag, stageTag)

        let a = batches[worker - 1]

        if not (isNull a) then
            batches[worker - 1] <- null
            a.Stop()
            Activity.Current <- previous[worker - 1]
            previous[worker - 1] <- null

    /// Worker `worker` is busy (true) or idle, outside the batch loop (a join's single call).
    member _.SetBusy(worker: int, on: bool) =
        Volatile.Write(&busy[worker - 1], (if on then 1 else 0))

    /// `n` items entered the stage outside the batch loop (a batch stage's grouping).
    member _.In(n: int) =
        if Instruments.itemsIn.Enabled then
            Instruments.itemsIn.Add(int64 n, pipelineTag, stageTag)

    /// `n` results left the stage.
    member _.Out(n: int) =
        if n > 0 && Instruments.itemsOut.Enabled then
            Instruments.itemsOut.Add(int64 n, pipelineTag, stageTag)

/// The stages of all runs in progress, read by the observable instruments (busy workers, queue
/// length). A run adds its stages when it starts and removes them when it has finished.
module internal LiveStages =
    let private sync = obj ()
    let private stages = List<StageProbe>()

    let add (probes: StageProbe seq) =
        lock sync (fun () -> stages.AddRange probes)

    let remove (probes: StageProbe seq) =
        lock sync (fun () ->
            for p in probes do
                stages.Remove p |> ignore)

    /// Stages of runs in progress (for tests).
    let count () = lock sync (fun () -> stages.Count)

    let private measure (value: StageProbe -> int) () : seq<Measurement<int>> =
        lock sync (fun () -> [| for p in stages -> Measurement<int>(value p, p.PipelineTag, p.StageTag) |]) :> _

    let busyWorkers =
        Instruments.meter.CreateObservableGauge<int>(
            "pyper.stage.workers.busy",
            Func<_>(measure (fun p -> p.Busy)),
            "{worker}",
            "Workers of a stage inside its function now."
        )

    let queueLength =
        Instruments.meter.CreateObservableGauge<int>(
            "pyper.stage.queue.length",
            Func<_>(measure (fun p -> p.QueueLength)),
            "{item}",
            "Results waiting in a stage's output queue."
        )

/// A run's telemetry: its stages, its activity.
[<Sealed>]
type internal RunTelemetry() =
    let probes = List<StageProbe>()
    let mutable run: Activity = null
    let mutable started = false
    let mutable pipeline = ""

    /// Adds a stage of the run (while it is wired).
    member _.Add(p: StageProbe) = probes.Add p

    /// The run starts: names the pipeline after its stages, starts the run's activity (a child of
    /// the caller's current activity) and the stages', and shows the stages to the gauges.
    member _.Start() =
        // Forces the observable instruments into being (a module's values are created on first use).
        LiveStages.busyWorkers |> ignore
        pipeline <- probes |> Seq.map (fun p -> p.Stage) |> String.concat " >=> "

        let previous = Activity.Current

        if Instruments.source.HasListeners() then
            run <- Instruments.source.StartActivity("pyper.run", ActivityKind.Internal)

            if not (isNull run) then
                run.DisplayName <- "pyper run"
                run.SetTag(Instruments.PipelineTag, pipeline) |> ignore

        for p in probes do
            p.Begin(pipeline, run)

        // Starting an activity makes it current: the caller's current activity stays its own.
        Activity.Current <- previous

        LiveStages.add probes
        started <- true

    /// A failure recorded for `stage`.
    member _.Failed(stage: string) =
        if Instruments.failures.Enabled then
            Instruments.failures.Add(
                1L,
                KeyValuePair<string, obj>(Instruments.PipelineTag, pipeline),
                KeyValuePair<string, obj>(Instruments.StageTag, stage)
            )

    /// The run has finished (every worker is done): ends the activities, hides the stages.
    member _.Finish(error: exn, cancelled: bool) =
        if started then
            started <- false
            LiveStages.remove probes

            for p in probes do
                p.Close()

            if not (isNull run) then
                if not (isNull error) then
                    run.SetStatus(ActivityStatusCode.Error, error.Message) |> ignore
                elif cancelled then
                    run.SetTag("pyper.cancelled", true) |> ignore

                run.Stop()
