namespace Pyper

open System
open System.Diagnostics
open System.Runtime.ExceptionServices
open System.Threading
open System.Threading.RateLimiting
open System.Threading.Tasks
open Pyper.FSharp

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
    open PolicyRules

    /// A stage with a timeout (each call is timed on its own) or a rate limit (a worker that took
    /// several items would hold the results it made while it waits for the next item's permit,
    /// which may come only once they are read) takes its items one at a time.
    let private oneAtATime (p: StagePolicy<'a>) =
        p.Timeout.IsSome || not (isNull p.RateLimit)

    /// True when the batch `ticket` may write now: always in an unordered stage; in an ordered
    /// one, when the batches before it have left (a poll: a worker about to wait out a backoff
    /// does not also wait for its turn, which would put its backoff after the others').
    let private isTurn (env: WorkerEnv<'a, 'b>) (ticket: int64) =
        isNull env.Turnstile || env.Turnstile.IsTurn ticket

    /// A blocking map stage's loop under a policy. With a timeout or a rate limit, items are taken
    /// one at a time (the batch's ticket is then the item's input position; a result is never
    /// held while its worker waits for the next item's permit), and under a timeout each call runs
    /// on a `Caller`. Before a retry's backoff, the batch's results so far leave (when it is their turn).
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
                let limit = if oneAtATime p then 1 else env.Sizer.Limit
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
                                    if k > 0 && isTurn env ticket then
                                        // A backoff does not hold the results made before it.
                                        Wait.write env.Output output k
                                        env.Probe.Out k
                                        Buffers.clear output k
                                        k <- 0

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
    /// Before a retry's backoff, the batch's results so far leave (when it is their turn).
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
        let waiter = AsyncWaiter()

        task {
            // Mutables are declared once, here: inside a loop of a task each would be a new ref cell.
            let mutable go = true
            let mutable k = 0
            let mutable i = 0
            let mutable attempts = 0
            let mutable pending = true
            let mutable failure: exn = null

            while go do
                let limit = if single then 1 else env.Sizer.Limit
                let! struct (n, ticket) = Wait.takeWith waiter env.Input input limit false

                if n = 0 then
                    go <- false
                else
                    let start = Stopwatch.GetTimestamp()
                    k <- 0
                    i <- 0

                    while i < n do
                        let x = input[i]
                        attempts <- 0
                        pending <- true

                        while pending do
                            attempts <- attempts + 1
                            do! ready ()
                            let! lease = permitAsync env p
                            failure <- null

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
                                | ValueSome wait ->
                                    if k > 0 && isTurn env ticket then
                                        // A backoff does not hold the results made before it.
                                        do! Wait.writeWith waiter env.Output output k
                                        env.Probe.Out k
                                        Buffers.clear output k
                                        k <- 0

                                    do! Task.Delay(wait, token)
                                | ValueNone -> pending <- false

                        i <- i + 1

                    env.Sizer.Record(n, start)
                    Buffers.clear input n

                    if not (isNull env.Turnstile) then
                        while not (isNull (env.Turnstile.WaitTurn(ticket, waiter.Arm()))) do
                            do! waiter.Wait

                    if k > 0 then
                        do! Wait.writeWith waiter env.Output output k
                        env.Probe.Out k

                    if not (isNull env.Turnstile) then
                        env.Turnstile.Advance()

                    Buffers.clear output k
                    env.Input.Release n
        }

    /// An async map stage's loop under a policy. With a timeout or a rate limit, items are taken
    /// one at a time.
    let mapPool (p: StagePolicy<'a>) (f: 'a -> CancellationToken -> ValueTask<'b>) (env: WorkerEnv<'a, 'b>) : Task =
        let token = env.Ctx.Token

        let call (x: 'a) (position: int64) : Task<'b> =
            match p.Timeout with
            | None -> (f x token).AsTask()
            | Some t -> callWithin env p t f x position

        mapEach p (oneAtATime p) (fun () -> Task.CompletedTask) call env
