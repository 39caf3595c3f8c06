/// The distributed executor (NATS JetStream): each test starts its own nats-server on a free
/// loopback port with a temporary storage folder, and its own worker processes; both are killed
/// at the end and checked gone. Skipped, with one line saying how to install it, without nats-server.
module Pyper.Tests.DistributedTests

open System
open System.Diagnostics
open System.IO
open System.Net
open System.Net.Sockets
open System.Threading
open System.Threading.Tasks
open Expecto
open NATS.Client.Core
open NATS.Client.JetStream
open NATS.Client.JetStream.Models
open Pyper
open Pyper.FSharp
open Pyper.Distributed
open Pyper.Tests.Helpers

/// A long item: the folder where each call leaves a file, and how long it runs.
type LongItem =
    { Log: string; Millis: int; Value: int }

/// Functions that distributed workers run: module functions of this compiled assembly.
module Remote =
    let square (x: int) = x * x
    let failAtSeven (x: int) = if x = 7 then invalidOp "seven" else x

    let slow (x: int) =
        Thread.Sleep 20
        x

    /// Fails on every delivery, leaving a file per call.
    let poison (item: LongItem) : int =
        File.WriteAllText(Path.Combine(item.Log, $"{item.Value}-{Guid.NewGuid():N}"), "")
        invalidOp $"poison {item.Value}"

    /// Kills its worker process on item 13 (a poison batch), leaving a file per call.
    let crashOn13 (item: LongItem) =
        File.WriteAllText(Path.Combine(item.Log, $"{item.Value}-{Guid.NewGuid():N}"), "")

        if item.Value = 13 then
            Process.GetCurrentProcess().Kill()

        item.Value

    let long (item: LongItem) =
        // A file per call: appends from two processes at once could overwrite each other.
        File.WriteAllText(Path.Combine(item.Log, $"{item.Value}-{Guid.NewGuid():N}"), "")
        Thread.Sleep item.Millis
        item.Value

let private sorted xs = List.sort xs

let natsServerPath =
    [
        "/usr/sbin/nats-server"
        "/usr/bin/nats-server"
        "/usr/local/bin/nats-server"
    ]
    |> List.tryFind File.Exists

let private freePort () =
    let l = new TcpListener(IPAddress.Loopback, 0)
    l.Start()
    let port = (l.LocalEndpoint :?> IPEndPoint).Port
    l.Stop()
    port

let private accepts (port: int) =
    try
        use c = new TcpClient()
        c.Connect(IPAddress.Loopback, port)
        true
    with _ ->
        false

/// A nats-server with JetStream on a free loopback port and a temporary storage folder.
type NatsFixture(?user: string * string) =
    let port = freePort ()
    let dir = Directory.CreateTempSubdirectory "pyper-nats-"
    let mutable proc: Process = null

    let start () =
        let psi =
            ProcessStartInfo(
                natsServerPath.Value,
                UseShellExecute = false,
                RedirectStandardOutput = true,
                RedirectStandardError = true
            )

        for a in [ "-js"; "-a"; "127.0.0.1"; "-p"; string port; "-sd"; dir.FullName ] do
            psi.ArgumentList.Add a

        match user with
        | Some(u, p) ->
            for a in [ "--user"; u; "--pass"; p ] do
                psi.ArgumentList.Add a
        | None -> ()

        proc <- Process.Start psi
        proc.BeginOutputReadLine()
        proc.BeginErrorReadLine()
        waitUntil "nats-server to accept connections" (fun () -> accepts port)

    do start ()

    member _.Port = port
    member _.Url = $"nats://127.0.0.1:{port}"

    member this.Server =
        match user with
        | Some(u, p) -> NatsServer(NatsOpts(Url = this.Url, AuthOpts = NatsAuthOpts(Username = u, Password = p)))
        | None -> NatsServer this.Url

    /// Stops the server (SIGKILL) and checks that it is gone.
    member _.Kill() =
        proc.Kill true
        // Bounded: a wait without one also waits for the output pipes to close.
        Expect.isTrue (proc.WaitForExit hangGuard) "nats-server is gone"
        proc.Dispose()

    /// Starts it again on the same port and storage (after `Kill`).
    member _.Restart() = start ()

    /// Starts it again on the same port with its storage wiped (after `Kill`).
    member _.RestartWithoutStorage() =
        for d in dir.GetDirectories() do
            d.Delete true

        for f in dir.GetFiles() do
            f.Delete()

        start ()

    /// What runs left on the server: the names of the streams other than the shared ones, a line
    /// for the shared work stream when it holds messages or consumers, and how many messages
    /// PYPER_STAGES holds.
    member this.Leftovers() =
        withinGuard "listing streams" (fun () ->
            task {
                let! conn = Protocol.connect this.Server "test"
                let js = NatsJSContext(conn)
                let names = ResizeArray()
                let e = js.ListStreamNamesAsync().GetAsyncEnumerator()

                while! e.MoveNextAsync() do
                    names.Add e.Current

                let! announced =
                    if names.Contains Protocol.StagesStream then
                        task {
                            let! stages = js.GetStreamAsync Protocol.StagesStream
                            return stages.Info.State.Messages
                        }
                    else
                        Task.FromResult 0L

                let! work =
                    if names.Contains Protocol.WorkStream then
                        task {
                            let! work = js.GetStreamAsync Protocol.WorkStream
                            let state = work.Info.State

                            if state.Messages = 0L && state.ConsumerCount = 0L then
                                return []
                            else
                                return
                                    [
                                        $"{Protocol.WorkStream}: {state.Messages} messages, {state.ConsumerCount} consumers"
                                    ]
                        }
                    else
                        Task.FromResult []

                do! conn.DisposeAsync()

                let others =
                    List.ofSeq names
                    |> List.filter (fun n -> n <> Protocol.StagesStream && n <> Protocol.WorkStream)

                return others @ work, announced
            })

    interface IDisposable with
        member this.Dispose() =
            if not (isNull proc) && not proc.HasExited then
                this.Kill()

            try
                dir.Delete true
            with _ ->
                ()

