namespace Pyper

open System
open Pyper.FSharp
open System.Collections.Generic
open System.Diagnostics
open System.IO
open System.Net.Sockets
open System.Text.Json
open System.Runtime.CompilerServices
open System.Runtime.ExceptionServices
open System.Threading
open System.Threading.Tasks
open System.Threading.Tasks.Sources

/// Adapts a stage's batch size to its function's cost: cheap functions move up to
/// `MaxBatch` items at once, slow ones one at a time (so many workers share the work
/// and results flow out at once). It starts at one item, knowing nothing.
[<Sealed>]
type internal Sizer(quantum: float) =
    let mutable costPerItem = -1.0

    /// A sizer for in-process stages: 100 µs of work per batch, far above a hand-off's cost (about 1 µs).
    static member InProcess() =
        Sizer(float Stopwatch.Frequency / 10_000.0)

    /// A sizer for process stages: 2 ms of work per batch. A round trip costs the parent about 150 µs
    /// of CPU (measured: 2 ms batches cut the parent's CPU by a third for 0.8 ms items).
    static member Remote() =
        Sizer(float Stopwatch.Frequency / 500.0)

    member _.Limit =
        let c = costPerItem

        if c < 0.0 then
            1
        elif c * float Tuning.MaxBatch <= quantum then
            Tuning.MaxBatch
        else
            max 1 (int (quantum / c))

    member this.Record(items: int, start: int64) =
        this.RecordCost(items, Stopwatch.GetTimestamp() - start)

    /// Records what `items` items cost, in Stopwatch ticks (for a process stage: the function's own
    /// time in the worker, without the round trip, which batching is there to amortize).
    member _.RecordCost(items: int, ticks: int64) =
        let sample = float ticks / float items
        let c = costPerItem
        costPerItem <- if c < 0.0 then sample else (3.0 * c + sample) / 4.0

/// What one worker of a stage works with.
[<NoEquality; NoComparison>]
type internal WorkerEnv<'a, 'b> =
    {
        Ctx: RunContext
        /// The stage's name in this run.
        Name: string
        Input: BatchQueue<'a>
        Output: BatchQueue<'b>
        /// Null unless the stage is ordered with more than one worker.
        Turnstile: Turnstile
        Sizer: Sizer
    }

/// A stage's worker body, by executor.
[<NoEquality; NoComparison>]
type internal Body<'a, 'b> =
    | OnThread of (WorkerEnv<'a, 'b> -> unit)
    | OnPool of (WorkerEnv<'a, 'b> -> Task)

module internal Buffers =
    let inline clear<'T> (buf: 'T[]) (n: int) =
        if RuntimeHelpers.IsReferenceOrContainsReferences<'T>() then
            Array.Clear(buf, 0, n)

