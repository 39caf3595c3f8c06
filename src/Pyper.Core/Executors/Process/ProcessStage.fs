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
    open ProcessConnection

    /// A map stage's worker: each batch through the worker process, results in input order.
    /// A stage with per-worker state ends by releasing it (see `releaseState`).
    let processMap (setup: struct (byte * byte[])) (env: WorkerEnv<'a, 'b>) : Task =
        serve setup env (fun _ link ->
            task {
                let frames = [| FrameBuffer(); FrameBuffer() |]
                let scratch = Array.zeroCreate<'b> Tuning.MaxBatch
                let at = ref 0

                do!
                    Loops.mapBatches
                        (fun input n output ->
                            at.Value <- 0

                            exchange env.Name link frames scratch input n (fun items k ->
                                Array.Copy(items, 0, output, at.Value, k)
                                Buffers.clear items k
                                at.Value <- at.Value + k
                                Task.CompletedTask))
                        env

                if stateful setup then
                    do! releaseState link
            })

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

/// The process executor: each worker is an awaiting loop on the thread pool that hands batches to
/// a worker process of its own (`ProcessWorkers.processMap`, or `processMapPolicy` under a timeout
/// or failure policy) and waits for their results. `setup` is the frame that sends a worker
/// process its function (`ProcessConnection.setup` or `stateSetup`).
[<Sealed>]
type internal ProcessExecutor<'a, 'b>(shape: Shape, setup: struct (byte * byte[]), policy: StagePolicy<'a> option) =
    inherit StageExecutor<'a, 'b>()
    override _.Kind = Executor.Process
    override _.Quantum = Sizer.RemoteQuantum

    override _.Start(env, ended) =
        match policy with
        | Some p -> env.Ctx.StartTask((fun () -> ProcessPolicyWorker.processMapPolicy p setup env), ended)
        | None ->
            let worker =
                match shape with
                | Shape.Map -> ProcessWorkers.processMap
                | Shape.Branch -> ProcessWorkers.processBranch
                | _ -> ProcessWorkers.processJoin

            env.Ctx.StartTask((fun () -> worker setup env), ended)
