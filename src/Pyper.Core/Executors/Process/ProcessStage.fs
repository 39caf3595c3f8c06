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

/// The process executor: each worker is an awaiting loop on the thread pool that hands batches to
/// a worker process of its own (`ProcessWorkers.processMap`) and waits for their results.
[<Sealed>]
type internal ProcessExecutor<'a, 'b>(fref: FunctionRef) =
    inherit StageExecutor<'a, 'b>()
    override _.Kind = Executor.Process
    override _.Quantum = Sizer.RemoteQuantum

    override _.Start(env, ended) =
        env.Ctx.StartTask((fun () -> ProcessWorkers.processMap fref env), ended)
