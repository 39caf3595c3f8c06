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

    /// The frame that sends a worker process its function: `Wire.Init` with the function's
    /// encoding, or `Wire.InitBound` with the bound argument's JSON after it.
    let setup (fref: FunctionRef) (bound: byte[]) : struct (byte * byte[]) =
        let f = fref.Encode()

        if isNull bound then
            struct (Wire.Init, f)
        else
            let payload = Array.zeroCreate<byte>(4 + f.Length + bound.Length)
            Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(Span(payload, 0, 4), f.Length)
            Array.blit f 0 payload 4 f.Length
            Array.blit bound 0 payload (4 + f.Length) bound.Length
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

    /// A process stage's worker: takes a worker process (parked or new), sends it the function,
    /// then each batch; parks it again if the stage finished cleanly.
    let processMap (setup: struct (byte * byte[])) (env: WorkerEnv<'a, 'b>) : Task =
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

            // A worker that dies while idle fails the run at once, not at its next batch.
            worker.OnExit <- Action(fun () -> env.Ctx.Fail(env.Name, crashWith (Nullable proc.ExitCode)))

            if proc.HasExited then
                worker.Exited()

            let mutable clean = false
            let mutable failure: exn = null
            // One buffer per worker for batches' JSON; dropped when a huge item has grown it.
            let buffer = ref (Buffers.ArrayBufferWriter<byte>())

            try
                WireWarmUp.arrays<'a, 'b>() // this side too, before the first batch
                RemoteExceptions.warmUp ()

                // A failure's brief frame stops the run at once (nothing more is yielded from here
                // on); its full frame then gives the exception its details: the rebuilt exception
                // takes the brief one's place as the run's failure. If the full frame does not
                // come in time (the worker hangs or dies while encoding), the brief one stands.
                let failed (brief: byte[]) : Task<exn> =
                    task {
                        let first = RemoteExceptions.decodeBrief env.Name typeof<'b> brief
                        env.Ctx.Fail(env.Name, first)
                        // The run's token is cancelled now: the full frame has a bound of its own.
                        use wait = new CancellationTokenSource(FullFailureMilliseconds)

                        let! full =
                            task {
                                try
                                    return! Wire.read stream wait.Token
                                with
                                | :? IOException
                                | :? OperationCanceledException -> return None
                            }

                        match full with
                        | Some(kind, payload) when kind = Wire.Failure ->
                            let e = RemoteExceptions.decode env.Name typeof<'b> (ReadOnlySpan payload)
                            env.Ctx.Refine(first, e)
                            return e
                        | _ -> return first
                    }

                // A batch goes in frames of at most about Wire.BatchBytes of JSON (a bigger item alone).
                let remote (input: 'a[]) n (output: 'b[]) : Task<int64> =
                    task {
                        let mutable sent = 0
                        let mutable cost = 0L

                        while sent < n do
                            let k =
                                try
                                    Wire.serializeBatch input sent (n - sent) buffer.Value
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
                                        do! Wire.writeMemory stream Wire.Batch buffer.Value.WrittenMemory token
                                        return! Wire.read stream token
                                    with :? IOException ->
                                        let! e = crashed ()
                                        return raise e
                                }

                            match reply with
                            | Some(kind, reply) when kind = Wire.Results ->
                                // The reply: the function's time in the worker (8 bytes), then the results.
                                cost <-
                                    cost
                                    + Buffers.Binary.BinaryPrimitives.ReadInt64LittleEndian(ReadOnlySpan(reply, 0, 8))

                                let results =
                                    try
                                        JsonSerializer.Deserialize<'b[]>(
                                            ReadOnlySpan(reply, 8, reply.Length - 8),
                                            Wire.options
                                        )
                                    with e ->
                                        raise (
                                            NotSupportedException(
                                                $"Stage '{env.Name}': a result of type {typeof<'b>} cannot be read back from a worker process: {e.Message}",
                                                e
                                            )
                                        )

                                Array.blit results 0 output sent k
                                sent <- sent + k
                            | Some(kind, reply) when kind = Wire.BriefFailure ->
                                let! e = failed reply
                                raise e
                            | Some(_, reply) -> raise (RemoteExceptions.decode env.Name typeof<'b> (ReadOnlySpan reply))
                            | None ->
                                let! e = crashed ()
                                raise e

                        if buffer.Value.Capacity > 2 * Wire.BatchBytes then
                            buffer.Value <- Buffers.ArrayBufferWriter<byte>()

                        return cost * Stopwatch.Frequency / TimeSpan.TicksPerSecond
                    }

                do! mapBatches remote env
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

    /// A process stage's worker under a timeout or failure policy (`Policies.mapEach`): items go
    /// one at a time, and whatever fails a call is the item's failure, for the policy: the
    /// function threw, the item or result could not cross, the worker process crashed on it or ran
    /// past the timeout. A crashed worker process is replaced for the next attempt, and one that ran
    /// past the timeout is killed first. A failure to start a worker process still ends the run.
    let processMapPolicy (p: StagePolicy<'a>) (setup: struct (byte * byte[])) (env: WorkerEnv<'a, 'b>) : Task =
        let token = env.Ctx.Token
        let one = Array.zeroCreate<'a> 1
        let buffer = ref (Buffers.ArrayBufferWriter<byte>())
        let mutable worker: WorkerProcess = null

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
                one[0] <- x

                try
                    Wire.serializeBatch one 0 1 buffer.Value |> ignore
                with e ->
                    one[0] <- Unchecked.defaultof<'a>

                    raise (
                        NotSupportedException(
                            $"Stage '{env.Name}': an item of type {typeof<'a>} cannot be sent to a worker process: {e.Message}",
                            e
                        )
                    )

                one[0] <- Unchecked.defaultof<'a>
                use cts = CancellationTokenSource.CreateLinkedTokenSource token
                p.Timeout |> Option.iter cts.CancelAfter
                let mutable reply = None
                let mutable failure: exn = null

                try
                    do! Wire.writeMemory w.Stream Wire.Batch buffer.Value.WrittenMemory cts.Token
                    let! r = Wire.read w.Stream cts.Token
                    reply <- r
                with e ->
                    failure <- e

                if buffer.Value.Capacity > 2 * Wire.BatchBytes then
                    buffer.Value <- Buffers.ArrayBufferWriter<byte>()

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

                match reply with
                | Some(kind, payload) when kind = Wire.Results ->
                    let results =
                        try
                            JsonSerializer.Deserialize<'b[]>(ReadOnlySpan(payload, 8, payload.Length - 8), Wire.options)
                        with e ->
                            raise (
                                NotSupportedException(
                                    $"Stage '{env.Name}': a result of type {typeof<'b>} cannot be read back from a worker process: {e.Message}",
                                    e
                                )
                            )

                    return results[0]
                | Some(kind, brief) when kind = Wire.BriefFailure ->
                    // The item's failure: its full frame follows (bounded: a worker that hangs or
                    // dies while encoding it leaves the brief one, and is replaced).
                    use wait = CancellationTokenSource.CreateLinkedTokenSource token
                    wait.CancelAfter FullFailureMilliseconds

                    let! full =
                        task {
                            try
                                return! Wire.read w.Stream wait.Token
                            with
                            | :? IOException
                            | :? OperationCanceledException -> return None
                        }

                    match full with
                    | Some(kind, payload) when kind = Wire.Failure ->
                        return raise (RemoteExceptions.decode env.Name typeof<'b> (ReadOnlySpan payload))
                    | _ ->
                        if token.IsCancellationRequested then
                            raise (OperationCanceledException token)

                        do! drop false
                        return raise (RemoteExceptions.decodeBrief env.Name typeof<'b> brief)
                | Some(_, payload) -> return raise (RemoteExceptions.decode env.Name typeof<'b> (ReadOnlySpan payload))
                | None ->
                    let! e = crashed w
                    return raise e
            }

        task {
            let mutable failure: exn = null

            try
                WireWarmUp.arrays<'a, 'b>()
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
type internal ProcessExecutor<'a, 'b>(fref: FunctionRef, policy: StagePolicy<'a> option, bound: byte[]) =
    inherit StageExecutor<'a, 'b>()
    let setup = ProcessWorkers.setup fref bound
    override _.Kind = Executor.Process
    override _.Quantum = Sizer.RemoteQuantum

    override _.Start(env, ended) =
        match policy with
        | None -> env.Ctx.StartTask((fun () -> ProcessWorkers.processMap setup env), ended)
        | Some p -> env.Ctx.StartTask((fun () -> ProcessWorkers.processMapPolicy p setup env), ended)
