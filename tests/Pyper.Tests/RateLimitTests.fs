/// Rate limits per stage (issue #17): a `RateLimiter` given as a map stage's `rateLimit`.
module Pyper.Tests.RateLimitTests

open System
open System.Diagnostics
open System.Threading
open System.Threading.RateLimiting
open System.Threading.Tasks
open Expecto
open Pyper
open Pyper.FSharp
open Pyper.Tests.Helpers

/// A lease of the test limiters: counts its disposal once.
type private Lease(acquired: bool, onDispose: unit -> unit) =
    inherit RateLimitLease()
    let mutable disposed = 0
    override _.IsAcquired = acquired
    override _.MetadataNames = Seq.empty

    override _.TryGetMetadata(_: string, metadata: byref<obj>) =
        metadata <- null
        false

    override _.Dispose(_: bool) =
        if Interlocked.Exchange(&disposed, 1) = 0 then
            onDispose ()

/// A limiter that grants exactly the permits the test releases, and counts them: how many were
/// taken, how many given back, how many callers wait.
type private Gated() =
    inherit RateLimiter()
    let gate = new SemaphoreSlim(0)
    let taken = ref 0
    let returned = ref 0
    let waiting = ref 0

    member _.Grant(n: int) = gate.Release n |> ignore
    member _.Taken = Volatile.Read &taken.contents
    member _.Returned = Volatile.Read &returned.contents
    member _.Waiting = Volatile.Read &waiting.contents
    override _.IdleDuration = Nullable()
    override _.GetStatistics() = null
    override _.AttemptAcquireCore _ = new Lease(false, ignore)

    override _.AcquireAsyncCore(_, token) =
        ValueTask<RateLimitLease>(
            task {
                Interlocked.Increment &waiting.contents |> ignore

                try
                    do! gate.WaitAsync token
                finally
                    Interlocked.Decrement &waiting.contents |> ignore

                Interlocked.Increment &taken.contents |> ignore
                return new Lease(true, (fun () -> Interlocked.Increment &returned.contents |> ignore)) :> RateLimitLease
            }
        )

type private Form =
    | Threads
    | Tasks

/// A map stage of `form` calling `f` under `limiter`.
let private stage form (f: int -> int) (limiter: RateLimiter) workers onError =
    match form with
    | Threads -> Stage.map (f, workers = workers, rateLimit = limiter, ?onError = onError, name = "limited")
    | Tasks ->
        Stage.mapTask (
            (fun x (_: CancellationToken) -> task { return f x }),
            workers = workers,
            rateLimit = limiter,
            ?onError = onError,
            name = "limited"
        )

/// The next result of `results`, read with a hang guard.
let private next (results: Collections.Generic.IEnumerator<int>) =
    withinGuard "the next result" (fun () ->
        Task.Run(fun () ->
            Expect.isTrue (results.MoveNext()) "a result"
            results.Current))

/// The rest of `results`, read with a hang guard.
let private rest (results: Collections.Generic.IEnumerator<int>) =
    withinGuard "the other results" (fun () ->
        Task.Run(fun () ->
            [
                while results.MoveNext() do
                    yield results.Current
            ]))

