/// Failure policies, counts, rate limits and timeouts (issue #17) on the distributed executor:
/// each test starts its own nats-server and worker hosts (see `DistributedTests.withCluster`),
/// kills them at the end and checks that nothing of the run is left on the server.
module Pyper.Tests.DistributedPolicyTests

open System
open System.Collections.Concurrent
open System.Diagnostics
open System.IO
open System.Threading
open System.Threading.RateLimiting
open System.Threading.Tasks
open Expecto
open FsCheck
open FsCheck.FSharp
open Pyper
open Pyper.FSharp
open Pyper.Distributed
open Pyper.Tests.Helpers
open Pyper.Tests.DistributedTests

/// A bound argument: a factor, and a key under which a worker process counts its set-ups.
type Scaling = { Factor: int; Key: string }

/// A bound argument that cannot cross to a worker process.
type Unsendable = { Make: Func<int> }

/// Functions that distributed workers run: module functions of this compiled assembly.
module Remote =
    /// Sets up once per application to its argument, counting its set-ups in this process (in its
    /// AppDomain data, under the argument's key); then tags each result with that count.
    let setUp (s: Scaling) =
        let key = $"pyper-test-distributed-setups-{s.Key}"

        let n =
            match AppDomain.CurrentDomain.GetData key with
            | :? int as n -> n + 1
            | _ -> 1

        AppDomain.CurrentDomain.SetData(key, box n)
        fun (x: int) -> n, x * s.Factor

    let scaleUnlessSeven (k: int) (x: int) =
        if x % 7 = 0 then invalidOp $"seven at {x}" else k * x

    let ignoreArg (_: Unsendable) (x: int) = x

    let failOnSevens (x: int) =
        if x % 7 = 0 then invalidOp $"seven at {x}" else x * 2

    /// Negative items always fail; the others are doubled.
    let failNegatives (x: int) =
        if x < 0 then invalidOp $"negative {x}" else x * 2

    /// Fails each item's first call in this worker process (remembered in its AppDomain data).
    let failOnce (x: int) =
        let key = $"pyper-test-distributed-seen-{x}"

        if isNull (AppDomain.CurrentDomain.GetData key) then
            AppDomain.CurrentDomain.SetData(key, box true)
            invalidOp $"first call of {x}"
        else
            x * 2

    /// Never returns for items 3 and 5; leaves a file per call in the item's folder.
    let stuckAtThreeAndFive (item: LongItem) =
        File.WriteAllText(Path.Combine(item.Log, $"{item.Value}-{Guid.NewGuid():N}"), "")

        if item.Value = 3 || item.Value = 5 then
            Thread.Sleep Timeout.Infinite

        item.Value * 2

let private tiny = TimeSpan.FromTicks 10L
let private always = fun (_: exn) -> true
let private notSevens (xs: int list) = xs |> List.filter (fun x -> x % 7 <> 0)

/// A policy drawn by the property: what Retry ends in, how many retries (0: no Retry).
type private Plan =
    {
        Negatives: int list
        Positives: int list
        Retries: int
        DeadLetter: bool
    }

let private balance (server: unit -> NatsServer) (plan: Plan) =
    let counts = FailureCounts()
    let dead = ConcurrentBag<int * int>()

    let final =
        if plan.DeadLetter then
            OnError.DeadLetter(fun x _ n -> dead.Add(x, n))
        else
            OnError.Skip

    let policy =
        if plan.Retries = 0 then
            final
        else
            OnError.Retry(plan.Retries, tiny, always, final)

    let items = plan.Negatives @ plan.Positives |> List.sortBy (fun x -> abs x)

    let p =
        Stage.distributed (Remote.failNegatives, server (), workers = 3, onError = policy, counts = counts)

    let results = collect (Pipeline.toSeqFrom items p)
    let failing = int64 plan.Negatives.Length

    int64 results.Length + counts.Skipped + counts.DeadLettered = int64 items.Length
    && sorted results = sorted (List.map ((*) 2) plan.Positives)
    && counts.Skipped + counts.DeadLettered = failing
    && counts.Retries = failing * int64 plan.Retries
    && int64 dead.Count = counts.DeadLettered
    && dead |> Seq.forall (fun (_, n) -> n = plan.Retries + 1)

