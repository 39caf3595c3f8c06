namespace Pyper

open System
open System.Diagnostics
open System.IO
open System.Text.Json
open System.Runtime.ExceptionServices
open System.Threading
open System.Threading.Tasks

/// The parent's side of one worker process: the first frame, connecting (a parked worker process
/// or a new one), the framed link, one batch's exchange and a stage worker's life around it.
module internal ProcessConnection =
    open Loops

    /// How long the parent waits for a failure's full frame once its brief frame has stopped the
    /// run (a cold worker process takes tens of milliseconds to encode its first exception; a loaded machine more).
    [<Literal>]
    let FullFailureMilliseconds = 2000

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

    /// The frame that sends a worker process a map stage with per-worker state (`Wire.InitState`):
    /// `recycleAfter` (0: never) and the encodings of `init`, `f` and `dispose` (empty: none).
    let stateSetup (recycleAfter: int) (init: FunctionRef) (f: FunctionRef) (dispose: FunctionRef option) =
        let dispose =
            match dispose with
            | Some d -> d.Encode()
            | None -> [||]

        struct (Wire.InitState, StateRunners.payload recycleAfter (init.Encode()) (f.Encode()) dispose)

    /// True for a stage with per-worker state: its worker process disposes the state before it
    /// parks (`Wire.Release`), and is given time to dispose it when the stage stops or fails.
    let stateful (setup: struct (byte * byte[])) =
        let struct (kind, _) = setup
        kind = Wire.InitState

    /// The frame that ends a stage with per-worker state cleanly: the worker disposes its state.
    let release = struct (Wire.Release, Array.empty<byte>)

    /// A worker process with the stage's function (`setup`) sent to it. A parked worker may have
    /// died since it parked: then this takes (or starts) another.
    let rec connect (setup: struct (byte * byte[])) (stage: string) (token: CancellationToken) : Task<WorkerProcess> =
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
                let! code = WorkerPool.exitCode w
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
    type internal Link
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

                    // The consumer raises the failure once its details are in (or will not come).
                    let settled =
                        TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)

                    ctx.Fail(stage, first, settled.Task)

                    try
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
                    finally
                        settled.TrySetResult() |> ignore
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
    let observe (t: Task) =
        t.ContinueWith(
            (fun (t: Task) -> t.Exception |> ignore),
            CancellationToken.None,
            TaskContinuationOptions.ExecuteSynchronously,
            TaskScheduler.Default
        )
        |> ignore

    let cannotSend<'a> (stage: string) (e: exn) =
        NotSupportedException(
            $"Stage '{stage}': an item of type {typeof<'a>} cannot be sent to a worker process: {e.Message}",
            e
        )

    /// Reads a reply frame's results into `into` (Results: after the 8-byte cost); answers how many.
    let results<'b> (stage: string) (codec: Codec<'b>) (reader: FrameReader) (into: 'b[]) =
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
    let exchange
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
    let serve (setup: struct (byte * byte[])) (env: WorkerEnv<'a, 'b>) (body: Stream -> Link -> Task) : Task =
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
                    let! code = WorkerPool.exitCode worker
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

            // A stopped run does not wait for a worker process, unless it has per-worker state
            // to dispose (closing the connection ends it: it gets 2 s to dispose its state and exit).
            let wait = stateful setup || not token.IsCancellationRequested

            match failure with
            | null ->
                // No batch is in flight after a clean finish: the worker can serve another stage
                // (a stage with per-worker state has released it: see `releaseState`).
                // Otherwise closing the connection ends it.
                if clean then
                    WorkerPool.release worker
                else
                    do! worker.CloseAsync wait
            | e ->
                // The failure first: the run stops now, not once the worker process has gone
                // (meanwhile the other workers' results would flow on as successes).
                match e with
                | :? ReadersGoneException -> ()
                | e when env.Ctx.IsStopEcho e -> ()
                | e -> env.Ctx.Fail(env.Name, e)

                do! worker.CloseAsync wait
                ExceptionDispatchInfo.Throw e
        }

    /// Ends a stage with per-worker state cleanly: the worker process disposes its state (a
    /// failure of `dispose`, or of an `init` that no item saw, is raised here, as it was thrown).
    let releaseState (link: Link) : Task =
        task {
            let frame = FrameBuffer()
            frame.Begin()
            do! link.Send(frame.Seal Wire.Release)
            do! link.Next()

            if link.Reader.Kind <> Wire.Results then
                let! e = link.Failed()
                raise e
        }