/// Collects a worker's outputs and hands them on: at once when the next stage is idle,
/// else when the buffer is full or the input batch is done; ordered stages wait their turn.
[<Sealed>]
type internal Emitter<'b>(output: BatchQueue<'b>, turnstile: Turnstile) =
    let buf = Array.zeroCreate<'b> Tuning.MaxBatch
    let mutable k = 0
    let mutable ticket = 0L
    let mutable hasTurn = true

    member _.Begin(t: int64) =
        ticket <- t
        hasTurn <- isNull turnstile

    /// Adds an output; true when the caller must hand the buffer on: it is full, or it may
    /// go now (our turn) and either the next stage is idle or `eager` says the producer
    /// may block before its next item (a sequence that is not an in-memory collection).
    member this.Add(x: 'b, eager: bool) =
        buf[k] <- x
        k <- k + 1
        k = buf.Length || ((eager || output.HasWaitingReader) && this.CanFlushNow)

    /// True when the buffer holds items that may be handed on now without waiting for the turn.
    member this.CanFlushNow = k > 0 && isNull (this.TryTurn())

    /// Null when the buffer may be handed on now, else the turn to wait for before asking again.
    member _.TryTurn() : Task =
        if hasTurn then
            null
        else
            let w = turnstile.WaitTurn ticket

            if isNull w then
                hasTurn <- true

            w

    member _.Count = k

    member private _.Flushed() =
        Buffers.clear buf k
        k <- 0

    /// Hands the buffer on, blocking for the turn and for room.
    member this.Emit() =
        if not hasTurn then
            Wait.turn turnstile ticket
            hasTurn <- true

        Wait.write output buf k
        this.Flushed()

    /// Hands the buffer on, awaiting the turn and room.
    member this.EmitAsync() : Task =
        task {
            if not hasTurn then
                do! Wait.turnAsync turnstile ticket
                hasTurn <- true

            do! Wait.writeAsync output buf k
            this.Flushed()
        }

    member _.End() =
        if not (isNull turnstile) then
            turnstile.Advance()

/// Reads a stage's input as one lazy stream (join stages); items leave the queue as read.
[<Sealed>]
type internal QueueStream<'a>(q: BatchQueue<'a>) =
    let buf = Array.zeroCreate<'a> Tuning.MaxBatch
    let mutable pos = 0
    let mutable len = 0
    let mutable current = Unchecked.defaultof<'a>
    let mutable claimed = 0

    member private _.Claim() =
        if Interlocked.Exchange(&claimed, 1) = 1 then
            raise (InvalidOperationException "A join stage's input stream can be enumerated only once.")

    member private _.Next() =
        current <- buf[pos]
        buf[pos] <- Unchecked.defaultof<'a>
        pos <- pos + 1
        true

    member private this.Fill(n: int) =
        pos <- 0
        len <- n
        n > 0 && this.Next()

    interface IEnumerable<'a> with
        member this.GetEnumerator() : IEnumerator<'a> =
            this.Claim()

            { new IEnumerator<'a> with
                member _.Current = current
              interface Collections.IEnumerator with
                  member _.Current = box current

                  member _.MoveNext() =
                      if pos < len then
                          this.Next()
                      else
                          let struct (n, _) = Wait.take q buf Tuning.MaxBatch true
                          this.Fill n

                  member _.Reset() = raise (NotSupportedException())
              interface IDisposable with
                  member _.Dispose() = ()
            }

        member this.GetEnumerator() : Collections.IEnumerator =
            (this :> IEnumerable<'a>).GetEnumerator()

    interface IAsyncEnumerable<'a> with
        member this.GetAsyncEnumerator(_ct) =
            this.Claim()

            { new IAsyncEnumerator<'a> with
                member _.Current = current

                member _.MoveNextAsync() =
                    if pos < len then
                        ValueTask<bool>(this.Next())
                    else
                        let t = Wait.takeAsync q buf Tuning.MaxBatch true

                        if t.IsCompletedSuccessfully then
                            let struct (n, _) = t.Result
                            ValueTask<bool>(this.Fill n)
                        else
                            ValueTask<bool>(
                                task {
                                    let! struct (n, _) = t
                                    return this.Fill n
                                }
                            )
              interface IAsyncDisposable with
                  member _.DisposeAsync() = ValueTask()
            }

/// Async stream helpers (the BCL has no awaited foreach for F#).
module internal AsyncStream =
    /// Awaits `action` for each item of `items`, then disposes the enumerator (also on failure).
    /// `beforeWait` runs whenever the next item is not ready at once.
    let forEach
        (items: IAsyncEnumerable<'T>)
        (token: CancellationToken)
        (beforeWait: unit -> Task)
        (action: 'T -> Task)
        : Task =
        task {
            let e = items.GetAsyncEnumerator token
            let mutable failure = null

            try
                let mutable more = true

                while more do
                    let next = e.MoveNextAsync()

                    if not next.IsCompleted then
                        do! beforeWait ()

                    let! m = next
                    more <- m

                    if m then
                        do! action e.Current
            with ex ->
                failure <- ExceptionDispatchInfo.Capture ex

            do! e.DisposeAsync()

            if not (isNull failure) then
                failure.Throw()
        }

/// The worker loops: one per stage kind and executor.
module internal Workers =
    let private newBuf<'T> () = Array.zeroCreate<'T> Tuning.MaxBatch

    /// A thread worker's loop: takes batches (blocking) into `input` until the input ends,
    /// handing each to `body n ticket`.
    let private eachBatch (env: WorkerEnv<'a, 'b>) (input: 'a[]) (body: int -> int64 -> unit) =
        let mutable go = true

        while go do
            let struct (n, ticket) = Wait.take env.Input input env.Sizer.Limit false

            if n = 0 then go <- false else body n ticket

    /// An async worker's loop: takes batches (awaiting) into `input` until the input ends,
    /// handing each to `body n ticket`.
    let private eachBatchAsync (env: WorkerEnv<'a, 'b>) (input: 'a[]) (body: int -> int64 -> Task) : Task =
        task {
            let mutable go = true

            while go do
                let! struct (n, ticket) = Wait.takeAsync env.Input input env.Sizer.Limit false

                if n = 0 then go <- false else do! body n ticket
        }

    let mapThread (f: 'a -> 'b) (env: WorkerEnv<'a, 'b>) =
        let input = newBuf<'a>()
        let output = newBuf<'b>()

        eachBatch env input (fun n ticket ->
            let start = Stopwatch.GetTimestamp()

            for i in 0 .. n - 1 do
                output[i] <- f input[i]

            env.Sizer.Record(n, start)
            Buffers.clear input n

            if not (isNull env.Turnstile) then
                Wait.turn env.Turnstile ticket

            Wait.write env.Output output n

            if not (isNull env.Turnstile) then
                env.Turnstile.Advance()

            Buffers.clear output n
            env.Input.Release n)

    /// The async map loop: fills `output[0..n-1]` with `runBatch input n output` for each batch,
    /// hands the results on (in input order when ordered) and releases the input.
    /// `runBatch` answers what the batch cost, in Stopwatch ticks.
    let internal mapBatches (runBatch: 'a[] -> int -> 'b[] -> Task<int64>) (env: WorkerEnv<'a, 'b>) : Task =
        let input = newBuf<'a>()
        let output = newBuf<'b>()

        eachBatchAsync env input (fun n ticket ->
            task {
                let! cost = runBatch input n output
                env.Sizer.RecordCost(n, cost)
                Buffers.clear input n

                if not (isNull env.Turnstile) then
                    do! Wait.turnAsync env.Turnstile ticket

                do! Wait.writeAsync env.Output output n

                if not (isNull env.Turnstile) then
                    env.Turnstile.Advance()

                Buffers.clear output n
                env.Input.Release n
            })

    let mapPool (f: 'a -> CancellationToken -> ValueTask<'b>) (env: WorkerEnv<'a, 'b>) : Task =
        let token = env.Ctx.Token

        let runBatch (input: 'a[]) n (output: 'b[]) : Task<int64> =
            task {
                let start = Stopwatch.GetTimestamp()
                let mutable i = 0

                while i < n do
                    let! r = f input[i] token
                    output[i] <- r
                    i <- i + 1

                return Stopwatch.GetTimestamp() - start
            }

        mapBatches runBatch env

    /// The exception a worker's failure comes back as: its own type when the parent has it loaded
    /// and can make one from a message (no assembly is loaded for it), else a RemoteStageException.
    let internal remoteFailure (stage: string) (f: Wire.RemoteFailure) : exn =
        let typeName = f.Type.Split(',')[0]

        let loaded =
            AppDomain.CurrentDomain.GetAssemblies()
            |> Array.tryPick (fun a -> Option.ofObj (a.GetType(typeName, false)))

        match loaded |> Option.map (fun t -> t, t.GetConstructor [| typeof<string> |]) with
        | Some(t, ctor) when typeof<exn>.IsAssignableFrom t && not (isNull ctor) ->
            let e = ctor.Invoke [| box f.Message |] :?> exn
            e.Data[ErrorKeys.RemoteStackTrace] <- f.StackTrace
            e
        | _ -> RemoteStageException($"Stage '{stage}': {typeName}: {f.Message}", f.Type, f.StackTrace, Nullable())

    /// A worker process with the stage's function sent to it. A parked worker may have died since
    /// it parked: then this takes (or starts) another.
    let rec private connect (fref: FunctionRef) (stage: string) (token: CancellationToken) : Task<WorkerProcess> =
        task {
            let! w = WorkerPool.acquire stage token
            let pid = w.Process.Id

            let! failure =
                task {
                    try
                        do! Wire.write w.Stream Wire.Init (fref.Encode()) token
                        return null
                    with e ->
                        return e
                }

            match failure with
            | null -> return w
            | :? IOException when w.Reused ->
                w.Close false
                return! connect fref stage token
            | :? IOException ->
                let code = WorkerPool.exitCode w.Process
                w.Close false
                return raise (WorkerPool.crash stage pid code)
            | e ->
                w.Close false
                ExceptionDispatchInfo.Throw e
                return null
        }

    /// A process stage's worker: takes a worker process (parked or new), sends it the function,
    /// then each batch; parks it again if the stage finished cleanly.
    let processMap (fref: FunctionRef) (env: WorkerEnv<'a, 'b>) : Task =
        task {
            let token = env.Ctx.Token

            let! worker = connect fref env.Name token
            Live.processStarted ()
            let proc = worker.Process
            let stream = worker.Stream

            // One exception per crash, whether the socket or the Exited event reports it first.
            // (WaitForExit may raise Exited on this very thread: no lazy value, just the first one kept.)
            let crash = ref Unchecked.defaultof<RemoteStageException>

            let crashWith (code: Nullable<int>) =
                let e = WorkerPool.crash env.Name proc.Id code
                let first = Interlocked.CompareExchange(&crash.contents, e, Unchecked.defaultof<_>)
                if isNull (box first) then e else first

            let crashed () = crashWith (WorkerPool.exitCode proc)

            // A worker that dies while idle fails the run at once, not at its next batch.
            worker.OnExit <- Action(fun () -> env.Ctx.Fail(env.Name, crashWith (Nullable proc.ExitCode)))

            if proc.HasExited then
                worker.Exited()

            let mutable clean = false

            try
                WireWarmUp.arrays<'a, 'b>() // this side too, before the first batch

                let remote (input: 'a[]) n (output: 'b[]) : Task<int64> =
                    task {
                        let payload =
                            try
                                JsonSerializer.SerializeToUtf8Bytes(Array.sub input 0 n, Wire.options)
                            with e ->
                                raise (
                                    NotSupportedException(
                                        $"Stage '{env.Name}': an item of type {typeof<'a>} cannot be sent to a worker process: {e.Message}",
                                        e
                                    )
                                )

                        // A dead worker shows as the end of the stream or as a reset connection.
                        let! reply =
                            task {
                                try
                                    do! Wire.write stream Wire.Batch payload token
                                    return! Wire.read stream token
                                with :? IOException ->
                                    return raise (crashed ())
                            }

                        match reply with
                        | Some(kind, reply) when kind = Wire.Results ->
                            // The reply: the function's time in the worker (8 bytes), then the results.
                            let cost =
                                Buffers.Binary.BinaryPrimitives.ReadInt64LittleEndian(ReadOnlySpan(reply, 0, 8))

                            let results =
                                JsonSerializer.Deserialize<'b[]>(ReadOnlySpan(reply, 8, reply.Length - 8), Wire.options)

                            Array.blit results 0 output 0 n
                            return cost * Stopwatch.Frequency / TimeSpan.TicksPerSecond
                        | Some(_, reply) ->
                            let failure =
                                JsonSerializer.Deserialize<Wire.RemoteFailure>(ReadOnlySpan reply, Wire.options)

                            return raise (remoteFailure env.Name failure)
                        | None -> return raise (crashed ())
                    }

                do! mapBatches remote env
                clean <- isNull (box crash.Value)
            finally
                Live.processEnded ()

                // No batch is in flight after a clean finish: the worker can serve another stage.
                // Otherwise closing the connection ends it; a stopped run does not wait for it.
                if clean then
                    WorkerPool.release worker
                else
                    worker.Close(not token.IsCancellationRequested)
        }

    /// Hands on the emitter's buffer, blocking for the turn and for room.
    /// True when enumerating `items` may block between items (it is not an in-memory collection):
    /// each item is then handed on at once instead of waiting in a batch.
    let mayBlock (items: seq<'T>) =
        match items with
        | :? ICollection<'T>
        | :? IReadOnlyCollection<'T> -> false
        | _ -> true

    let private pour (em: Emitter<'b>) (items: seq<'b>) =
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

    let private pourAsync (em: Emitter<'b>) (items: IAsyncEnumerable<'b>) (token: CancellationToken) : Task =
        // Whatever is buffered is handed on before waiting for an item that is not ready yet.
        AsyncStream.forEach items token (fun () -> flushNow em) (fun x ->
            if em.Add(x, false) then
                em.EmitAsync()
            else
                Task.CompletedTask)

    let branchThread (f: 'a -> seq<'b>) (env: WorkerEnv<'a, 'b>) =
        let input = newBuf<'a>()
        let em = Emitter<'b>(env.Output, env.Turnstile)

        eachBatch env input (fun n ticket ->
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
        let input = newBuf<'a>()
        let em = Emitter<'b>(env.Output, env.Turnstile)
        let token = env.Ctx.Token

        eachBatchAsync env input (fun n ticket ->
            task {
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
        let em = Emitter<'b>(env.Output, null)
        pour em (f (QueueStream env.Input))
        em.Emit()

    let joinPool
        (f: IAsyncEnumerable<'a> -> CancellationToken -> IAsyncEnumerable<'b>)
        (env: WorkerEnv<'a, 'b>)
        : Task =
        task {
            let em = Emitter<'b>(env.Output, null)
            let token = env.Ctx.Token
            do! pourAsync em (f (QueueStream env.Input) token) token
            do! em.EmitAsync()
        }

    /// Groups items into arrays of `size`; with a timeout, a partial group leaves
    /// when `timeout` has passed since its first item. The end of input flushes it.
    let batch (size: int) (timeout: TimeSpan option) (env: WorkerEnv<'a, 'a[]>) : Task =
        task {
            let one = Array.zeroCreate<'a[]> 1
            let take = Array.zeroCreate<'a>(min Tuning.MaxBatch size)
            let mutable group = Array.zeroCreate<'a> size
            let mutable k = 0
            let mutable deadline = 0L
            let mutable go = true

            let send () =
                one[0] <- (if k = group.Length then group else Array.sub group 0 k)
                group <- Array.zeroCreate size
                k <- 0
                Wait.writeAsync env.Output one 1

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
                            let delay = Task.Delay(Stopwatch.GetElapsedTime(0L, remaining), cancel.Token)
                            let! first = Task.WhenAny(wait, delay)

                            if obj.ReferenceEquals(first, delay) then
                                do! send ()
                            else
                                cancel.Cancel()
                    | _ -> do! wait
                elif n = 0 then
                    if k > 0 then
                        do! send ()

                    go <- false
                else
                    if k = 0 then
                        deadline <-
                            Stopwatch.GetTimestamp()
                            + (match timeout with
                               | Some t -> int64 (t.TotalSeconds * float Stopwatch.Frequency)
                               | None -> 0L)

                    Array.Copy(take, 0, group, k, n)
                    k <- k + n

                    if k = size then
                        do! send ()
        }

/// Turns stage descriptors into running workers.
module internal Wiring =
    /// A one-stage pipeline running `body` under `info`'s options.
    let stage (info: StageInfo) (body: Body<'a, 'b>) : Pipeline<'a, 'b> =
        let wire (ctx: RunContext) (input: BatchQueue<'a>) =
            let name = StageInfo.runName (ctx.NextStageIndex()) info
            input.AddReaders info.Workers
            let output = BatchQueue<'b>(info.Capacity)
            ctx.Register output

            let turnstile =
                if info.Ordered && info.Workers > 1 then
                    let t = Turnstile()
                    ctx.Register t
                    t
                else
                    null

            let env =
                {
                    Ctx = ctx
                    Name = name
                    Input = input
                    Output = output
                    Turnstile = turnstile
                    Sizer =
                        if info.Executor = Executor.Process || info.Executor = Executor.Distributed then
                            Sizer.Remote()
                        else
                            Sizer.InProcess()
                }

            let remaining = ref info.Workers

            let finished () =
                if Interlocked.Decrement &remaining.contents = 0 then
                    output.Complete()
                    input.CloseReaders()

            let failed (e: exn) =
                match e with
                | :? ReadersGoneException -> finished ()
                | e when ctx.IsStopEcho e -> ()
                | e -> ctx.Fail(name, e)

            ctx.OnStart(fun () ->
                for w in 1 .. info.Workers do
                    match body with
                    | OnThread run ->
                        ctx.StartThread(
                            $"Pyper/{name}/{w}",
                            fun () ->
                                try
                                    run env
                                    finished ()
                                with e ->
                                    failed e
                        )
                    | OnPool run ->
                        ctx.StartTask(fun () ->
                            task {
                                try
                                    do! run env
                                    finished ()
                                with e ->
                                    failed e
                            }))

            output

        Pipeline<'a, 'b>([ info ], wire)

    let private sourceFailed (ctx: RunContext) (e: exn) =
        match e with
        | :? ReadersGoneException -> ()
        | e when ctx.IsStopEcho e -> ()
        | e -> ctx.Fail("source", e)

    /// The source queue of a run over one input.
    let single (x: 'a) (_: RunContext) =
        let q = BatchQueue<'a>(0)
        Wait.write q [| x |] 1
        q.Complete()
        q

    /// The source queue of a run over a sequence, filled by a dedicated thread (reading a
    /// sequence may block; on a thread of its own it waits for room without allocating).
    let ofSeq (source: seq<'a>) (ctx: RunContext) =
        let q = BatchQueue<'a>(Tuning.SourceReadAhead)
        ctx.Register q

        let pump () =
            let em = Emitter<'a>(q, null)
            let eager = Workers.mayBlock source
            use e = source.GetEnumerator()
            let mutable go = true

            // Read an item only when the queue has room for it: the source is never read
            // further ahead than the queue's bound.
            while go do
                if em.Count >= q.Free then
                    em.Emit()
                    Wait.room q

                go <- e.MoveNext()

                if go && em.Add(e.Current, eager) then
                    em.Emit()

            em.Emit()
            q.Complete()

        ctx.OnStart(fun () ->
            ctx.StartThread(
                "Pyper/source",
                fun () ->
                    try
                        pump ()
                    with e ->
                        sourceFailed ctx e
            ))

        q

    /// The source queue of a run over an async stream, filled by its own async loop.
    let ofAsyncSeq (source: IAsyncEnumerable<'a>) (ctx: RunContext) =
        let q = BatchQueue<'a>(Tuning.SourceReadAhead)
        ctx.Register q

        let pump () : Task =
            task {
                let em = Emitter<'a>(q, null)

                let flush () : Task =
                    task {
                        do! em.EmitAsync()
                        do! Wait.roomAsync q
                    }

                let add x : Task =
                    if em.Add(x, false) || em.Count >= q.Free then
                        flush ()
                    else
                        Task.CompletedTask

                do! Wait.roomAsync q

                do!
                    AsyncStream.forEach
                        source
                        ctx.Token
                        (fun () -> if em.Count > 0 then flush () else Task.CompletedTask)
                        add

                do! em.EmitAsync()
                q.Complete()
            }

        ctx.OnStart(fun () ->
            ctx.StartTask(fun () ->
                task {
                    try
                        do! pump ()
                    with e ->
                        sourceFailed ctx e
                }))

        q

/// Streams of runs that a blocking consumer can enumerate directly, without the async path.
type internal IBlockingRuns<'b> =
    /// Starts a run (lazily, on the first MoveNext) as a blocking enumerator.
    abstract Open: CancellationToken -> IEnumerator<'b>

/// One run of a pipeline, as the consumer's enumerator: awaited (IAsyncEnumerator) or
/// blocking (`MoveNextBlocking`, for `toSeq`). Nothing starts before the first move. Waiting
/// for results allocates nothing: a blocking consumer waits with its thread's waiter, an
/// awaiting one gets a ValueTask backed by the run itself, completed when its wait is signalled.
[<Sealed>]
type internal Run<'a, 'b>(pipeline: Pipeline<'a, 'b>, source: RunContext -> BatchQueue<'a>, token: CancellationToken) =
    let ctx = RunContext token
    let buf = Array.zeroCreate<'b> Tuning.MaxBatch
    let mutable final: BatchQueue<'b> = null
    let mutable pos = 0
    let mutable len = 0
    let mutable current = Unchecked.defaultof<'b>
    let mutable finished: Task = null

    /// The pending MoveNextAsync, when it had to wait.
    let mutable pending =
        ManualResetValueTaskSourceCore<bool>(RunContinuationsAsynchronously = true)

    let finish () =
        if isNull finished then
            finished <- ctx.WhenFinished()

        finished

    let start () =
        let src = source ctx
        final <- pipeline.Wire ctx src
        final.AddReaders 1
        ctx.Register final
        ctx.Start()

    /// The run stopped: wait for every worker, then raise what stopped it.
    let stopped () : Task<bool> =
        task {
            do! finish ()

            match ctx.Error with
            | null ->
                token.ThrowIfCancellationRequested()
                return raise (OperationCanceledException "The pipeline run was stopped.")
            | e ->
                ExceptionDispatchInfo.Capture(e).Throw()
                return false
        }

    /// The results ended: wait for every worker, then answer false or raise the failure.
    let ended () : Task<bool> =
        task {
            do! finish ()

            if not (isNull ctx.Error) then
                return! stopped ()
            else
                return false
        }

    let next () =
        current <- buf[pos]
        buf[pos] <- Unchecked.defaultof<'b>
        pos <- pos + 1
        true

    /// Hands the consumed batch's room back and tries to take the next batch: Some true when
    /// one landed, None when `waiter` was registered, else the end (Some false).
    let tryRefill (waiter: IWaiter) =
        if isNull final then
            start ()

        if len > 0 then
            final.Release len
            len <- 0
            pos <- 0

        let struct (n, _, wait) = final.TryTake(buf, Tuning.MaxBatch, false, waiter)

        if n > 0 then
            len <- n
            ValueSome true
        elif isNull wait then
            ValueSome false
        else
            ValueNone

    /// Completes the pending MoveNextAsync with what `t` answers.
    member private this.Complete(t: Task<bool>) =
        t.ContinueWith(
            (fun (t: Task<bool>) ->
                try
                    pending.SetResult(t.GetAwaiter().GetResult() && next ())
                with e ->
                    pending.SetException e),
            CancellationToken.None,
            TaskContinuationOptions.ExecuteSynchronously,
            TaskScheduler.Default
        )
        |> ignore

    /// Moves to the next result, blocking the calling thread while none is ready.
    member _.MoveNextBlocking() =
        let sync (t: Task<bool>) = t.GetAwaiter().GetResult()

        if pos < len then
            next ()
        else
            try
                let me = BlockingWaiter.ForThisThread
                let mutable answer = ValueNone

                while answer.IsNone do
                    answer <- tryRefill me

                    if answer.IsNone then
                        me.Wait()

                if answer.Value then next () else sync (ended ())
            with :? RunAbortedException ->
                sync (stopped ())

    /// Stops the run (if it started) and waits until all of it is gone.
    member _.Stop() : Task =
        if isNull final then
            ctx.DisposeUnstarted()
            Task.CompletedTask
        else
            ctx.Cancel()
            finish ()

    interface IWaiter with
        /// The wait of a pending MoveNextAsync is over: take the batch (or see the end).
        member this.Signal() =
            try
                match tryRefill this with
                | ValueSome true -> pending.SetResult(next ())
                | ValueSome false -> this.Complete(ended ())
                | ValueNone -> () // registered again (cannot happen with one reader, but harmless)
            with
            | :? RunAbortedException -> this.Complete(stopped ())
            | e -> pending.SetException e

    interface IValueTaskSource<bool> with
        member _.GetResult(version) = pending.GetResult version
        member _.GetStatus(version) = pending.GetStatus version

        member _.OnCompleted(continuation, state, version, flags) =
            pending.OnCompleted(continuation, state, version, flags)

    interface IAsyncEnumerator<'b> with
        member _.Current = current

        member this.MoveNextAsync() =
            if pos < len then
                ValueTask<bool>(next ())
            else
                try
                    pending.Reset()

                    match tryRefill this with
                    | ValueSome true -> ValueTask<bool>(next ())
                    | ValueSome false -> ValueTask<bool>(ended ())
                    | ValueNone -> ValueTask<bool>(this, pending.Version)
                with :? RunAbortedException ->
                    ValueTask<bool>(stopped ())

        member this.DisposeAsync() = ValueTask(this.Stop())

    interface IEnumerator<'b> with
        member _.Current = current

    interface Collections.IEnumerator with
        member _.Current = box current
        member this.MoveNext() = this.MoveNextBlocking()
        member _.Reset() = raise (NotSupportedException())

    interface IDisposable with
        member this.Dispose() = this.Stop().GetAwaiter().GetResult()

/// A pipeline applied to its input, enumerable any number of times (each enumeration is a new
/// run), awaited or blocking.
[<Sealed>]
type internal RunSource<'a, 'b>(pipeline: Pipeline<'a, 'b>, source: RunContext -> BatchQueue<'a>) =
    interface IAsyncEnumerable<'b> with
        member _.GetAsyncEnumerator(token) =
            new Run<'a, 'b>(pipeline, source, token) :> IAsyncEnumerator<'b>

    interface IBlockingRuns<'b> with
        member _.Open(token) =
            new Run<'a, 'b>(pipeline, source, token) :> IEnumerator<'b>

/// A run as a blocking sequence: each enumeration is a new run; breaking out of the loop stops it.
/// Failures surface as the original exception, never wrapped.
[<Sealed>]
type internal BlockingRun<'b>(results: IAsyncEnumerable<'b>, token: CancellationToken) =
    static let wait (t: ValueTask<'T>) =
        if t.IsCompletedSuccessfully then
            t.Result
        else
            t.AsTask().GetAwaiter().GetResult()

    interface IEnumerable<'b> with
        member _.GetEnumerator() : IEnumerator<'b> =
            match results with
            | :? IBlockingRuns<'b> as runs -> runs.Open token // our own runs block without allocating
            | _ ->
                let run = results.GetAsyncEnumerator token

                { new IEnumerator<'b> with
                    member _.Current = run.Current
                  interface Collections.IEnumerator with
                      member _.Current = box run.Current
                      member _.MoveNext() = wait (run.MoveNextAsync())
                      member _.Reset() = raise (NotSupportedException())
                  interface IDisposable with
                      member _.Dispose() =
                          let t = run.DisposeAsync()

                          if not t.IsCompletedSuccessfully then
                              t.AsTask().GetAwaiter().GetResult()
                }

        member this.GetEnumerator() : Collections.IEnumerator =
            (this :> IEnumerable<'b>).GetEnumerator()
