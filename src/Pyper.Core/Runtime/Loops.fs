namespace Pyper

open System
open System.Collections.Generic
open System.Diagnostics
open System.Runtime.CompilerServices
open System.Runtime.ExceptionServices
open System.Threading
open System.Threading.Tasks

/// The stage loops: how a worker of each stage kind takes batches, calls the function and hands results on (blocking loops for dedicated threads, awaiting ones for async workers).
module internal Loops =
    /// A thread worker's loop: takes batches (blocking) into `bufs.In` until the input ends,
    /// handing each to `body n ticket`.
    let private eachBatch (env: WorkerEnv<'a, 'b>) (bufs: WorkerBuffers<'a, _>) (body: int -> int64 -> unit) =
        let mutable go = true

        while go do
            let limit = bufs.Fit env.Sizer.Limit
            let struct (n, ticket) = Wait.take env.Input bufs.In limit false
            bufs.Took n

            if n = 0 then
                go <- false
            else
                let start = env.Probe.BatchStart(env.Worker, n)
                body n ticket
                env.Probe.BatchEnd(env.Worker, start)

    /// An async worker's loop: takes batches (awaiting, with `waiter`) into `bufs.In` until the
    /// input ends, handing each to `body n ticket`.
    let internal eachBatchAsync
        (env: WorkerEnv<'a, 'b>)
        (waiter: AsyncWaiter)
        (bufs: WorkerBuffers<'a, _>)
        (body: int -> int64 -> Task)
        : Task =
        task {
            // Every mutable is declared here, once: one declared inside a loop of a task would
            // be a new ref cell each time round.
            let mutable go = true
            let mutable n = 0
            let mutable ticket = 0L
            let mutable waiting = true

            while go do
                waiting <- true

                while waiting do
                    let limit = bufs.Fit env.Sizer.Limit
                    let struct (k, t, w) = env.Input.TryTake(bufs.In, limit, false, waiter.Arm())

                    if isNull w then
                        bufs.Took k
                        n <- k
                        ticket <- t
                        waiting <- false
                    else
                        do! waiter.Wait

                if n = 0 then
                    go <- false
                else
                    let start = env.Probe.BatchStart(env.Worker, n)
                    do! body n ticket
                    env.Probe.BatchEnd(env.Worker, start)
        }

    /// `output[i] <- f input[i]` for the first `n` items: a method of its own, so that the JIT
    /// keeps the arrays, the function and the index in registers across the calls.
    [<MethodImpl(MethodImplOptions.NoInlining)>]
    let private applyFSharp (f: 'a -> 'b) (input: 'a[]) (output: 'b[]) (n: int) =
        let mutable i = 0

        // `i < n` (not F#'s `for .. to`): the form the JIT clones into a loop without bounds checks.
        while i < n do
            output[i] <- f input[i]
            i <- i + 1

    /// `applyFSharp` for a delegate: one delegate call per item, no F# closure around it.
    [<MethodImpl(MethodImplOptions.NoInlining)>]
    let private applyFunc (f: Func<'a, 'b>) (input: 'a[]) (output: 'b[]) (n: int) =
        let mutable i = 0

        while i < n do
            output[i] <- f.Invoke input[i]
            i <- i + 1

    /// The blocking map loop; `apply input output n` calls the function on a batch.
    let inline private mapWith ([<InlineIfLambda>] apply: 'a[] -> 'b[] -> int -> unit) (env: WorkerEnv<'a, 'b>) =
        let bufs = WorkerBuffers<'a, 'b>(true)

        eachBatch env bufs (fun n ticket ->
            let input, output = bufs.In, bufs.Out
            let start = Stopwatch.GetTimestamp()
            apply input output n
            env.Sizer.Record(n, start)
            Buffers.clear input n

            if not (isNull env.Turnstile) then
                Wait.turn env.Turnstile ticket

            Wait.write env.Output output n
            env.Probe.Out n

            if not (isNull env.Turnstile) then
                env.Turnstile.Advance()

            Buffers.clear output n
            env.Input.Release n)

    let mapThread (f: 'a -> 'b) (env: WorkerEnv<'a, 'b>) =
        mapWith (fun input output n -> applyFSharp f input output n) env

    /// The blocking map loop of a delegate (the C# facade, `Stage.mapFunc`): calls it directly,
    /// not through an F# closure around it.
    let mapThreadFunc (f: Func<'a, 'b>) (env: WorkerEnv<'a, 'b>) =
        mapWith (fun input output n -> applyFunc f input output n) env

    /// The async map loop: fills `output[0..n-1]` with `runBatch input n output` for each batch,
    /// hands the results on (in input order when ordered) and releases the input.
    /// `runBatch` answers what the batch cost, in Stopwatch ticks.
    let mapBatches (runBatch: 'a[] -> int -> 'b[] -> Task<int64>) (env: WorkerEnv<'a, 'b>) : Task =
        let bufs = WorkerBuffers<'a, 'b>(true)
        let waiter = AsyncWaiter()

        eachBatchAsync env waiter bufs (fun n ticket ->
            task {
                let input, output = bufs.In, bufs.Out
                let! cost = runBatch input n output
                env.Sizer.RecordCost(n, cost)
                Buffers.clear input n

                if not (isNull env.Turnstile) then
                    while not (isNull (env.Turnstile.WaitTurn(ticket, waiter.Arm()))) do
                        do! waiter.Wait

                do! Wait.writeWith waiter env.Output output n
                env.Probe.Out n

                if not (isNull env.Turnstile) then
                    env.Turnstile.Advance()

                Buffers.clear output n
                env.Input.Release n
            })

    /// The async map loop of an in-process stage: one task per worker for its whole life, which
    /// awaits its queues with its own `AsyncWaiter` and calls `f` inline, so neither waiting nor
    /// a batch allocates anything.
    let mapPool (f: 'a -> CancellationToken -> ValueTask<'b>) (env: WorkerEnv<'a, 'b>) : Task =
        let token = env.Ctx.Token
        let bufs = WorkerBuffers<'a, 'b>(true)
        let waiter = AsyncWaiter()

        task {
            // Every mutable is declared here, once: one declared inside a loop of a task would
            // be a new ref cell each time round.
            let mutable go = true
            let mutable n = 0
            let mutable ticket = 0L
            let mutable waiting = true
            let mutable i = 0
            let mutable off = 0

            while go do
                waiting <- true

                while waiting do
                    let limit = bufs.Fit env.Sizer.Limit
                    let struct (k, t, w) = env.Input.TryTake(bufs.In, limit, false, waiter.Arm())

                    if isNull w then
                        bufs.Took k
                        n <- k
                        ticket <- t
                        waiting <- false
                    else
                        do! waiter.Wait

                if n = 0 then
                    go <- false
                else
                    let input, output = bufs.In, bufs.Out
                    let batchStart = env.Probe.BatchStart(env.Worker, n)
                    let start = Stopwatch.GetTimestamp()
                    i <- 0

                    while i < n do
                        let! r = f input[i] token
                        output[i] <- r
                        i <- i + 1

                    env.Sizer.RecordCost(n, Stopwatch.GetTimestamp() - start)
                    Buffers.clear input n

                    if not (isNull env.Turnstile) then
                        while not (isNull (env.Turnstile.WaitTurn(ticket, waiter.Arm()))) do
                            do! waiter.Wait

                    off <- 0

                    while off < n do
                        let struct (k, w) = env.Output.TryWrite(output, off, n - off, waiter.Arm())
                        off <- off + k

                        if not (isNull w) then
                            do! waiter.Wait

                    env.Probe.Out n

                    if not (isNull env.Turnstile) then
                        env.Turnstile.Advance()

                    Buffers.clear output n
                    env.Input.Release n
                    env.Probe.BatchEnd(env.Worker, batchStart)
        }

    /// The exception a worker's failure comes back as: its own type when the parent has it loaded
    /// True when enumerating `items` may block between items (it is not an in-memory collection):
    /// each item is then handed on at once instead of waiting in a batch.
    let mayBlock (items: seq<'T>) =
        match items with
        | :? ICollection<'T>
        | :? IReadOnlyCollection<'T> -> false
        | _ -> true

    let private pour (em: Emitter<'b>) (items: seq<'b>) =
        let items = NullResult.sequence items
        let eager = mayBlock items
        use e = items.GetEnumerator()

        while e.MoveNext() do
            if em.Add(e.Current, eager) then
                em.Emit()

    /// Hands on, without waiting for the turn, whatever the emitter holds.
    let private flushNow (em: Emitter<'b>) : Task =
        if em.CanFlushNow then
            em.EmitAsync()
        else
            Task.CompletedTask

    /// Hands on the items of `items` as they come; `flush` hands on whatever is buffered before
    /// waiting for an item that is not ready yet.
    let private pourAsyncWith (flush: unit -> Task) (em: Emitter<'b>) (items: IAsyncEnumerable<'b>) token : Task =
        AsyncStream.forEach (NullResult.stream items) token flush (fun x ->
            if em.Add(x, false) then
                em.EmitAsync()
            else
                Task.CompletedTask)

    let private pourAsync (em: Emitter<'b>) (items: IAsyncEnumerable<'b>) (token: CancellationToken) : Task =
        pourAsyncWith (fun () -> flushNow em) em items token

    let branchThread (f: 'a -> seq<'b>) (env: WorkerEnv<'a, 'b>) =
        let bufs = WorkerBuffers<'a, 'b>(false)
        let em = Emitter<'b>(env.Output, env.Turnstile, Probe = env.Probe)

        eachBatch env bufs (fun n ticket ->
            let input = bufs.In
            em.Begin ticket
            let start = Stopwatch.GetTimestamp()

            for i in 0 .. n - 1 do
                pour em (f input[i])

            env.Sizer.Record(n, start)
            Buffers.clear input n
            em.Emit()
            em.End()
            env.Input.Release n)

    let branchPool (f: 'a -> CancellationToken -> IAsyncEnumerable<'b>) (env: WorkerEnv<'a, 'b>) : Task =
        let bufs = WorkerBuffers<'a, 'b>(false)
        let em = Emitter<'b>(env.Output, env.Turnstile, Probe = env.Probe)
        let token = env.Ctx.Token

        eachBatchAsync env (AsyncWaiter()) bufs (fun n ticket ->
            task {
                let input = bufs.In
                em.Begin ticket
                let start = Stopwatch.GetTimestamp()
                let mutable i = 0

                while i < n do
                    do! pourAsync em (f input[i] token) token
                    i <- i + 1

                env.Sizer.Record(n, start)
                Buffers.clear input n
                do! em.EmitAsync()
                em.End()
                env.Input.Release n
            })

    let joinThread (f: seq<'a> -> seq<'b>) (env: WorkerEnv<'a, 'b>) =
        let em = Emitter<'b>(env.Output, null, Probe = env.Probe)
        env.Probe.SetBusy(env.Worker, true)
        pour em (f (QueueStream env.Input))
        em.Emit()
        env.Probe.SetBusy(env.Worker, false)

    let joinPool
        (f: IAsyncEnumerable<'a> -> CancellationToken -> IAsyncEnumerable<'b>)
        (env: WorkerEnv<'a, 'b>)
        : Task =
        task {
            let em = Emitter<'b>(env.Output, null, Probe = env.Probe)
            let token = env.Ctx.Token

            // Once nothing reads this stage's results, the stages before it stop and its input
            // ends: the join's move in flight (which `forEach` awaits) cannot wait for ever.
            let flush () : Task =
                task {
                    try
                        do! flushNow em
                    with :? ReadersGoneException as gone ->
                        env.Input.CloseReaders()
                        ExceptionDispatchInfo.Throw gone
                }

            env.Probe.SetBusy(env.Worker, true)
            do! pourAsyncWith flush em (f (QueueStream env.Input) token) token
            do! em.EmitAsync()
            env.Probe.SetBusy(env.Worker, false)
        }

    /// The longest single Task.Delay (about 49.7 days): longer timeouts are waited in steps.
    let private longestDelay = TimeSpan.FromMilliseconds(float (UInt32.MaxValue - 2u))

    /// `timeout` after `now`, in Stopwatch ticks; Int64.MaxValue when that is beyond its range.
    let private deadlineAfter (now: int64) (timeout: TimeSpan) =
        let ticks = timeout.TotalSeconds * float Stopwatch.Frequency

        if ticks >= float (Int64.MaxValue - now) then
            Int64.MaxValue
        else
            now + int64 ticks

    /// Groups items into arrays of `size`; with a timeout, a partial group leaves
    /// when `timeout` has passed since its first item. The end of input flushes it.
    /// A group's array grows as its items come (a size near Array.MaxLength allocates nothing up front).
    let batch (size: int) (timeout: TimeSpan option) (env: WorkerEnv<'a, 'a[]>) : Task =
        task {
            let one = Array.zeroCreate<'a[]> 1
            let writer = AsyncWaiter()
            let take = Array.zeroCreate<'a>(min Tuning.MaxBatch size)
            let first = min Tuning.MaxBatch size
            let mutable group = Array.zeroCreate<'a> first
            let mutable k = 0
            let mutable deadline = 0L
            let mutable go = true

            let send () =
                one[0] <- (if k = group.Length then group else Array.sub group 0 k)
                group <- Array.zeroCreate first
                k <- 0
                env.Probe.Out 1
                Wait.writeWith writer env.Output one 1

            while go do
                let struct (n, _, waiter) =
                    env.Input.TryTake(take, min take.Length (size - k), true, null)

                if not (isNull waiter) then
                    let wait = Wait.taskOf waiter

                    match timeout with
                    | Some _ when k > 0 ->
                        let remaining = deadline - Stopwatch.GetTimestamp()

                        if remaining <= 0L then
                            do! send ()
                        else
                            use cancel = CancellationTokenSource.CreateLinkedTokenSource env.Ctx.Token
                            let step = Stopwatch.GetElapsedTime(0L, remaining)
                            let capped = step > longestDelay
                            let delay = Task.Delay((if capped then longestDelay else step), cancel.Token)
                            let! won = Task.WhenAny(wait, delay)

                            if not (obj.ReferenceEquals(won, delay)) then
                                cancel.Cancel()
                            elif not capped || Stopwatch.GetTimestamp() >= deadline then
                                do! send ()
                    // else: one step of a longer timeout has passed; wait again
                    | _ -> do! wait
                elif n = 0 then
                    if k > 0 then
                        do! send ()

                    go <- false
                else
                    env.Probe.In n

                    if k = 0 then
                        deadline <-
                            match timeout with
                            | Some t -> deadlineAfter (Stopwatch.GetTimestamp()) t
                            | None -> 0L

                    if k + n > group.Length then
                        let grown =
                            Array.zeroCreate (int (min (int64 size) (max (int64 (k + n)) (2L * int64 group.Length))))

                        Array.Copy(group, grown, k)
                        group <- grown

                    Array.Copy(take, 0, group, k, n)
                    k <- k + n

                    if k = size then
                        do! send ()
        }
