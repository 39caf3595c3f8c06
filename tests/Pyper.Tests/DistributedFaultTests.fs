/// The distributed executor under faults, against a real nats-server: the server restarted mid-run
/// (with and without its storage), poison items and poison batches (MaxDeliver), and duplicate
/// results seen by the parent. Fixtures from DistributedTests.
module Pyper.Tests.DistributedFaultTests

open System
open System.IO
open System.Text.Json
open System.Threading
open System.Threading.Tasks
open Expecto
open NATS.Client.JetStream
open Pyper
open Pyper.FSharp
open Pyper.Distributed
open Pyper.Tests.Helpers
open Pyper.Tests.DistributedTests

/// Runs `work`, failing the test when it has not ended within `seconds` (a hang guard with room
/// for a server restart and redeliveries on a loaded machine).
let private within (seconds: float) (what: string) (work: unit -> 'T) : 'T =
    let t = Task.Run<'T>(fun () -> work ())

    if not (endsWithin (TimeSpan.FromSeconds seconds) t) then
        failtestf "hang: %s did not end within %.0f s" what seconds

    t.GetAwaiter().GetResult()

/// A folder where each call of a function leaves a file; `calls` counts them by item.
let private withCallLog (body: string -> unit) =
    let log = Directory.CreateTempSubdirectory("pyper-calls-").FullName

    try
        body log
    finally
        Directory.Delete(log, true)

let private calls (log: string) (value: int) =
    Directory.GetFiles log
    |> Array.filter (fun f -> (Path.GetFileName f).StartsWith $"{value}-")
    |> Array.length

/// The first stage announced on the server (the test plays the worker).
let private firstAnnouncement (js: NatsJSContext) : Task<StageDescriptor> =
    task {
        do! Protocol.ensureStagesStream js CancellationToken.None
        let! stages = js.CreateOrderedConsumerAsync Protocol.StagesStream
        let mutable found = None

        while found.IsNone do
            let! msg = stages.NextAsync<byte[]>()

            if not (isNull (box msg)) then
                found <- Some(Protocol.decode msg.Data)

        return found.Value
    }

let private available =
    [
        distributedTest
            "the server killed and restarted mid-run (same storage): the run goes on, every result once"
            2
            (fun f _ ->
                let server =
                    f.Server.WithAckWait(TimeSpan.FromSeconds 1.0).WithGiveUpAfter(TimeSpan.FromSeconds 30.0)

                let p = Stage.distributed (Remote.slow, server, workers = 4)
                let mutable seen = 0

                let got =
                    within 90.0 "a run across a server restart" (fun () ->
                        Pipeline.toSeqFrom [ 1..200 ] p
                        |> Seq.map (fun x ->
                            seen <- seen + 1

                            if seen = 20 then
                                f.Kill()
                                f.Restart()

                            x)
                        |> List.ofSeq)

                Expect.equal (List.sort got) [ 1..200 ] "every item once, none lost, none doubled")

        distributedTest
            "the server restarted without its storage mid-run: the run fails at once with a clear error"
            1
            (fun f _ ->
                let server =
                    f.Server.WithAckWait(TimeSpan.FromSeconds 1.0).WithGiveUpAfter(TimeSpan.FromSeconds 30.0)

                let p = Stage.distributed (Remote.slow, server, workers = 2, name = "remote")
                let mutable seen = 0

                let e =
                    within 60.0 "a run whose queues vanished" (fun () ->
                        catchExn (fun () ->
                            Pipeline.toSeqFrom [ 1..200 ] p
                            |> Seq.iter (fun _ ->
                                seen <- seen + 1

                                if seen = 5 then
                                    f.Kill()
                                    f.RestartWithoutStorage())))

                Expect.isTrue (e :? IOException) $"IOException, got {e}"
                Expect.stringContains e.Message "gone from the NATS server" "says what happened"
                Expect.stringContains e.Message f.Url "names the server"
                Expect.equal (PipelineError.stage e) (Some "remote") "names the stage")

        distributedTest
            "a poison item (fails on every delivery) fails the run with its own error, not endless redelivery"
            2
            (fun f _ ->
                withCallLog (fun log ->
                    let server = f.Server.WithMaxDeliver(3).WithAckWait(TimeSpan.FromSeconds 1.0)

                    let p = Stage.distributed (Remote.poison, server, name = "poisoned")
                    let items = [ { Log = log; Millis = 0; Value = 5 } ]

                    let e =
                        within 60.0 "a run with a poison item" (fun () ->
                            catchExn (fun () -> Pipeline.toSeqFrom items p |> List.ofSeq |> ignore))

                    Expect.isTrue (e :? InvalidOperationException) $"the original type, got {e}"
                    Expect.equal e.Message "poison 5" "the original message"
                    Expect.equal (PipelineError.stage e) (Some "poisoned") "the stage"
                    let n = calls log 5
                    Expect.isTrue (n >= 1 && n <= 3) $"delivered at most MaxDeliver (3) times, got {n}"))

        distributedTest
            "a poison batch (kills every worker that takes it) fails the run after MaxDeliver deliveries"
            3
            (fun f workers ->
                withCallLog (fun log ->
                    let server = f.Server.WithMaxDeliver(2).WithAckWait(TimeSpan.FromSeconds 1.0)

                    let p = Stage.distributed (Remote.crashOn13, server, name = "crashy")
                    let items = [ { Log = log; Millis = 0; Value = 13 } ]

                    let e =
                        within 60.0 "a run with a poison batch" (fun () ->
                            catchExn (fun () -> Pipeline.toSeqFrom items p |> List.ofSeq |> ignore))

                    Expect.isTrue (e :? RemoteStageException) $"RemoteStageException, got {e}"
                    Expect.stringContains e.Message "MaxDeliver" "says why"
                    Expect.equal (PipelineError.stage e) (Some "crashy") "the stage"
                    Expect.equal (calls log 13) 2 "delivered exactly MaxDeliver (2) times"

                    let dead = workers |> List.filter (fun w -> w.Process.HasExited) |> List.length
                    Expect.equal dead 2 "each delivery killed its worker; the third worker was never given it"))

        distributedTest
            "a result published twice (a redelivered batch computed again): the consumer sees it once"
            0
            (fun f _ ->
                // The test is the only worker: it answers every batch twice, the second time with
                // other values.
                // One worker loop in the parent: one set of queues (the test serves the first announcement).
                let p = Stage.distributed (Remote.square, f.Server)
                // The source ends only once every item has been answered twice: the run cannot end
                // (and delete its queues) between the two copies of a result.
                use answered = new ManualResetEventSlim()

                let source =
                    seq {
                        yield! [ 1..100 ]
                        answered.Wait()
                    }

                let run = Task.Run(fun () -> Pipeline.toSeqFrom source p |> List.ofSeq)
                let answeredItems = ref 0

                let duplicates =
                    withinGuard "serving the run twice over" (fun () ->
                        task {
                            let! conn = Protocol.connect f.Server "test worker"
                            let js = NatsJSContext(conn)
                            let! d = firstAnnouncement js
                            let! consumer = js.GetConsumerAsync(d.WorkStream, d.WorkConsumer)
                            let mutable duplicates = 0
                            let ended = ref false

                            while not ended.Value && not run.IsCompleted do
                                let! msg =
                                    task {
                                        try
                                            return!
                                                consumer.NextAsync<byte[]>(
                                                    opts = NatsJSNextOpts(Expires = TimeSpan.FromSeconds 1.0)
                                                )
                                        with _ ->
                                            // The run ended and deleted its queues (or it failed:
                                            // the checks below say so).
                                            ended.Value <- true
                                            return null
                                    }

                                if not (isNull (box msg)) then
                                    let _, batch = Protocol.header msg.Data

                                    let items =
                                        JsonSerializer.Deserialize<int[]>(
                                            ReadOnlySpan(msg.Data, 10, msg.Data.Length - 10),
                                            Wire.options
                                        )

                                    let reply (results: int[]) =
                                        let json = JsonSerializer.SerializeToUtf8Bytes(results, Wire.options)
                                        let payload = Array.append (Array.zeroCreate 8) json
                                        Protocol.frame Protocol.Results batch payload 0 payload.Length

                                    for results in
                                        [
                                            Array.map Remote.square items
                                            Array.map (fun x -> Remote.square x + 1_000_000) items
                                        ] do
                                        // As a worker does: a request, answered once the parent has it.
                                        let! _ = conn.RequestAsync<byte[], byte[]>(d.ResultsSubject, reply results)
                                        ()

                                    duplicates <- duplicates + 1
                                    do! msg.AckAsync()
                                    answeredItems.Value <- answeredItems.Value + items.Length

                                    if answeredItems.Value >= 100 then
                                        answered.Set()

                            do! conn.DisposeAsync()
                            return duplicates
                        })

                let got = within 60.0 "the run" (fun () -> run.Result)
                Expect.isGreaterThanOrEqual duplicates 1 "at least one result was published twice"
                Expect.equal (List.sort got) (List.map Remote.square [ 1..100 ]) "each result once, the first copy")

        distributedTest "a run adds no stream to the server: its items travel on the shared work stream" 1 (fun f _ ->
            let p = Stage.distributed (Remote.square, f.Server, workers = 2)
            use results = (Pipeline.toSeqFrom [ 1..50 ] p).GetEnumerator()
            Expect.isTrue (within 60.0 "the first result" (fun () -> results.MoveNext())) "a first result"
            // Mid-run: the streams on the server are the two shared ones only.
            let streams, _ = f.Leftovers()

            let own = streams |> List.filter (fun s -> not (s.StartsWith Protocol.WorkStream))

            Expect.isEmpty own "no stream of the run's own"
            let mutable n = 1

            while within 60.0 "the rest" (fun () -> results.MoveNext()) do
                n <- n + 1

            Expect.equal n 50 "every result")

        distributedTest
            "a run that no worker serves fails once the server expires its queue (InactiveThreshold)"
            0
            (fun f _ ->
                // As for a parent that died: nobody asks the run's consumer for work, and the server
                // deletes it after InactiveThreshold. A parent still waiting hears it and fails.
                let server = f.Server.WithInactiveThreshold(TimeSpan.FromSeconds 2.0)
                let p = Stage.distributed (Remote.square, server, workers = 2)

                let e =
                    catchExn (fun () ->
                        within 60.0 "an unserved run" (fun () -> collect (Pipeline.toSeqFrom [ 1..3 ] p))
                        |> ignore)

                Expect.isTrue (e :? IOException) $"IOException, got {e}"
                Expect.stringContains e.Message "InactiveThreshold (00:00:02)" "says why"
                Expect.stringContains e.Message f.Url "names the server")
    ]

let tests =
    match natsServerPath with
    | Some _ -> testList "distributed executor under faults" available
    | None -> testList "distributed executor under faults" []