let private dotnet =
    let root =
        Path.GetFullPath(
            Path.Combine(Runtime.InteropServices.RuntimeEnvironment.GetRuntimeDirectory(), "..", "..", "..")
        )

    let candidate = Path.Combine(root, "dotnet")
    if File.Exists candidate then candidate else "dotnet"

/// A worker host process (`Pyper.Worker.dll --nats`), ready once it follows the announcements.
type WorkerHostProcess(fixture: NatsFixture, ?extra: string list) =
    let bin = AppContext.BaseDirectory
    let ready = TaskCompletionSource()

    let proc =
        let psi =
            ProcessStartInfo(dotnet, UseShellExecute = false, RedirectStandardError = true)

        for a in
            [
                "exec"
                Path.Combine(bin, "Pyper.Worker.dll")
                "--nats"
                fixture.Url
                "--assemblies"
                bin
            ]
            @ [ "--parallel"; "2"; "--parent"; string Environment.ProcessId ]
            @ defaultArg extra [] do
            psi.ArgumentList.Add a

        let p = new Process(StartInfo = psi)

        p.ErrorDataReceived.Add(fun e ->
            if not (isNull e.Data) && e.Data.Contains ": ready," then
                ready.TrySetResult() |> ignore)

        p.Start() |> ignore
        p.BeginErrorReadLine()
        p

    do
        if not (ready.Task.Wait hangGuard) then
            proc.Kill true
            failtest "a worker host did not get ready"

    member _.Process = proc

    /// SIGKILL, then check it is gone.
    member _.Kill() =
        if not proc.HasExited then
            proc.Kill true

        // Bounded: a wait without one also waits for the stderr pipe to close.
        Expect.isTrue (proc.WaitForExit hangGuard) "the worker host is gone"

    interface IDisposable with
        member this.Dispose() = this.Kill()

/// A test with a server and `n` worker hosts, checking that the run left nothing on the server.
let withCluster (n: int) (body: NatsFixture -> WorkerHostProcess list -> unit) () =
    use fixture = new NatsFixture()
    let workers = List.init n (fun _ -> new WorkerHostProcess(fixture))

    try
        body fixture workers
        let streams, announced = fixture.Leftovers()
        Expect.isEmpty streams "the run's streams, consumers and messages are deleted"
        Expect.equal announced 0L "the stage announcement is removed"
    finally
        for w in workers do
            (w :> IDisposable).Dispose()

let distributedTest name (n: int) body = leakTest name (withCluster n body)

