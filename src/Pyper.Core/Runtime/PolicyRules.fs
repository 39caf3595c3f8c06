namespace Pyper

open System
open System.Diagnostics
open System.Runtime.ExceptionServices
open System.Threading
open System.Threading.RateLimiting
open System.Threading.Tasks
open Pyper.FSharp

/// A stage's failure rules, checked when the stage was built.
[<NoEquality; NoComparison>]
type internal StagePolicy<'a> =
    {
        /// How long one call may run.
        Timeout: TimeSpan option
        OnError: OnError<'a>
        /// The user's counts, or private ones.
        Counts: FailureCounts
        /// One permit of it is taken before each call (null: no rate limit).
        RateLimit: RateLimiter
    }

/// A stage's policy rules: the option checks, the wait before a retry, what a failure leads to,
/// the timeout's exception and the rate limiter's permits (the loops are in `Policies`).
module internal PolicyRules =
    /// The most retries a policy may ask for.
    let MaxRetries = 1000

    /// The longest wait between two attempts.
    let MaxBackoff = TimeSpan.FromHours 1.0

    /// The longest timeout (the longest single wait .NET timers take, about 49.7 days).
    let MaxTimeout = TimeSpan.FromMilliseconds(float (UInt32.MaxValue - 2u))

    /// Checks a stage's timeout and failure policy (`stage` names the stage in messages); None
    /// when neither asks for anything (the stage then runs the plain loops).
    let check
        (stage: string)
        (timeout: TimeSpan option)
        (onError: OnError<'a> option)
        (counts: FailureCounts option)
        (rateLimit: RateLimiter option)
        =
        match rateLimit with
        | Some r when isNull r -> raise (ArgumentNullException("rateLimit", $"{stage}: rateLimit is null."))
        | _ -> ()

        match timeout with
        | Some t when t <= TimeSpan.Zero || t > MaxTimeout ->
            raise (
                ArgumentOutOfRangeException(
                    "timeout",
                    t,
                    $"{stage}: timeout must be positive and at most {MaxTimeout} (the longest timer)."
                )
            )
        | _ -> ()

        let final (rule: OnError<'a>) =
            match rule with
            | OnError.DeadLetter sink when isNull (box sink) ->
                raise (ArgumentNullException("onError", $"{stage}: the dead-letter sink of onError is null."))
            | OnError.Retry _ ->
                raise (
                    ArgumentException(
                        $"{stage}: onError's Retry must end in Fail, Skip or DeadLetter (otherwise), not in another Retry; add the retries up instead.",
                        "onError"
                    )
                )
            | _ -> ()

        match onError with
        | Some(OnError.Retry(times, backoff, retryOn, otherwise)) ->
            if times < 0 || times > MaxRetries then
                raise (
                    ArgumentOutOfRangeException(
                        "onError",
                        times,
                        $"{stage}: onError's Retry times must be 0 to {MaxRetries}; got {times}."
                    )
                )

            if backoff < TimeSpan.Zero || backoff > MaxBackoff then
                raise (
                    ArgumentOutOfRangeException(
                        "onError",
                        backoff,
                        $"{stage}: onError's Retry backoff must be 0 to {MaxBackoff}; got {backoff}."
                    )
                )

            if isNull (box retryOn) then
                raise (ArgumentNullException("onError", $"{stage}: onError's Retry retryOn is null."))

            if isNull (box otherwise) then
                raise (ArgumentNullException("onError", $"{stage}: onError's Retry otherwise is null."))

            final otherwise
        | Some rule when isNull (box rule) -> raise (ArgumentNullException("onError", $"{stage}: onError is null."))
        | Some rule -> final rule
        | None -> ()

        match timeout, onError, rateLimit with
        | None, (None | Some OnError.Fail), None -> None
        | _ ->
            Some
                {
                    Timeout = timeout
                    OnError = defaultArg onError OnError.Fail
                    Counts = defaultArg counts (FailureCounts())
                    RateLimit = Option.toObj rateLimit
                }

    /// The wait before retry `k` (from 1): backoff * 2^(k-1), capped, then a random time between
    /// half of it and all of it.
    let backoff (backoff: TimeSpan) (k: int) =
        let full =
            min (float backoff.Ticks * Math.Pow(2.0, float (k - 1))) (float MaxBackoff.Ticks)

        TimeSpan.FromTicks(int64 (full * (0.5 + 0.5 * Random.Shared.NextDouble())))

    /// Rethrows `e` when it must end the worker whatever the policy: the function broke its
    /// contract (a null Task...), the worker's state failed (`init` or `dispose`) or the run is ending; when the run is stopping (cancelled, or
    /// failed elsewhere), the item's failure is moot and the worker leaves as stopped.
    let private ends (ctx: RunContext) (e: exn) =
        if
            (e :? RunAbortedException)
            || (e :? NullResultException)
            || (e :? StateFailureException)
        then
            ExceptionDispatchInfo.Throw e

        if ctx.Token.IsCancellationRequested then
            raise (OperationCanceledException ctx.Token)

    let private settle (p: StagePolicy<'a>) (rule: OnError<'a>) (x: 'a) (e: exn) (attempts: int) =
        match rule with
        | OnError.Skip -> p.Counts.AddSkipped()
        | OnError.DeadLetter sink ->
            sink x e attempts
            p.Counts.AddDeadLettered()
        | _ -> ExceptionDispatchInfo.Throw e

    /// After attempt `attempts` at `x` failed with `e`: the wait before the next attempt, or
    /// ValueNone once the item is settled (skipped or dead-lettered); rethrows `e` when the run
    /// must fail (or is stopping).
    let next (ctx: RunContext) (p: StagePolicy<'a>) (x: 'a) (e: exn) (attempts: int) =
        ends ctx e

        match p.OnError with
        | OnError.Retry(times, delay, retryOn, otherwise) ->
            if attempts <= times && retryOn e then
                p.Counts.AddRetry()
                ValueSome(backoff delay attempts)
            else
                settle p otherwise x e attempts
                ValueNone
        | rule ->
            settle p rule x e attempts
            ValueNone

    let timedOut (env: WorkerEnv<'a, 'b>) (position: int64) (t: TimeSpan) (inner: exn) =
        TimeoutException(
            $"Stage '{env.Name}' (map): the item at input position {position} (from 0) ran longer than the stage's timeout ({t}).",
            inner
        )

    let private refused (env: WorkerEnv<'a, 'b>) =
        InvalidOperationException(
            $"Stage '{env.Name}' (map): its rate limiter refused a permit without a retry-after time; give the limiter a queue (QueueLimit at least the stage's workers) so that the stage can wait for permits."
        )

    let private retryAfter (lease: RateLimitLease) =
        match lease.TryGetMetadata MetadataName.RetryAfter with
        | true, after -> ValueSome after
        | _ -> ValueNone

    /// Blocks until the stage's rate limiter grants one permit (null when the stage has none):
    /// waits in the limiter's queue, or, when it refuses with a retry-after time, that long before
    /// asking again. The caller disposes the lease once the call has returned.
    let permit (env: WorkerEnv<'a, 'b>) (p: StagePolicy<'a>) : RateLimitLease =
        if isNull p.RateLimit then
            null
        else
            let token = env.Ctx.Token

            let mutable lease =
                p.RateLimit.AcquireAsync(1, token).AsTask().GetAwaiter().GetResult()

            while not lease.IsAcquired do
                let after = retryAfter lease
                lease.Dispose()

                match after with
                | ValueSome t ->
                    if token.WaitHandle.WaitOne t then
                        raise (OperationCanceledException token)
                | ValueNone -> raise (refused env)

                lease <- p.RateLimit.AcquireAsync(1, token).AsTask().GetAwaiter().GetResult()

            lease

    /// `permit` for async workers: waits without blocking a thread.
    let permitAsync (env: WorkerEnv<'a, 'b>) (p: StagePolicy<'a>) : ValueTask<RateLimitLease> =
        if isNull p.RateLimit then
            ValueTask<RateLimitLease>(null: RateLimitLease)
        else
            ValueTask<RateLimitLease>(
                task {
                    let token = env.Ctx.Token
                    let! first = p.RateLimit.AcquireAsync(1, token)
                    let mutable lease = first

                    while not lease.IsAcquired do
                        let after = retryAfter lease
                        lease.Dispose()

                        match after with
                        | ValueSome t -> do! Task.Delay(t, token)
                        | ValueNone -> raise (refused env)

                        let! next = p.RateLimit.AcquireAsync(1, token)
                        lease <- next

                    return lease
                }
            )
