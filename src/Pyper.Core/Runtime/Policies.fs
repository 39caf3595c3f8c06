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

/// One call's result, written by the thread that made it (a new slot per call, so a call that
/// is abandoned writes only to its own).
[<Sealed; AllowNullLiteral>]
type internal Slot<'b>() =
    member val Value = Unchecked.defaultof<'b> with get, set
    member val Error: exn = null with get, set

/// The thread that makes a thread stage's calls when the stage has a timeout: its worker waits
/// for each call at most the timeout, and abandons this thread (which ends once its call returns)
/// when the call runs longer.
[<Sealed; AllowNullLiteral>]
type internal Caller(name: string) =
    let go = new SemaphoreSlim(0)
    let finished = new SemaphoreSlim(0)
    let mutable job: Action = null
    let mutable stop = false

    let body () =
        let mutable run = true

        while run do
            go.Wait()

            if Volatile.Read &stop then
                run <- false
            else
                job.Invoke()

                if Volatile.Read &stop then
                    run <- false
                else
                    finished.Release() |> ignore

    let thread = Thread(body, IsBackground = true, Name = name)
    do thread.Start()

    /// Runs `work` on this thread; true when it finished within `timeout`.
    member _.Run(work: Action, timeout: TimeSpan) =
        job <- work
        go.Release() |> ignore
        finished.Wait timeout

    /// Ends the thread once its current call (if any) has returned; `wait` joins it.
    member _.Stop(wait: bool) =
        Volatile.Write(&stop, true)
        go.Release() |> ignore

        if wait then
            thread.Join()