let private available =
    [
        distributedTest "results equal the thread executor's; ordered keeps input order" 2 (fun f _ ->
            let xs = [ -500 .. 500 ]
            let p = Stage.distributed (Remote.square, f.Server, workers = 4)
            Expect.equal (sorted (collect (Pipeline.toSeqFrom xs p))) (sorted (List.map Remote.square xs)) "same"
            Expect.equal p.Stages.Head.Executor Executor.Distributed "a distributed stage"

            let ordered = Stage.distributed (Remote.slow, f.Server, workers = 4, ordered = true)
            Expect.equal (collect (Pipeline.toSeqFrom [ 1..60 ] ordered)) [ 1..60 ] "in input order")

        distributedTest "two runs at once share the server's work stream but not their items" 2 (fun f _ ->
            // The same pipeline run twice at once: each run has its own subject and consumer.
            let p = Stage.distributed (Remote.square, f.Server, workers = 3)

            let run (xs: int list) =
                Task.Run(fun () -> Pipeline.toSeqFrom xs p |> List.ofSeq)

            let both =
                withinGuard "two runs at once" (fun () -> Task.WhenAll(run [ 1..300 ], run [ 1001..1300 ]))

            Expect.equal (sorted both[0]) (List.map Remote.square [ 1..300 ]) "the first run's results, once each"
            Expect.equal (sorted both[1]) (List.map Remote.square [ 1001..1300 ]) "the second run's results, once each")

        distributedTest "the first failure stops the run with its original type and the stage's name" 2 (fun f _ ->
            let p =
                Stage.distributed (Remote.failAtSeven, f.Server, workers = 2, name = "picky")

            let e = catchExn (fun () -> collect (Pipeline.toSeqFrom [ 0..20 ] p) |> ignore)
            Expect.isTrue (e :? InvalidOperationException) $"InvalidOperationException, got {e}"
            Expect.equal e.Message "seven" "message"
            Expect.equal (PipelineError.stage e) (Some "picky") "stage")

        distributedTest "a run's end does not hide another run's announcement from a worker host yet to read it" 0
        <| fun f _ ->
            // A worker host's view of the announcements: a consumer of the whole stages stream that
            // has read nothing yet (a host that joined, or has not caught up).
            let conn =
                withinGuard "a reader of the announcements" (fun () ->
                    task {
                        let! conn = Protocol.connect f.Server "test"
                        let js = NatsJSContext(conn)
                        do! Protocol.ensureStagesStream js CancellationToken.None

                        let! _ =
                            js.CreateOrUpdateConsumerAsync(
                                Protocol.StagesStream,
                                ConsumerConfig("reader", AckPolicy = ConsumerConfigAckPolicy.Explicit)
                            )

                        return conn
                    })

            let js = NatsJSContext(conn)

            // A run that waits for a worker (none serves): its stage is announced.
            let start (name: string) =
                let cts = new CancellationTokenSource()
                let p = Stage.distributed (Remote.square, f.Server, name = name)
                let e = (Pipeline.streamFromSeq [ 1 ] p).GetAsyncEnumerator cts.Token
                let moving = e.MoveNextAsync().AsTask()

                fun () ->
                    withinGuard $"the end of run '{name}'" (fun () ->
                        task {
                            cts.Cancel()
                            do! (moving :> Task).ContinueWith(fun (_: Task) -> ())
                            do! e.DisposeAsync()
                            cts.Dispose()
                        })

            let endFirst = start "first"
            let endSecond = start "second"
            waitUntil "both stages announced" (fun () -> snd (f.Leftovers()) = 2L)
            endFirst ()

            let read =
                withinGuard "reading the announcements" (fun () ->
                    task {
                        let! reader = js.GetConsumerAsync(Protocol.StagesStream, "reader")

                        let! next =
                            reader.NextAsync<byte[]>(opts = NatsJSNextOpts(Expires = TimeSpan.FromSeconds 2.0))

                        return
                            if isNull (box next) then
                                None
                            else
                                Some (Protocol.decode next.Data).Stage
                    })

            Expect.equal read (Some "second") "the second run's announcement is still there to read"
            endSecond ()

            withinGuard "the reader's end" (fun () ->
                task {
                    let! _ = js.DeleteConsumerAsync(Protocol.StagesStream, "reader")
                    do! conn.DisposeAsync()
                })

        distributedTest "an early stop and a cancellation end the run and delete its streams" 1 (fun f _ ->
            let source = CountingSource()
            let p = Stage.distributed (Remote.square, f.Server, workers = 2, capacity = 8)
            let firstFive = collect (Pipeline.toSeqFrom source.Items p |> Seq.truncate 5)
            Expect.equal firstFive.Length 5 "five results"
            // Backpressure: a consumer that stops reading stops the source (read-ahead, batches and queues are bounded).
            Expect.isLessThan source.Produced 6000L "the source was not read far ahead"

            use cts = new CancellationTokenSource()
            let results = Pipeline.streamFromSeq source.Items p

            let e =
                catchExn (fun () ->
                    withinGuard "a cancelled run" (fun () ->
                        task {
                            let en = results.GetAsyncEnumerator cts.Token

                            try
                                let! _ = en.MoveNextAsync()
                                cts.Cancel()

                                while! en.MoveNextAsync() do
                                    ()
                            finally
                                en.DisposeAsync().AsTask().Wait()
                        }))

            Expect.isTrue (e :? OperationCanceledException) $"cancelled, got {e}")

        distributedTest
            "a worker killed mid-run: its items go to the other, each result arrives once"
            2
            (fun f workers ->
                let server = f.Server.WithAckWait(TimeSpan.FromSeconds 1.0)
                let p = Stage.distributed (Remote.slow, server, workers = 4)
                let mutable seen = 0

                let results =
                    Pipeline.toSeqFrom [ 1..200 ] p
                    |> Seq.map (fun x ->
                        seen <- seen + 1

                        if seen = 20 then
                            workers.Head.Kill()

                        x)

                let got = collect results
                Expect.equal (sorted got) [ 1..200 ] "every item once, none lost, none doubled"
                Expect.isTrue workers.Head.Process.HasExited "the first worker was killed")

        distributedTest "a long item is kept alive (AckProgress), not redelivered" 2 (fun f _ ->
            let log = Directory.CreateTempSubdirectory("pyper-calls-").FullName

            try
                let server = f.Server.WithAckWait(TimeSpan.FromSeconds 1.0)
                let p = Stage.distributed (Remote.long, server, workers = 2)
                let items = [ for v in 1..2 -> { Log = log; Millis = 2500; Value = v } ]
                Expect.equal (sorted (collect (Pipeline.toSeqFrom items p))) [ 1; 2 ] "results"

                let calls =
                    Directory.GetFiles log
                    |> Array.map (fun f -> (Path.GetFileName f).Split('-')[0])
                    |> List.ofArray

                Expect.equal (sorted calls) [ "1"; "2" ] "each item ran once"
            finally
                Directory.Delete(log, true))

        testCase "an unreachable server fails the run at once, naming the URL" (fun () ->
            let url = $"nats://127.0.0.1:{freePort ()}"
            let p = Stage.distributed (Remote.square, NatsServer url)
            let clock = Stopwatch.StartNew()
            let e = catchExn (fun () -> collect (Pipeline.toSeqFrom [ 1..3 ] p) |> ignore)
            Expect.isTrue (e :? IOException) $"IOException, got {e}"
            Expect.stringContains e.Message url "names the URL"
            Expect.isLessThan clock.Elapsed.TotalSeconds 5.0 "within a few seconds"
            assertNoLeaks ())

        leakTest "a server with a user and password: workers and parent authenticate" (fun () ->
            use f = new NatsFixture(("pyper", "s3cret"))

            use w = new WorkerHostProcess(f, [ "--user"; "pyper"; "--password"; "s3cret" ])

            let p = Stage.distributed (Remote.square, f.Server, workers = 2)

            Expect.equal
                (sorted (collect (Pipeline.toSeqFrom [ 1..50 ] p)))
                (List.map Remote.square [ 1..50 ])
                "results"

            let wrong = Stage.distributed (Remote.square, NatsServer f.Url)
            let e = catchExn (fun () -> collect (Pipeline.toSeq 1 wrong) |> ignore)
            Expect.isTrue (e :? IOException) $"IOException without credentials, got {e}")

        distributedTest
            "C# facade: DistributedStage.Map with |, the fluent MapDistributed, failures, refusals"
            2
            (fun f _ ->
                withinGuard "the C# checks" (fun () ->
                    task { do! Pyper.CSharp.Tests.DistributedFacadeTests.Check f.Server }))

        testCase "a capturing closure is refused when the stage is built, as for processes" (fun () ->
            let k = Environment.ProcessorCount

            let e =
                Expect.throwsC
                    (fun () -> Stage.distributed ((fun x -> x * k), NatsServer "nats://127.0.0.1:1") |> ignore)
                    id

            Expect.equal (e :?> ArgumentException).ParamName "f" "names the function"
            Expect.stringContains e.Message "captures values" "says why")
    ]

let tests =
    match natsServerPath with
    | Some _ -> testList "distributed executor" available
    | None ->
        eprintfn
            "Distributed tests skipped: nats-server is not installed (Debian/Ubuntu: apt-get install -y nats-server)."

        testList "distributed executor" []
