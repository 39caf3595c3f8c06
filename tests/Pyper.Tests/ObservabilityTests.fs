/// Metrics (System.Diagnostics.Metrics) and activities (ActivitySource) of runs, seen through a
/// MeterListener and an ActivityListener.
module Pyper.Tests.ObservabilityTests

open System
open System.Collections.Concurrent
open System.Collections.Generic
open System.Diagnostics
open System.Diagnostics.Metrics
open System.Threading
open System.Threading.Tasks
open Expecto
open Pyper
open Pyper.FSharp
open Pyper.Tests.Helpers

/// One measurement: instrument, value, pipeline tag, stage tag.
type Measured =
    {
        Instrument: string
        Value: float
        Pipeline: string
        Stage: string
    }

let private tagOf (key: string) (tags: ReadOnlySpan<KeyValuePair<string, obj>>) =
    let mutable v = null

    for t in tags do
        if t.Key = key then
            v <- string t.Value

    v

let private measuredOf (instrument: Instrument) (value: float) (tags: ReadOnlySpan<KeyValuePair<string, obj>>) =
    {
        Instrument = instrument.Name
        Value = value
        Pipeline = tagOf "pyper.pipeline" tags
        Stage = tagOf "pyper.stage" tags
    }

/// Listens to Pyper's meter while `body` runs; `body` gets a function that records the gauges
/// and answers every measurement so far.
let private listening (body: (unit -> Measured list) -> unit) =
    let seen = ConcurrentQueue<Measured>()
    use listener = new MeterListener()

    listener.InstrumentPublished <-
        fun instrument l ->
            if instrument.Meter.Name = Telemetry.MeterName then
                l.EnableMeasurementEvents instrument

    listener.SetMeasurementEventCallback<int64>(
        MeasurementCallback<int64>(fun i v tags _ -> seen.Enqueue(measuredOf i (float v) tags))
    )

    listener.SetMeasurementEventCallback<int>(
        MeasurementCallback<int>(fun i v tags _ -> seen.Enqueue(measuredOf i (float v) tags))
    )

    listener.SetMeasurementEventCallback<float>(
        MeasurementCallback<float>(fun i v tags _ -> seen.Enqueue(measuredOf i v tags))
    )

    listener.Start()

    body (fun () ->
        listener.RecordObservableInstruments()
        List.ofSeq seen)

let private total (instrument: string) (stage: string) (ms: Measured list) =
    ms
    |> List.filter (fun m -> m.Instrument = instrument && m.Stage = stage)
    |> List.sumBy (fun m -> m.Value)

/// Runs `body` with every Pyper activity recorded (sampled with all data); answers the stopped ones.
let private tracing (body: unit -> unit) =
    let stopped = ConcurrentQueue<Activity>()
    use listener = new ActivityListener()
    listener.ShouldListenTo <- fun s -> s.Name = Telemetry.ActivitySourceName
    listener.Sample <- fun _ -> ActivitySamplingResult.AllDataAndRecorded
    listener.ActivityStopped <- fun a -> stopped.Enqueue a
    ActivitySource.AddActivityListener listener
    body ()
    List.ofSeq stopped

