namespace Pyper

open System
open System.Diagnostics
open Pyper.FSharp
open System.Collections.Generic
open System.Threading
open System.Threading.Tasks

/// The interpreter: turns a stage description and its executor into queues and running workers when a run connects its stages, and makes the run's source queue.
module internal Interpreter =
    /// A one-stage pipeline whose workers `executor` runs under `info`'s options.
    let stage (info: StageInfo) (executor: StageExecutor<'a, 'b>) : Pipeline<'a, 'b> =
        let connect (ctx: RunContext) (input: BatchQueue<'a>) =
            let name = StageInfo.runName (ctx.NextStageIndex()) info
            input.AddReaders info.Workers
            let output = BatchQueue<'b>(info.Capacity)
            ctx.Register output
            let probe = StageProbe(name, info.Workers, (fun () -> output.Count))
            ctx.Telemetry.Add probe

            let turnstile =
                if info.Ordered && info.Workers > 1 then
                    let t = Turnstile()
                    ctx.Register t
                    t
                else
                    null

            let remaining = ref info.Workers

            let finished () =
                if Interlocked.Decrement &remaining.contents = 0 then
                    output.Complete()
                    input.CloseReaders()

            let ended (e: exn) =
                probe.WorkerEnded(
                    if isNull e || e :? ReadersGoneException || ctx.IsStopEcho e then
                        null
                    else
                        e
                )

                match e with
                | null
                | :? ReadersGoneException -> finished ()
                | e when ctx.IsStopEcho e -> ()
                | :? NullResultException as n ->
                    let message =
                        $"Stage '{name}' ({StageInfo.label info.Kind}): the function returned a null {n.What}; return {n.Hint} instead."

                    ctx.Fail(name, InvalidOperationException(message, n))
                | e -> ctx.Fail(name, e)

            ctx.OnStart(fun () ->
                let previous = probe.Enter()

                for w in 1 .. info.Workers do
                    let env =
                        {
                            Ctx = ctx
                            Name = name
                            Worker = w
                            Input = input
                            Output = output
                            Turnstile = turnstile
                            Sizer = Sizer executor.Quantum
                            Probe = probe
                        }

                    executor.Start(env, ended)

                Activity.Current <- previous)

            output

        Pipeline<'a, 'b>([ info ], connect)

    let private sourceEnded (ctx: RunContext) (e: exn) =
        match e with
        | null
        | :? ReadersGoneException -> ()
        | e when ctx.IsStopEcho e -> ()
        | e -> ctx.Fail("source", e)

    /// The source queue of a run over one input.
    let single (x: 'a) (_: RunContext) =
        let q = BatchQueue<'a>(0)
        Wait.write q [| x |] 1
        q.Complete()
        q

    /// True when `source` is an in-memory collection whose items all fit in the source queue
    /// (only types whose count is known to be true: arrays, List, F# lists).
    let private fitsAhead (source: seq<'a>) =
        let rec short (l: 'a list) n =
            match l with
            | [] -> true
            | _ :: rest -> n > 0 && short rest (n - 1)

        match source with
        | :? ('a[]) as a -> a.Length <= Tuning.SourceReadAhead
        | :? List<'a> as l -> l.Count <= Tuning.SourceReadAhead
        | :? ('a list) as l -> short l Tuning.SourceReadAhead
        | _ -> false

    /// The source queue of a run over a sequence, filled by a dedicated thread (reading a
    /// sequence may block; on a thread of its own it waits for room without allocating), or at
    /// once when the run starts if it is a small in-memory collection.
    let ofSeq (source: seq<'a>) (ctx: RunContext) =
        let q = BatchQueue<'a>(Tuning.SourceReadAhead)
        ctx.Register q

        /// An array is copied into the queue a slice at a time, as much as there is room for
        /// (reading it cannot block, so nothing is gained by handing items on one by one).
        let pumpArray (items: 'a[]) =
            let me = BlockingWaiter.ForThisThread
            let mutable off = 0

            while off < items.Length do
                let n = min Tuning.MaxBatch (items.Length - off)
                let struct (k, wait) = q.TryWrite(items, off, n, me)
                off <- off + k

                if not (isNull wait) then
                    me.Wait()

            q.Complete()

        let pumpSeq () =
            let em = Emitter<'a>(q, null)
            let eager = Loops.mayBlock source
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

        let pump () =
            match source with
            | :? ('a[]) as items -> pumpArray items
            | _ -> pumpSeq ()

        ctx.OnStart(fun () ->
            if fitsAhead source then
                // Cannot block: the whole source fits in the queue, and reading it is reading memory.
                // Pumped at once, it needs no thread (a first result comes sooner).
                try
                    pump ()
                with e ->
                    sourceEnded ctx e
            else
                ctx.StartSourceThread("Pyper/source", pump, sourceEnded ctx))

        q

    /// The source queue of a run over an async stream, filled by its own async loop.
    let ofAsyncSeq (source: IAsyncEnumerable<'a>) (ctx: RunContext) =
        let q = BatchQueue<'a>(Tuning.SourceReadAhead)
        ctx.Register q

        let pump () : Task =
            task {
                let em = Emitter<'a>(q, null)
                let waiter = AsyncWaiter()

                let flush () : Task =
                    task {
                        do! em.EmitAsync()
                        do! Wait.roomWith waiter q
                    }

                let add x : Task =
                    if em.Add(x, false) || em.Count >= q.Free then
                        flush ()
                    else
                        Task.CompletedTask

                do! Wait.roomWith waiter q

                do!
                    AsyncStream.forEach
                        source
                        ctx.Token
                        (fun () -> if em.Count > 0 then flush () else Task.CompletedTask)
                        add

                do! em.EmitAsync()
                q.Complete()
            }

        ctx.OnStart(fun () -> ctx.StartSourceTask(pump, sourceEnded ctx))

        q