/// The policy-aware map loops (chosen when a stage is built with a timeout or a failure policy;
/// a stage without them runs the plain loops of `Loops`, untouched).
module internal Policies =
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
    /// contract (a null Task...) or the run is ending; when the run is stopping (cancelled, or
    /// failed elsewhere), the item's failure is moot and the worker leaves as stopped.
    let private ends (ctx: RunContext) (e: exn) =
        if (e :? RunAbortedException) || (e :? NullResultException) then
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

    /// A blocking map stage's loop under a policy. With a timeout, items are taken one at a time
    /// (the batch's ticket is then the item's input position) and each call runs on a `Caller`.
    let mapThread (p: StagePolicy<'a>) (f: 'a -> 'b) (env: WorkerEnv<'a, 'b>) =
        let input = Array.zeroCreate<'a> Tuning.MaxBatch
        let output = Array.zeroCreate<'b> Tuning.MaxBatch
        let token = env.Ctx.Token
        let mutable caller: Caller = null
        let callerName = $"Pyper/{env.Name}/{env.Worker}/call"

        let call (x: 'a) (position: int64) =
            match p.Timeout with
            | None -> f x
            | Some t ->
                if isNull caller then
                    caller <- Caller callerName

                let slot = Slot<'b>()

                let work =
                    Action(fun () ->
                        try
                            slot.Value <- f x
                        with e ->
                            slot.Error <- e)

                if caller.Run(work, t) then
                    if not (isNull slot.Error) then
                        ExceptionDispatchInfo.Throw slot.Error

                    slot.Value
                else
                    caller.Stop false
                    caller <- null
                    p.Counts.AddAbandoned()
                    p.Counts.AddTimedOut()
                    raise (timedOut env position t null)

        try
            let mutable go = true

            while go do
                let limit = if p.Timeout.IsSome then 1 else env.Sizer.Limit
                let struct (n, ticket) = Wait.take env.Input input limit false

                if n = 0 then
                    go <- false
                else
                    let start = Stopwatch.GetTimestamp()
                    let mutable k = 0

                    for i in 0 .. n - 1 do
                        let x = input[i]
                        let mutable attempts = 0
                        let mutable pending = true

                        while pending do
                            attempts <- attempts + 1
                            // Outside the item's failure handling: a refused permit fails the run.
                            let lease = permit env p
                            let mutable failure = null

                            try
                                try
                                    output[k] <- call x (ticket + int64 i)
                                    k <- k + 1
                                    pending <- false
                                finally
                                    if not (isNull lease) then
                                        lease.Dispose()
                            with e ->
                                failure <- e

                            if not (isNull failure) then
                                match next env.Ctx p x failure attempts with
                                | ValueSome wait ->
                                    if token.WaitHandle.WaitOne wait then
                                        raise (OperationCanceledException token)
                                | ValueNone -> pending <- false

                    env.Sizer.Record(n, start)
                    Buffers.clear input n

                    if not (isNull env.Turnstile) then
                        Wait.turn env.Turnstile ticket

                    Wait.write env.Output output k
                    env.Probe.Out k

                    if not (isNull env.Turnstile) then
                        env.Turnstile.Advance()

                    Buffers.clear output k
                    env.Input.Release n
        finally
            if not (isNull caller) then
                caller.Stop true

    /// One call of an async function under a timeout: the function's token is cancelled at the
    /// timeout (or when the run is), and a function that ignores it is no longer waited for.
    let private callWithin
        (env: WorkerEnv<'a, 'b>)
        (p: StagePolicy<'a>)
        (t: TimeSpan)
        (f: 'a -> CancellationToken -> ValueTask<'b>)
        (x: 'a)
        (position: int64)
        : Task<'b> =
        task {
            use cts = CancellationTokenSource.CreateLinkedTokenSource env.Ctx.Token
            cts.CancelAfter t

            let call =
                try
                    (f x cts.Token).AsTask()
                with e ->
                    Task.FromException<'b> e

            try
                return! call.WaitAsync t
            with
            // WaitAsync's own timeout (the call may have ended since, cancelled by `cts`), not a
            // TimeoutException of the call itself.
            | :? TimeoutException as e when
                not (call.IsFaulted && obj.ReferenceEquals(call.Exception.InnerException, e))
                ->
                cts.Cancel()
                // The late call is no longer awaited: observe its failure, if it fails.
                call.ContinueWith(
                    (fun (t: Task<'b>) -> t.Exception |> ignore),
                    TaskContinuationOptions.OnlyOnFaulted
                    ||| TaskContinuationOptions.ExecuteSynchronously
                )
                |> ignore

                p.Counts.AddTimedOut()
                return raise (timedOut env position t e)
            | :? OperationCanceledException as e when
                cts.IsCancellationRequested && not env.Ctx.Token.IsCancellationRequested
                ->
                p.Counts.AddTimedOut()
                return raise (timedOut env position t e)
        }

    /// The policy loop every awaiting executor shares (async workers, worker processes): takes
    /// items (one at a time when `single`: the batch's ticket is then the item's input position),
    /// calls `ready` before each attempt (outside the policy: a failure there ends the worker),
    /// then `call` with the item and its input position, and applies the policy to a failed call.
    let mapEach
        (p: StagePolicy<'a>)
        (single: bool)
        (ready: unit -> Task)
        (call: 'a -> int64 -> Task<'b>)
        (env: WorkerEnv<'a, 'b>)
        : Task =
        let input = Array.zeroCreate<'a> Tuning.MaxBatch
        let output = Array.zeroCreate<'b> Tuning.MaxBatch
        let token = env.Ctx.Token

        task {
            let mutable go = true

            while go do
                let limit = if single then 1 else env.Sizer.Limit
                let! struct (n, ticket) = Wait.takeAsync env.Input input limit false

                if n = 0 then
                    go <- false
                else
                    let start = Stopwatch.GetTimestamp()
                    let mutable k = 0
                    let mutable i = 0

                    while i < n do
                        let x = input[i]
                        let mutable attempts = 0
                        let mutable pending = true

                        while pending do
                            attempts <- attempts + 1
                            do! ready ()
                            let! lease = permitAsync env p
                            let mutable failure = null

                            try
                                try
                                    let! r = call x (ticket + int64 i)
                                    output[k] <- r
                                    k <- k + 1
                                    pending <- false
                                finally
                                    if not (isNull lease) then
                                        lease.Dispose()
                            with e ->
                                failure <- e

                            if not (isNull failure) then
                                match next env.Ctx p x failure attempts with
                                | ValueSome wait -> do! Task.Delay(wait, token)
                                | ValueNone -> pending <- false

                        i <- i + 1

                    env.Sizer.Record(n, start)
                    Buffers.clear input n

                    if not (isNull env.Turnstile) then
                        do! Wait.turnAsync env.Turnstile ticket

                    if k > 0 then
                        do! Wait.writeAsync env.Output output k
                        env.Probe.Out k

                    if not (isNull env.Turnstile) then
                        env.Turnstile.Advance()

                    Buffers.clear output k
                    env.Input.Release n
        }

    /// An async map stage's loop under a policy. With a timeout, items are taken one at a time.
    let mapPool (p: StagePolicy<'a>) (f: 'a -> CancellationToken -> ValueTask<'b>) (env: WorkerEnv<'a, 'b>) : Task =
        let token = env.Ctx.Token

        let call (x: 'a) (position: int64) : Task<'b> =
            match p.Timeout with
            | None -> (f x token).AsTask()
            | Some t -> callWithin env p t f x position

        mapEach p p.Timeout.IsSome (fun () -> Task.CompletedTask) call env