let tests =
    testList
        "observability"
        [
            leakTest "items in and out, and batch durations, per stage, tagged with pipeline and stage" (fun () ->
                listening (fun measured ->
                    let p =
                        Stage.map ((fun (x: int) -> x + 1), workers = 3, name = "obs-map")
                        >=> Stage.branch ((fun x -> [ x; -x ]), name = "obs-branch")
                        >=> Stage.batch (7, name = "obs-batch")

                    let groups = collect (Pipeline.toSeqFrom [ 1..100 ] p)
                    Expect.equal (groups |> List.sumBy Array.length) 200 "every result"
                    let ms = measured ()
                    Expect.equal (total "pyper.stage.items.in" "obs-map" ms) 100.0 "map: items in"
                    Expect.equal (total "pyper.stage.items.out" "obs-map" ms) 100.0 "map: items out"
                    Expect.equal (total "pyper.stage.items.in" "obs-branch" ms) 100.0 "branch: items in"
                    Expect.equal (total "pyper.stage.items.out" "obs-branch" ms) 200.0 "branch: items out"
                    Expect.equal (total "pyper.stage.items.in" "obs-batch" ms) 200.0 "batch: items in"
                    Expect.equal (total "pyper.stage.items.out" "obs-batch" ms) 29.0 "batch: groups out"

                    let durations =
                        ms
                        |> List.filter (fun m -> m.Instrument = "pyper.stage.batch.duration" && m.Stage = "obs-map")

                    Expect.isNonEmpty durations "the map stage's batches are timed"
                    Expect.isTrue (durations |> List.forall (fun m -> m.Value >= 0.0)) "durations are not negative"

                    let pipelines =
                        ms
                        |> List.filter (fun m -> m.Stage = "obs-map")
                        |> List.map (fun m -> m.Pipeline)
                        |> List.distinct

                    Expect.equal
                        pipelines
                        [ "obs-map >=> obs-branch >=> obs-batch" ]
                        "the pipeline tag names its stages"))

            leakTest "a failure is counted for its stage" (fun () ->
                listening (fun measured ->
                    let p =
                        Stage.map ((fun (x: int) -> if x = 5 then failwith "boom" else x), name = "obs-fails")

                    catchExn (fun () -> collect (Pipeline.toSeqFrom [ 1..10 ] p) |> ignore)
                    |> ignore

                    Expect.equal (total "pyper.stage.failures" "obs-fails" (measured ())) 1.0 "one failure"))

            leakTest "busy workers and queue length show while a run is in progress, and are gone after it" (fun () ->
                listening (fun measured ->
                    use gate = new ManualResetEventSlim(false)

                    let p =
                        Stage.map ((fun (x: int) -> x), name = "obs-queue", capacity = 4)
                        >=> Stage.map (
                            (fun (x: int) ->
                                gate.Wait()
                                x),
                            workers = 3,
                            name = "obs-busy"
                        )

                    let latest (instrument: string) (stage: string) =
                        measured ()
                        |> List.filter (fun m -> m.Instrument = instrument && m.Stage = stage)
                        |> List.tryLast
                        |> Option.map (fun m -> m.Value)

                    let run = Task.Run(fun () -> collect (Pipeline.toSeqFrom [ 1..1000 ] p))
                    waitUntil "three busy workers" (fun () -> latest "pyper.stage.workers.busy" "obs-busy" = Some 3.0)
                    waitUntil "a waiting queue" (fun () -> latest "pyper.stage.queue.length" "obs-queue" > Some 0.0)
                    gate.Set()
                    Expect.hasLength run.Result 1000 "every result"
                    let before = measured () |> List.length
                    let after = measured () |> List.skip before

                    Expect.isEmpty
                        (after |> List.filter (fun m -> m.Stage = "obs-busy" || m.Stage = "obs-queue"))
                        "no gauge reports a finished run's stages"

                    Expect.equal (LiveStages.count ()) 0 "no stage is registered after the run"))

            leakTest "a run's activity is a child of the caller's, with a child per stage and per batch" (fun () ->
                let mutable inside = null
                let mutable callerId = null
                let mutable callerTrace = Unchecked.defaultof<ActivityTraceId>

                let stopped =
                    tracing (fun () ->
                        use caller = (new Activity("caller")).Start()
                        callerId <- caller.Id
                        callerTrace <- caller.TraceId

                        let p =
                            Stage.map ((fun (x: int) -> x * 2), name = "obs-trace-1")
                            >=> Stage.mapTask (
                                (fun (x: int) ->
                                    inside <- Activity.Current
                                    Task.FromResult x),
                                name = "obs-trace-2"
                            )

                        let e = (Pipeline.toSeqFrom [ 1..10 ] p).GetEnumerator()
                        Expect.isTrue (e.MoveNext()) "a first result"
                        Expect.equal Activity.Current caller "the caller's current activity is still its own"
                        e.Dispose()

                        collect (Pipeline.toSeqFrom [ 1..10 ] p) |> ignore
                        Expect.equal Activity.Current caller "the caller's current activity is still its own")

                let caller = stopped |> List.tryFind (fun a -> a.OperationName = "pyper.run") // any
                let runs = stopped |> List.filter (fun a -> a.OperationName = "pyper.run")
                Expect.hasLength runs 2 "one activity per run"

                for run in runs do
                    Expect.equal run.TraceId callerTrace "the run is in the caller's trace"
                    Expect.equal run.ParentId callerId "the caller's activity is the run's parent"

                    let stages =
                        stopped
                        |> List.filter (fun a -> a.OperationName = "pyper.stage" && a.ParentSpanId = run.SpanId)

                    Expect.equal
                        (stages |> List.map (fun a -> a.DisplayName) |> List.sort)
                        [ "obs-trace-1"; "obs-trace-2" ]
                        "one child per stage"

                let last = runs |> List.last

                let stageSpans =
                    stopped
                    |> List.filter (fun a -> a.OperationName = "pyper.stage" && a.ParentSpanId = last.SpanId)
                    |> List.map (fun a -> a.SpanId)

                let batches =
                    stopped
                    |> List.filter (fun a ->
                        a.OperationName = "pyper.batch" && List.contains a.ParentSpanId stageSpans)

                Expect.isNonEmpty batches "batches are traced when sampled"

                Expect.equal
                    (batches |> List.sumBy (fun a -> a.GetTagItem "pyper.batch.size" :?> int))
                    20
                    "the batches hold every item of both stages"

                Expect.isNotNull inside "the function saw a current activity"
                Expect.equal inside.TraceId last.TraceId "the function's current activity is in the run's trace"
                Expect.isTrue (caller.IsSome) "the caller's activity was stopped by the caller")

            leakTest "a failed run's activity and its stage's carry the error" (fun () ->
                let stopped =
                    tracing (fun () ->
                        let p =
                            Stage.map (
                                (fun (x: int) -> if x = 3 then failwith "boom" else x),
                                name = "obs-trace-fail"
                            )

                        catchExn (fun () -> collect (Pipeline.toSeqFrom [ 1..10 ] p) |> ignore)
                        |> ignore)

                let run = stopped |> List.find (fun a -> a.OperationName = "pyper.run")
                Expect.equal run.Status ActivityStatusCode.Error "the run failed"
                Expect.equal run.StatusDescription "boom" "with the failure's message"

                let stage =
                    stopped
                    |> List.find (fun a -> a.OperationName = "pyper.stage" && a.DisplayName = "obs-trace-fail")

                Expect.equal stage.Status ActivityStatusCode.Error "the stage failed")
        ]