let private perForm form =
    let name s = $"{form}: {s}"

    [
        leakTest (name "each call waits for a permit and gives it back") (fun () ->
            let limiter = new Gated()
            let mutable calls = 0

            let f x =
                Interlocked.Increment &calls |> ignore
                x + 1

            use results =
                (Pipeline.toSeqFrom [ 1..20 ] (stage form f limiter 3 None)).GetEnumerator()

            limiter.Grant 5

            for _ in 1..5 do
                next results |> ignore

            // Five permits: exactly five calls, whatever the three workers do meanwhile.
            Expect.equal (Volatile.Read &calls) 5 "one call per permit"
            limiter.Grant 15
            Expect.equal (rest results).Length 15 "the other results"
            Expect.equal limiter.Taken 20 "one permit per item"
            Expect.equal limiter.Returned 20 "every permit given back")

        leakTest (name "no result waits for another item's permit: each permit's result arrives") (fun () ->
            let limiter = new Gated()
            // Three workers, and permits granted one at a time as results are read: a worker that
            // held a result while it waited for its next item's permit would stall the run.
            use results =
                (Pipeline.toSeqFrom [ 1..60 ] (stage form id limiter 3 None)).GetEnumerator()

            let got =
                [
                    for _ in 1..60 do
                        limiter.Grant 1
                        next results
                ]

            Expect.equal (sorted got) [ 1..60 ] "one result per permit, each as it was granted"
            Expect.isEmpty (rest results) "nothing more"
            Expect.equal limiter.Returned 60 "every permit given back")

        leakTest (name "a retry takes a permit of its own") (fun () ->
            let limiter = new Gated()
            limiter.Grant 1000
            let seen = Collections.Concurrent.ConcurrentDictionary<int, int>()

            let f x =
                if seen.AddOrUpdate(x, 1, (fun _ n -> n + 1)) = 1 then
                    failwith "first call fails"

                x

            let retry = OnError.Retry(1, TimeSpan.Zero, (fun _ -> true), OnError.Fail)

            let results =
                collect (Pipeline.toSeqFrom [ 1..10 ] (stage form f limiter 2 (Some retry)))

            Expect.equal (sorted results) [ 1..10 ] "all delivered"
            Expect.equal limiter.Taken 20 "two calls, two permits per item"
            Expect.equal limiter.Returned 20 "all given back")

        leakTest (name "cancelling the run ends a permit wait at once") (fun () ->
            let limiter = new Gated()
            use cts = new CancellationTokenSource()

            let run =
                Task.Run(fun () ->
                    Pipeline.streamFromSeq [ 1..10 ] (stage form id limiter 2 None)
                    |> Pipeline.toBlockingSeq cts.Token
                    |> Seq.length)

            waitUntil "both workers wait for a permit" (fun () -> limiter.Waiting = 2)
            cts.Cancel()

            let e =
                withinGuard "the cancelled run" (fun () -> run.ContinueWith(fun (t: Task<int>) -> t.Exception))

            Expect.isNotNull e "the run ended with an exception"
            Expect.isTrue (e.InnerException :? OperationCanceledException) $"cancelled, got {e.InnerException}"
            Expect.equal limiter.Taken 0 "no permit given")

        leakTest (name "a refusal with a retry-after time waits and asks again") (fun () ->
            use limiter =
                new TokenBucketRateLimiter(
                    TokenBucketRateLimiterOptions(
                        TokenLimit = 5,
                        TokensPerPeriod = 5,
                        ReplenishmentPeriod = TimeSpan.FromMilliseconds 40.0,
                        QueueLimit = 0,
                        AutoReplenishment = true
                    )
                )

            let clock = Stopwatch.StartNew()
            let results = collect (Pipeline.toSeqFrom [ 1..20 ] (stage form id limiter 2 None))
            let elapsed = clock.Elapsed
            Expect.equal (sorted results) [ 1..20 ] "every item, none failed"
            // 5 tokens at once, then 5 per 40 ms: 20 calls cannot finish before 3 periods (a lower
            // bound, which a loaded machine only makes longer).
            Expect.isGreaterThanOrEqual elapsed (TimeSpan.FromMilliseconds 100.0) "the limit held")

        leakTest (name "a refusal without a retry-after time fails the run") (fun () ->
            use limiter =
                new ConcurrencyLimiter(ConcurrencyLimiterOptions(PermitLimit = 1, QueueLimit = 0))

            use held = limiter.AttemptAcquire 1
            Expect.isTrue held.IsAcquired "the test holds the only permit"

            let e =
                Expect.throwsC
                    (fun () -> collect (Pipeline.toSeqFrom [ 1..3 ] (stage form id limiter 1 None)) |> ignore)
                    id

            let e =
                match e with
                | :? AggregateException as a -> a.InnerException
                | e -> e

            Expect.isTrue (e :? InvalidOperationException) $"an InvalidOperationException, got {e}"
            Expect.stringContains e.Message "Stage 'limited' (map): its rate limiter refused a permit" "says why")
    ]

let tests =
    testList
        "rate limits"
        [
            yield! perForm Threads
            yield! perForm Tasks

            leakTest "one limiter shared by two stages counts both" (fun () ->
                let limiter = new Gated()
                limiter.Grant 1000

                let p =
                    Stage.map ((fun x -> x + 1), rateLimit = limiter, workers = 2)
                    >=> Stage.mapTask ((fun x -> Task.FromResult(x * 2)), rateLimit = limiter, workers = 2)

                let results = collect (Pipeline.toSeqFrom [ 1..50 ] p)
                Expect.equal (sorted results) [ for x in 1..50 -> (x + 1) * 2 ] "results"
                Expect.equal limiter.Taken 100 "one permit per call in each stage")

            leakTest "worker processes: each item is sent once its permit is taken" (fun () ->
                let limiter = new Gated()

                let p =
                    Stage.map (ProcessTests.Remote.triple, workers = 2, multiprocess = true, rateLimit = limiter)

                use results = (Pipeline.toSeqFrom [ 1..10 ] p).GetEnumerator()
                limiter.Grant 3
                let first = [ for _ in 1..3 -> next results ]
                waitUntil "both workers wait for a permit" (fun () -> limiter.Waiting = 2)
                Expect.equal limiter.Taken 3 "three permits, three items"
                limiter.Grant 7
                Expect.equal (sorted (first @ rest results)) [ for x in 1..10 -> x * 3 ] "every result"
                Expect.equal limiter.Returned 10 "every permit given back")

            testCase "a null limiter is refused" (fun () ->
                let e =
                    Expect.throwsC
                        (fun () -> Stage.map ((fun (x: int) -> x), rateLimit = null, name = "s") |> ignore)
                        id

                Expect.equal (e :?> ArgumentException).ParamName "rateLimit" "names the option"
                Expect.stringContains e.Message "Stage 's' (map): rateLimit is null" "says which stage")
        ]
