namespace Pyper

open System
open System.Diagnostics
open System.IO
open System.Text.Json
open System.Runtime.ExceptionServices
open System.Threading
open System.Threading.Tasks

/// A process stage's worker under a timeout, failure policy or rate limit.
module internal ProcessPolicyWorker =
    open ProcessConnection

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
                let! code = WorkerPool.exitCode w
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
                        raise (PolicyRules.timedOut env position p.Timeout.Value null)
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
                elif reader.Kind = Wire.StateFailure then
                    // The worker's state failed (init, dispose): the run fails, whatever the policy.
                    return raise (StateFailureException(RemoteExceptions.decode env.Name typeof<'b> reader.Payload))
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

        // The stage's clean end with per-worker state: the worker process disposes it.
        let release () : Task =
            task {
                if stateful setup && not (isNull worker) then
                    frame.Begin()
                    do! worker.Stream.WriteAsync(frame.Seal Wire.Release, token)
                    let! ok = frames.ReadAsync token

                    if not ok then
                        let! e = crashed worker
                        raise e
                    elif frames.Kind <> Wire.Results then
                        raise (RemoteExceptions.decode env.Name typeof<'b> frames.Payload)
            }

        task {
            let mutable failure: exn = null

            try
                RemoteExceptions.warmUp ()
                do! Policies.mapEach p true ready call env
                do! release ()
            with e ->
                failure <-
                    match e with
                    | :? StateFailureException as s -> s.InnerException
                    | e -> e

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

                // A worker process with per-worker state gets 2 s to dispose it, also when stopped.
                do! drop (stateful setup || not token.IsCancellationRequested)
                ExceptionDispatchInfo.Throw e
        }