let private plans =
    gen {
        let! negatives = Gen.listOfLength 4 (Gen.choose (-60, -1)) |> Gen.map List.distinct
        let! positives = Gen.listOfLength 12 (Gen.choose (0, 60)) |> Gen.map List.distinct
        let! retries = Gen.choose (0, 2)
        let! deadLetter = Gen.elements [ true; false ]

        return
            {
                Negatives = negatives
                Positives = positives
                Retries = retries
                DeadLetter = deadLetter
            }
    }

let private available =
    [
        distributedTest "Skip drops the failed items, counted; an ordered stage does not wait for them" 2 (fun f _ ->
            let counts = FailureCounts()

            let p =
                Stage.distributed (
                    Remote.failOnSevens,
                    f.Server,
                    workers = 3,
                    ordered = true,
                    onError = OnError.Skip,
                    counts = counts
                )

            let results = collect (Pipeline.toSeqFrom [ 1..50 ] p)
            Expect.equal results (notSevens [ 1..50 ] |> List.map ((*) 2)) "in order, sevens left out"
            Expect.equal counts.Skipped 7L "seven skipped")

        distributedTest
            "Retry then DeadLetter: the sink gets the item, the rebuilt exception, the attempts"
            2
            (fun f _ ->
                let counts = FailureCounts()
                let dead = ConcurrentBag<int * exn * int>()

                let p =
                    Stage.distributed (
                        Remote.failOnSevens,
                        f.Server,
                        workers = 2,
                        name = "sevens",
                        onError = OnError.Retry(2, tiny, always, OnError.DeadLetter(fun x e n -> dead.Add(x, e, n))),
                        counts = counts
                    )

                let results = collect (Pipeline.toSeqFrom [ 1..30 ] p)
                Expect.equal (sorted results) (notSevens [ 1..30 ] |> List.map ((*) 2)) "the rest"
                let dead = dead |> Seq.sortBy (fun (x, _, _) -> x) |> List.ofSeq
                Expect.equal (dead |> List.map (fun (x, _, _) -> x)) [ 7; 14; 21; 28 ] "dead-lettered items"
                Expect.equal counts.Retries 8L "two retries each"
                Expect.equal counts.DeadLettered 4L "counted"

                for x, e, n in dead do
                    Expect.equal n 3 "three attempts"

                    match e with
                    | :? InvalidOperationException as e ->
                        Expect.equal e.Message $"seven at {x}" "the worker's exception"
                    | e -> failtestf "expected the rebuilt InvalidOperationException, got %O" e)

        distributedTest
            "Retry sends a failed item again until it succeeds; the rate limiter gives each attempt a permit"
            1
        <| fun f _ ->
            let counts = FailureCounts()

            use limiter =
                new ConcurrencyLimiter(ConcurrencyLimiterOptions(PermitLimit = 2, QueueLimit = 100))

            let p =
                Stage.distributed (
                    Remote.failOnce,
                    f.Server,
                    workers = 3,
                    onError = OnError.Retry(2, tiny, (fun e -> e :? InvalidOperationException), OnError.Fail),
                    counts = counts,
                    rateLimit = limiter
                )

            Expect.equal (sorted (collect (Pipeline.toSeqFrom [ 1..20 ] p))) [ 2..2..40 ] "all delivered"
            Expect.equal counts.Retries 20L "one retry per item"
            Expect.equal (limiter.GetStatistics().TotalSuccessfulLeases) 40L "a permit per attempt, taken here"
            Expect.equal (limiter.GetStatistics().CurrentAvailablePermits) 2L "each given back"

        distributedTest "a failing dead-letter sink fails the run" 1 (fun f _ ->
            let p =
                Stage.distributed (
                    Remote.failOnSevens,
                    f.Server,
                    onError = OnError.DeadLetter(fun _ _ _ -> raise (ArgumentException "the sink broke"))
                )

            let e = catchExn (fun () -> collect (Pipeline.toSeqFrom [ 1..20 ] p) |> ignore)
            Expect.isTrue (e :? ArgumentException) $"the sink's exception, got {e}"
            Expect.equal e.Message "the sink broke" "message")

        distributedTest "a cancellation during a backoff wait ends the run at once" 1 (fun f _ ->
            let counts = FailureCounts()

            let p =
                Stage.distributed (
                    Remote.failOnSevens,
                    f.Server,
                    onError = OnError.Retry(3, TimeSpan.FromMinutes 30.0, always, OnError.Fail),
                    counts = counts
                )

            use cts = new CancellationTokenSource()

            let run =
                Task.Run<unit>(fun () ->
                    task {
                        let en = (Pipeline.streamFromSeq [ 7 ] p).GetAsyncEnumerator cts.Token

                        try
                            while! en.MoveNextAsync() do
                                ()
                        finally
                            en.DisposeAsync().AsTask().Wait()
                    })

            waitUntil "the first failure and its backoff wait" (fun () -> counts.Retries = 1L)
            let clock = Stopwatch.StartNew()
            cts.Cancel()
            let e = catchExn (fun () -> withinGuard "a cancelled run" (fun () -> run))
            Expect.isTrue (e :? OperationCanceledException) $"cancelled, got {e}"
            // The wait was at least 15 minutes; the hang guard is one.
            Expect.isLessThan clock.Elapsed.TotalMinutes 1.0 "well before the backoff's end")

        distributedTest "books balance: results + skipped + dead-lettered = input, over random policies" 2 (fun f _ ->
            let property = Prop.forAll (Arb.fromGen plans) (balance (fun () -> f.Server))
            Check.One(Config.QuickThrowOnFailure.WithMaxTest 4, property))

        distributedTest "a stuck item times out, dead-lettered; its worker gives it up and serves the rest" 1
        <| fun f _ ->
            let log = Directory.CreateTempSubdirectory("pyper-calls-").FullName

            try
                let counts = FailureCounts()
                let dead = ConcurrentBag<int * exn>()
                // A short AckWait: a stuck item that were not terminated would be redelivered soon.
                let server = f.Server.WithAckWait(TimeSpan.FromSeconds 1.0)

                let p =
                    Stage.distributed (
                        Remote.stuckAtThreeAndFive,
                        server,
                        name = "stuck",
                        timeout = TimeSpan.FromSeconds 2.0,
                        onError = OnError.DeadLetter(fun x e _ -> dead.Add(x.Value, e)),
                        counts = counts
                    )

                // One worker host serving two items at once: 3 and 5, one after the other, would hold
                // both of its slots if it did not give them up.
                let items = [ for v in 0..9 -> { Log = log; Millis = 0; Value = v } ]
                let results = collect (Pipeline.toSeqFrom items p)
                let rest = [ 0; 1; 2; 4; 6; 7; 8; 9 ]
                Expect.equal (sorted results) (rest |> List.map ((*) 2)) "the rest, served once both gave up"
                Expect.equal counts.TimedOut 2L "two timed out"

                match dead |> Seq.sortBy fst |> List.ofSeq with
                | [ 3, (:? TimeoutException as e3); 5, (:? TimeoutException as e5) ] ->
                    Expect.stringContains e3.Message "Stage 'stuck' (map)" "names the stage"
                    Expect.stringContains e3.Message "input position 3 (from 0)" "and the item's position"
                    Expect.stringContains e5.Message "input position 5 (from 0)" "and the other's"
                | other -> failtestf "expected items 3 and 5 with a TimeoutException, got %A" other

                let calls =
                    Directory.GetFiles log
                    |> Array.map (fun f -> (Path.GetFileName f).Split('-')[0])
                    |> List.ofArray

                Expect.equal (sorted calls) (List.map string [ 0..9 ] |> sorted) "each item ran once: none redelivered"
            finally
                Directory.Delete(log, true)

        distributedTest "a stuck item without onError fails the run with a TimeoutException" 1 (fun f _ ->
            let log = Directory.CreateTempSubdirectory("pyper-calls-").FullName

            try
                let p =
                    Stage.distributed (Remote.stuckAtThreeAndFive, f.Server, timeout = TimeSpan.FromSeconds 2.0)

                let items = [ for v in 0..3 -> { Log = log; Millis = 0; Value = v } ]

                match catchExn (fun () -> collect (Pipeline.toSeqFrom items p) |> ignore) with
                | :? TimeoutException as e ->
                    Expect.stringContains e.Message "input position 3" "the position"
                    Expect.stringContains e.Message "ran longer than the stage's timeout" "says why"
                | e -> failtestf "expected TimeoutException, got %O" e
            finally
                Directory.Delete(log, true))

        distributedTest "under Skip, losing the server's queues still fails the run: it is not an item's failure" 1
        <| fun f _ ->
            let counts = FailureCounts()

            let server =
                f.Server.WithAckWait(TimeSpan.FromSeconds 1.0).WithGiveUpAfter(TimeSpan.FromSeconds 30.0)

            let p =
                Stage.distributed (
                    DistributedTests.Remote.slow,
                    server,
                    workers = 2,
                    name = "remote",
                    onError = OnError.Skip,
                    counts = counts
                )

            let mutable seen = 0

            let e =
                catchExn (fun () ->
                    withinGuard "a run whose queues vanished" (fun () ->
                        Task.Run<unit>(fun () ->
                            Pipeline.toSeqFrom [ 1..200 ] p
                            |> Seq.iter (fun _ ->
                                seen <- seen + 1

                                if seen = 5 then
                                    f.Kill()
                                    f.RestartWithoutStorage()))))

            Expect.isTrue (e :? IOException) $"IOException, got {e}"
            Expect.stringContains e.Message "gone from the NATS server" "says what happened"
            Expect.equal counts.Skipped 0L "no item skipped for it"

        distributedTest "C# facade: DistributedStage.Map and MapDistributed take the policy options" 1 (fun f _ ->
            withinGuard "the C# policy checks" (fun () ->
                task { do! Pyper.CSharp.Tests.DistributedFacadeTests.CheckPolicies f.Server }))

        distributedTest "distributedBound: the argument goes once with the stage; each worker applies f to it once" 1
        <| fun f _ ->
            let arg =
                {
                    Factor = 3
                    Key = Guid.NewGuid().ToString "N"
                }

            // One worker loop here: one announcement, served by both slots of the one worker host.
            let p = Stage.distributedBound (Remote.setUp, arg, f.Server)
            let results = collect (Pipeline.toSeqFrom [ 1..40 ] p)
            Expect.equal (results |> List.map snd |> sorted) [ 3..3..120 ] "the factor crossed"
            Expect.equal (results |> List.map fst |> List.distinct) [ 1 ] "one set-up in the worker process"

            let counts = FailureCounts()

            let q =
                Stage.distributedBound (
                    Remote.scaleUnlessSeven,
                    5,
                    f.Server,
                    ordered = true,
                    onError = OnError.Skip,
                    counts = counts
                )

            Expect.equal (collect (Pipeline.toSeqFrom [ 1..8 ] q)) [ 5; 10; 15; 20; 25; 30; 40 ] "with a policy too"
            Expect.equal counts.Skipped 1L "seven skipped"

        testCase "distributedBound refuses an argument that cannot cross, when built" (fun () ->
            let arg = { Make = Func<int>(fun () -> 1) }

            match
                catchExn (fun () ->
                    Stage.distributedBound (Remote.ignoreArg, arg, NatsServer "nats://127.0.0.1:1", name = "b")
                    |> ignore)
            with
            | :? ArgumentException as e ->
                Expect.equal e.ParamName "arg" "the option"
                Expect.stringContains e.Message "Stage 'b' (map)" "names the stage"
                Expect.stringContains e.Message "bound argument" "says what"
            | e -> failtestf "expected ArgumentException, got %O" e)

        testCase "policy options are checked when the stage is built, naming the stage and option" (fun () ->
            let server = NatsServer "nats://127.0.0.1:1"

            let throwsArg (paramName: string) (fragment: string) (build: unit -> obj) =
                match catchExn (build >> ignore) with
                | :? ArgumentException as a ->
                    Expect.equal a.ParamName paramName "names the option"
                    Expect.stringContains a.Message fragment "says which stage and what is allowed"
                | e -> failtestf "expected an ArgumentException, got %O" e

            throwsArg "timeout" "Stage 's' (map): timeout must be positive" (fun () ->
                box (Stage.distributed (Remote.failOnSevens, server, name = "s", timeout = TimeSpan.Zero)))

            throwsArg "onError" "Stage 's' (map): onError's Retry times must be 0 to 1000" (fun () ->
                box (
                    Stage.distributed (
                        Remote.failOnSevens,
                        server,
                        name = "s",
                        onError = OnError.Retry(-1, tiny, always, OnError.Fail)
                    )
                ))

            throwsArg "onError" "must end in Fail, Skip or DeadLetter" (fun () ->
                box (
                    Stage.distributed (
                        Remote.failOnSevens,
                        server,
                        onError = OnError.Retry(1, tiny, always, OnError.Retry(1, tiny, always, OnError.Fail))
                    )
                ))

            throwsArg "rateLimit" "rateLimit is null" (fun () ->
                box (Stage.distributed (Remote.failOnSevens, server, rateLimit = null))))
    ]

let tests =
    match natsServerPath with
    | Some _ -> testSequenced (testList "distributed policies" available)
    | None -> testList "distributed policies" []
