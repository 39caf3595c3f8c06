namespace Pyper

open System
open System.Diagnostics
open System.IO
open System.Text.Json
open System.Runtime.ExceptionServices
open System.Threading
open System.Threading.Tasks

/// The process executor's stage worker: one worker process per stage worker.
module internal ProcessWorkers =
    open Loops

    /// How long the parent waits for a failure's full frame once its brief frame has stopped the
    /// run (a cold worker process takes 50-150 ms to encode its first exception; a loaded machine more).
    [<Literal>]
    let private FullFailureMilliseconds = 2000

    /// The frame that sends a worker process its function: `Wire.Init` with the stage's shape and
    /// the function's encoding, or `Wire.InitBound` with the shape, the encoding's length (4 bytes),
    /// the encoding and the bound argument's JSON (map stages).
    let setup (shape: Shape) (fref: FunctionRef) (bound: byte[]) : struct (byte * byte[]) =
        let f = fref.Encode()

        if isNull bound then
            struct (Wire.Init, Array.append [| byte shape |] f)
        else
            let payload = Array.zeroCreate<byte>(5 + f.Length + bound.Length)
            payload[0] <- byte shape
            Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(Span(payload, 1, 4), f.Length)
            Array.blit f 0 payload 5 f.Length
            Array.blit bound 0 payload (5 + f.Length) bound.Length
            struct (Wire.InitBound, payload)

    /// A worker process with the stage's function (`setup`) sent to it. A parked worker may have
    /// died since it parked: then this takes (or starts) another.
    let rec private connect
        (setup: struct (byte * byte[]))
        (stage: string)
        (token: CancellationToken)
        : Task<WorkerProcess> =
        task {
            let! w = WorkerPool.acquire stage token
            let pid = w.Process.Id

            let! failure =
                task {
                    try
                        let struct (kind, payload) = setup
                        do! Wire.write w.Stream kind payload token
                        return null
                    with e ->
                        return e
                }

            match failure with
            | null -> return w
            | :? IOException when w.Reused ->
                w.Close false
                return! connect setup stage token
            | :? IOException ->
                let! code = WorkerPool.exitCode w.Process
                w.Close false
                return raise (WorkerPool.crash stage pid code)
            | e ->
                w.Close false
                ExceptionDispatchInfo.Throw e
                return null
        }

    /// A worker process's connection as the parent's stage worker sees it: frames out (awaited
    /// writes of sealed frame buffers), frames in (one reusable reader), a crash as its exception.
    [<Sealed>]
    type private Link
        (
            stream: Stream,
            token: CancellationToken,
            crashed: unit -> Task<exn>,
            stage: string,
            ctx: RunContext,
            results: Type
        ) =
        member val Reader = FrameReader(stream)

        /// The failure of the frame just read (`Wire.Failure`, or `Wire.BriefFailure`). A brief
        /// frame stops the run at once (nothing more is yielded from here on); the full frame then
        /// gives the exception its details: the rebuilt exception takes the brief one's place as
        /// the run's failure. If the full frame does not come in time (the worker hangs or dies
        /// while encoding it), the brief one stands.
        member this.Failed() : Task<exn> =
            task {
                if this.Reader.Kind <> Wire.BriefFailure then
                    return RemoteExceptions.decode stage results this.Reader.Payload
                else
                    let first =
                        RemoteExceptions.decodeBrief stage results (this.Reader.Payload.ToArray())

                    ctx.Fail(stage, first)
                    // The run's token is cancelled now: the full frame has a bound of its own.
                    use wait = new CancellationTokenSource(FullFailureMilliseconds)

                    let! full =
                        task {
                            try
                                return! this.Reader.ReadAsync wait.Token
                            with
                            | :? IOException
                            | :? OperationCanceledException -> return false
                        }

                    if full && this.Reader.Kind = Wire.Failure then
                        let e = RemoteExceptions.decode stage results this.Reader.Payload
                        ctx.Refine(first, e)
                        return e
                    else
                        return first
            }

        /// Writes a frame; a dead worker shows as a reset connection.
        member _.Send(frame: ReadOnlyMemory<byte>) : Task =
            task {
                try
                    do! stream.WriteAsync(frame, token)
                with :? IOException ->
                    let! e = crashed ()
                    raise e
            }

        /// Reads the next frame; a dead worker shows as the end of the stream or a reset connection.
        member this.Next() : Task =
            task {
                let! ok =
                    task {
                        try
                            return! this.Reader.ReadAsync token
                        with :? IOException ->
                            return false
                    }

                if not ok then
                    let! e = crashed ()
                    raise e
            }

    /// Observes a task we may stop waiting for, so that its failure is never unobserved.
    let private observe (t: Task) =
        t.ContinueWith(
            (fun (t: Task) -> t.Exception |> ignore),
            CancellationToken.None,
            TaskContinuationOptions.ExecuteSynchronously,
            TaskScheduler.Default
        )
        |> ignore

    let private cannotSend<'a> (stage: string) (e: exn) =
        NotSupportedException(
            $"Stage '{stage}': an item of type {typeof<'a>} cannot be sent to a worker process: {e.Message}",
            e
        )

    /// Reads a reply frame's results into `into` (Results: after the 8-byte cost); answers how many.
    let private results<'b> (stage: string) (codec: Codec<'b>) (reader: FrameReader) (into: 'b[]) =
        try
            codec.Read(reader.PayloadFrom(if reader.Kind = Wire.Results then 8 else 0), into, 0)
        with e ->
            raise (
                NotSupportedException(
                    $"Stage '{stage}': a result of type {typeof<'b>} cannot be read back from a worker process: {e.Message}",
                    e
                )
            )

    /// Runs one batch through the worker process (map and branch stages): the batch goes in frames
    /// (a quarter of the batch each, at most about Wire.BatchBytes), the next one written while the
    /// previous one's replies are read, so that the worker process is not idle while the parent
    /// reads results; each reply's results go to `deliver`. Answers the function's time in the worker
    /// (Stopwatch ticks).
    let private exchange
        (stage: string)
        (link: Link)
        (frames: FrameBuffer[])
        (scratch: 'b[])
        (input: 'a[])
        (n: int)
        (deliver: 'b[] -> int -> Task)
        : Task<int64> =
        task {
            let codecA = Codecs.get<'a>()
            let codecB = Codecs.get<'b>()
            let per = max 1 ((n + 3) / 4)
            let mutable built = 0
            let mutable j = 0
            let mutable replied = 0
            let mutable cost = 0L

            let build () =
                let fb = frames[j % 2]
                fb.Begin()

                let k =
                    try
                        codecA.Write(input, built, min per (n - built), Wire.BatchBytes, fb.Writer)
                    with e ->
                        raise (cannotSend<'a> stage e)

                built <- built + k
                j <- j + 1
                fb.Seal Wire.Batch

            let mutable writing = link.Send(build ())

            try
                while replied < j do
                    if built < n then
                        // Frame j's buffer last held frame j - 2, whose write is done.
                        let frame = build ()
                        do! writing
                        writing <- link.Send frame

                    let mutable last = false

                    while not last do
                        do! link.Next()
                        let reader = link.Reader

                        if reader.Kind = Wire.Results then
                            cost <- cost + Buffers.Binary.BinaryPrimitives.ReadInt64LittleEndian(reader.Payload)

                            last <- true
                        elif reader.Kind <> Wire.Chunk then
                            let! e = link.Failed()
                            raise e

                        let k = results stage codecB reader scratch
                        do! deliver scratch k

                    replied <- replied + 1

                do! writing
            with e ->
                observe writing
                ExceptionDispatchInfo.Throw e

            return cost * Stopwatch.Frequency / TimeSpan.TicksPerSecond
        }

    /// A process stage's worker: takes a worker process (parked or new), sends it the function,
    /// runs `body` over the connection; parks the worker process again if the stage finished cleanly.
    let private serve (setup: struct (byte * byte[])) (env: WorkerEnv<'a, 'b>) (body: Stream -> Link -> Task) : Task =
        task {
            let token = env.Ctx.Token

            let! worker = connect setup env.Name token
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

            let crashed () : Task<exn> =
                task {
                    let! code = WorkerPool.exitCode proc
                    return crashWith code :> exn
                }

            // A worker that dies while idle fails the run at once, not at its next batch. Once the
            // run is stopping, an exit is no news (a join's worker process ends when the stopped
            // sender closes its connection; that exit is not the run's failure).
            worker.OnExit <-
                Action(fun () ->
                    if not token.IsCancellationRequested then
                        env.Ctx.Fail(env.Name, crashWith (Nullable proc.ExitCode)))

            if proc.HasExited then
                worker.Exited()

            let mutable clean = false
            let mutable failure: exn = null

            try
                Codecs.get<'a>() |> ignore // this side's codecs too, before the first batch
                Codecs.get<'b>() |> ignore
                RemoteExceptions.warmUp ()
                do! body stream (Link(stream, token, crashed, env.Name, env.Ctx, typeof<'b>))
                clean <- isNull (box crash.Value)
            with e ->
                failure <- e

            Live.processEnded ()

            match failure with
            | null ->
                // No batch is in flight after a clean finish: the worker can serve another stage.
                // Otherwise closing the connection ends it; a stopped run does not wait for it.
                if clean then
                    WorkerPool.release worker
                else
                    do! worker.CloseAsync(not token.IsCancellationRequested)
            | e ->
                // The failure first: the run stops now, not once the worker process has gone
                // (meanwhile the other workers' results would flow on as successes).
                match e with
                | :? ReadersGoneException -> ()
                | e when env.Ctx.IsStopEcho e -> ()
                | e -> env.Ctx.Fail(env.Name, e)

                do! worker.CloseAsync(not token.IsCancellationRequested)
                ExceptionDispatchInfo.Throw e
        }

    /// A map stage's worker: each batch through the worker process, results in input order.
    let processMap (setup: struct (byte * byte[])) (env: WorkerEnv<'a, 'b>) : Task =
        serve setup env (fun _ link ->
            let frames = [| FrameBuffer(); FrameBuffer() |]
            let scratch = Array.zeroCreate<'b> Tuning.MaxBatch
            let at = ref 0

            Loops.mapBatches
                (fun input n output ->
                    at.Value <- 0

                    exchange env.Name link frames scratch input n (fun items k ->
                        Array.Copy(items, 0, output, at.Value, k)
                        Buffers.clear items k
                        at.Value <- at.Value + k
                        Task.CompletedTask))
                env)

    /// A branch stage's worker: each batch through the worker process, its results handed on as
    /// their chunks come (ordered stages in their turn).
    let processBranch (setup: struct (byte * byte[])) (env: WorkerEnv<'a, 'b>) : Task =
        serve setup env (fun _ link ->
            let frames = [| FrameBuffer(); FrameBuffer() |]
            let scratch = Array.zeroCreate<'b> Tuning.MaxBatch
            let bufs = WorkerBuffers<'a, 'b>(false)
            let em = Emitter<'b>(env.Output, env.Turnstile, Probe = env.Probe)

            let deliver (items: 'b[]) k : Task =
                task {
                    for i in 0 .. k - 1 do
                        if em.Add(items[i], false) then
                            do! em.EmitAsync()

                    Buffers.clear items k

                    // A chunk's results go on at once when they may (a slow sequence's items are not held back).
                    if em.CanFlushNow then
                        do! em.EmitAsync()
                }

            Loops.eachBatchAsync env (AsyncWaiter()) bufs (fun n ticket ->
                task {
                    em.Begin ticket
                    let! cost = exchange env.Name link frames scratch bufs.In n deliver
                    env.Sizer.RecordCost(n, cost)
                    Buffers.clear bufs.In n
                    do! em.EmitAsync()
                    em.End()
                    env.Input.Release n
                }))

    /// A join stage's worker: its share of the input streams to the worker process (Batch frames,
    /// then End) while the results come back; the function's early return stops the sending.
    let processJoin (setup: struct (byte * byte[])) (env: WorkerEnv<'a, 'b>) : Task =
        serve setup env (fun stream link ->
            task {
                let em = Emitter<'b>(env.Output, null, Probe = env.Probe)
                let scratch = Array.zeroCreate<'b> Tuning.MaxBatch
                let codecA = Codecs.get<'a>()
                let codecB = Codecs.get<'b>()
                let finished = ref false
                let sendFailure = ref null
                env.Probe.SetBusy(env.Worker, true)

                let sender =
                    task {
                        try
                            let buf = Array.zeroCreate<'a> Tuning.MaxBatch
                            let fb = FrameBuffer()
                            let waiter = AsyncWaiter()
                            let mutable go = true

                            while go && not finished.Value do
                                let! struct (n, _) = Wait.takeWith waiter env.Input buf Tuning.MaxBatch true

                                if n = 0 then
                                    go <- false
                                else
                                    let mutable sent = 0

                                    while sent < n do
                                        fb.Begin()

                                        let k =
                                            try
                                                codecA.Write(buf, sent, n - sent, Wire.BatchBytes, fb.Writer)
                                            with e ->
                                                raise (cannotSend<'a> env.Name e)

                                        sent <- sent + k
                                        do! link.Send(fb.Seal Wire.Batch)

                                    Buffers.clear buf n

                            fb.Begin()
                            do! link.Send(fb.Seal Wire.End)
                        with e ->
                            // The receiver is waiting for a reply that will not come: stop it.
                            sendFailure.Value <- e
                            stream.Dispose()
                    }

                try
                    let mutable last = false

                    while not last do
                        try
                            do! link.Next()
                        with e ->
                            match sendFailure.Value with
                            | null -> raise e
                            | f -> ExceptionDispatchInfo.Throw f

                        let reader = link.Reader

                        if reader.Kind = Wire.Results then
                            finished.Value <- true
                            last <- true
                        elif reader.Kind <> Wire.Chunk then
                            let! e = link.Failed()
                            raise e

                        let k = results env.Name codecB reader scratch

                        for i in 0 .. k - 1 do
                            if em.Add(scratch[i], false) then
                                do! em.EmitAsync()

                        Buffers.clear scratch k

                        if em.CanFlushNow then
                            do! em.EmitAsync()

                    do! em.EmitAsync()
                    do! sender

                    match sendFailure.Value with
                    | null -> ()
                    | f -> ExceptionDispatchInfo.Throw f
                with e ->
                    observe sender
                    ExceptionDispatchInfo.Throw e

                env.Probe.SetBusy(env.Worker, false)
            })

    /// A process stage's worker under a timeout or failure policy (`Policies.mapEach`): items go
    /// one at a time, and whatever fails a call is the item's failure, for the policy: the
    /// function threw, the item or result could not cross, the worker process crashed on it or ran
    /// past the timeout. A crashed worker process is replaced for the next attempt, and one that ran
    /// past the timeout is killed first. A failure to start a worker process still ends the run.
    let processMapPolicy (p: StagePolicy<'a>) (setup: struct (byte * byte[])) (env: WorkerEnv<'a, 'b>) : Task =
        let token = env.Ctx.Token
        let one = Array.zeroCreate<'a> 1
        let codecA = Codecs.get<'a>()
        let codecB = Codecs.get<'b>()
        let frame = FrameBuffer()
        let scratch = Array.zeroCreate<'b> Tuning.MaxBatch
        let mutable worker: WorkerProcess = null
        // The current worker process's frames in.
        let mutable frames = Unchecked.defaultof<FrameReader>

        // Lets the current worker process go: with `wait` it has 2 s to exit, else it is killed.
        let drop (wait: bool) : Task =
            task {
                match worker with
                | null -> ()
                | w ->
                    worker <- null
                    Live.processEnded ()
                    do! w.CloseAsync wait
            }

        let ready () : Task =
            task {
                if not (isNull worker) && worker.Process.HasExited then
                    do! drop false

                if isNull worker then
                    let! w = connect setup env.Name token
                    // Its exit shows in the call it breaks: the item fails, not the run.
                    w.OnExit <- null
                    Live.processStarted ()
                    worker <- w
                    frames <- FrameReader(w.Stream)
            }

        let crashed (w: WorkerProcess) : Task<exn> =
            task {
                let pid = w.Process.Id
                let! code = WorkerPool.exitCode w.Process
                do! drop false
                return WorkerPool.crash env.Name pid code :> exn
            }

        let call (x: 'a) (position: int64) : Task<'b> =
            task {
                let w = worker
                let reader = frames
                one[0] <- x
                frame.Begin()

                try
                    try
                        codecA.Write(one, 0, 1, Wire.BatchBytes, frame.Writer) |> ignore
                    with e ->
                        raise (cannotSend<'a> env.Name e)
                finally
                    one[0] <- Unchecked.defaultof<'a>

                use cts = CancellationTokenSource.CreateLinkedTokenSource token
                p.Timeout |> Option.iter cts.CancelAfter
                let mutable ok = true
                let mutable failure: exn = null
                let mutable got = 0

                // The item's results: Chunk frames if any, then Results.
                try
                    do! w.Stream.WriteAsync(frame.Seal Wire.Batch, cts.Token)
                    let mutable last = false

                    while ok && not last do
                        let! r = reader.ReadAsync cts.Token
                        ok <- r

                        if ok then
                            if reader.Kind = Wire.Results || reader.Kind = Wire.Chunk then
                                last <- reader.Kind = Wire.Results
                                got <- got + results env.Name codecB reader scratch
                            else
                                last <- true
                with e ->
                    failure <- e

                if not (isNull failure) then
                    if token.IsCancellationRequested then
                        raise (OperationCanceledException token)
                    elif cts.IsCancellationRequested then
                        // Past the timeout: the stuck worker process is killed, a fresh one takes over.
                        p.Counts.AddTimedOut()
                        do! drop false
                        raise (Policies.timedOut env position p.Timeout.Value null)
                    elif (failure :? IOException) then
                        let! e = crashed w
                        raise e
                    else
                        ExceptionDispatchInfo.Throw failure

                if not ok then
                    let! e = crashed w
                    return raise e
                elif reader.Kind = Wire.Results then
                    let y = scratch[0]
                    Buffers.clear scratch got
                    return y
                elif reader.Kind = Wire.BriefFailure then
                    // The item's failure: its full frame follows (bounded: a worker that hangs or
                    // dies while encoding it leaves the brief one, and is replaced).
                    let brief = reader.Payload.ToArray()
                    use wait = CancellationTokenSource.CreateLinkedTokenSource token
                    wait.CancelAfter FullFailureMilliseconds

                    let! full =
                        task {
                            try
                                return! reader.ReadAsync wait.Token
                            with
                            | :? IOException
                            | :? OperationCanceledException -> return false
                        }

                    if full && reader.Kind = Wire.Failure then
                        return raise (RemoteExceptions.decode env.Name typeof<'b> reader.Payload)
                    else
                        if token.IsCancellationRequested then
                            raise (OperationCanceledException token)

                        do! drop false
                        return raise (RemoteExceptions.decodeBrief env.Name typeof<'b> brief)
                else
                    return raise (RemoteExceptions.decode env.Name typeof<'b> reader.Payload)
            }

        task {
            let mutable failure: exn = null

            try
                RemoteExceptions.warmUp ()
                do! Policies.mapEach p true ready call env
            with e ->
                failure <- e

            match failure with
            | null ->
                // No item is in flight after a clean finish: the worker can serve another stage.
                match worker with
                | null -> ()
                | w ->
                    worker <- null
                    Live.processEnded ()
                    WorkerPool.release w
            | e ->
                match e with
                | :? ReadersGoneException -> ()
                | e when env.Ctx.IsStopEcho e -> ()
                | e -> env.Ctx.Fail(env.Name, e)

                do! drop (not token.IsCancellationRequested)
                ExceptionDispatchInfo.Throw e
        }

/// The process executor: each worker is an awaiting loop on the thread pool that hands batches to
/// a worker process of its own (`ProcessWorkers.processMap`, or `processMapPolicy` under a timeout
/// or failure policy) and waits for their results. `bound` is the bound argument's JSON, or null.
[<Sealed>]
type internal ProcessExecutor<'a, 'b>(shape: Shape, fref: FunctionRef, policy: StagePolicy<'a> option, bound: byte[]) =
    inherit StageExecutor<'a, 'b>()
    let setup = ProcessWorkers.setup shape fref bound
    override _.Kind = Executor.Process
    override _.Quantum = Sizer.RemoteQuantum

    override _.Start(env, ended) =
        match policy with
        | Some p -> env.Ctx.StartTask((fun () -> ProcessWorkers.processMapPolicy p setup env), ended)
        | None ->
            let worker =
                match shape with
                | Shape.Map -> ProcessWorkers.processMap
                | Shape.Branch -> ProcessWorkers.processBranch
                | _ -> ProcessWorkers.processJoin

            env.Ctx.StartTask((fun () -> worker setup env), ended)
