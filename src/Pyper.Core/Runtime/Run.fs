namespace Pyper

open System
open Pyper.FSharp
open System.Collections.Generic
open System.Runtime.CompilerServices
open System.Runtime.ExceptionServices
open System.Threading
open System.Threading.Tasks
open System.Threading.Tasks.Sources

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
    /// The batch being consumed: starts small, doubles (up to MaxBatch) each time a take fills it.
    let mutable buf = Array.zeroCreate<'b> 16
    let mutable final: BatchQueue<'b> = null
    let mutable pos = 0
    let mutable len = 0
    let mutable current = Unchecked.defaultof<'b>
    let mutable finished: Task = null
    /// True once the results have ended or the enumerator was disposed: moves answer false.
    let mutable over = false

    /// The pending MoveNextAsync, when it had to wait.
    let mutable pending =
        ManualResetValueTaskSourceCore<bool>(RunContinuationsAsynchronously = true)

    let finish () =
        if isNull finished then
            finished <- ctx.WhenFinished()

        finished

    let start () =
        let src = source ctx
        final <- pipeline.Connect ctx src
        final.AddReaders 1
        ctx.Register final
        ctx.Start()

    /// The run stopped. A failure is raised as soon as it is final (a worker process's failure
    /// once its details have come), while the workers stop: disposing the enumerator waits for
    /// them (a `for` loop does before its exception leaves the loop). A cancellation is raised once
    /// every worker has finished (a failure meanwhile is raised instead).
    let stopped () : Task<bool> =
        task {
            if isNull ctx.Error then
                do! finish ()
            else
                // The end of the run starts now (it ends the run's telemetry even if the
                // enumerator is never disposed); `Stop` awaits the same task.
                finish () |> ignore
                do! ctx.WhenErrorSettled()

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
                over <- true
                return false
        }

    /// Moves to the batch's next result (a result that holds references is cleared from the
    /// batch as it is yielded; plain values need no clearing).
    let next () =
        let p = pos
        let b = buf
        current <- b[p]

        if RuntimeHelpers.IsReferenceOrContainsReferences<'b>() then
            b[p] <- Unchecked.defaultof<'b>

        pos <- p + 1
        true

    /// Hands the consumed batch's room back and tries to take the next batch: Some true when
    /// one landed, None when `waiter` was registered, else the end (Some false). With `spin`,
    /// an empty queue is watched briefly before registering, as a blocking wait spins before it
    /// sleeps: the next batch usually comes within microseconds, sooner than a wake-up through
    /// the thread pool would.
    let tryRefill (waiter: IWaiter) (spin: bool) =
        if isNull final then
            start ()

        if len > 0 then
            if pos < len then
                Buffers.clear buf len // results not yielded (the run failed meanwhile)

            final.Release len

            if len = buf.Length && len < Tuning.MaxBatch then
                buf <- Array.zeroCreate (min Tuning.MaxBatch (2 * len))

            len <- 0
            pos <- 0

        // Once a failure is known nothing more is yielded, even before every queue is aborted.
        if not (isNull ctx.Error) then
            raise (RunAbortedException())

        if spin && not final.Ready then
            let mutable spinner = SpinWait()

            while not final.Ready && spinner.Count < Tuning.SpinBeforeBlocking do
                spinner.SpinOnce -1

        let struct (n, _, wait) = final.TryTake(buf, buf.Length, false, waiter)

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

    /// Moves to the next result, blocking the calling thread while none is ready. The common
    /// case (the batch holds another result) is kept small enough for the JIT to inline.
    member this.MoveNextBlocking() =
        let p = pos

        if p < len && isNull ctx.Error then
            // `next ()`, written out: a call per item costs as much as the rest of this path.
            let b = buf
            current <- b[p]

            if RuntimeHelpers.IsReferenceOrContainsReferences<'b>() then
                b[p] <- Unchecked.defaultof<'b>

            pos <- p + 1
            true
        else
            this.MoveNextBlockingSlow()

    /// A blocking move once the batch is used up (or the run failed): takes the next batch.
    member private _.MoveNextBlockingSlow() =
        let sync (t: Task<bool>) = t.GetAwaiter().GetResult()

        if pos < len && isNull ctx.Error then
            next ()
        elif over then
            false
        else
            try
                let me = BlockingWaiter.ForThisThread
                let mutable answer = ValueNone

                while answer.IsNone do
                    answer <- tryRefill me false

                    if answer.IsNone then
                        me.Wait()

                if answer.Value then
                    next ()
                else
                    ctx.WaitWorkers()
                    sync (ended ())
            with :? RunAbortedException ->
                sync (stopped ())

    /// An awaited move once the batch is used up (or the run failed): takes the next batch, or
    /// answers a ValueTask backed by this run when it must wait.
    member private this.MoveNextAsyncSlow() : ValueTask<bool> =
        if pos < len && isNull ctx.Error then
            ValueTask<bool>(next ())
        elif over then
            ValueTask<bool>(false)
        else
            try
                pending.Reset()

                match tryRefill this true with
                | ValueSome true -> ValueTask<bool>(next ())
                | ValueSome false -> ValueTask<bool>(ended ())
                | ValueNone -> ValueTask<bool>(this, pending.Version)
            with :? RunAbortedException ->
                ValueTask<bool>(stopped ())

    /// Stops the run (if it started) and waits until all of it is gone. Later moves answer false.
    member this.Stop() : Task =
        GC.SuppressFinalize this
        over <- true
        Buffers.clear buf len
        pos <- 0
        len <- 0
        current <- Unchecked.defaultof<'b>

        if isNull final then
            ctx.DisposeUnstarted()
            Task.CompletedTask
        else
            ctx.Cancel()
            finish ()

    /// The safety net for an enumerator that is dropped without being disposed: once it is
    /// collected, its run is cancelled, so its workers stop (nothing of the run refers to this
    /// object, except a pending MoveNextAsync's wait). The stop runs on the thread pool:
    /// cancelling runs the token's callbacks, a user's among them, which must not hold up the
    /// process's one finalizer thread.
    override this.Finalize() =
        ThreadPool.UnsafeQueueUserWorkItem(
            (fun _ ->
                try
                    this.Stop() |> ignore
                with _ ->
                    ()),
            null
        )
        |> ignore

    interface IWaiter with
        /// The wait of a pending MoveNextAsync is over: take the batch (or see the end).
        member this.Signal() =
            try
                match tryRefill this false with
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
            let p = pos

            if p < len && isNull ctx.Error then
                // `next ()`, written out, as in MoveNextBlocking.
                let b = buf
                current <- b[p]

                if RuntimeHelpers.IsReferenceOrContainsReferences<'b>() then
                    b[p] <- Unchecked.defaultof<'b>

                pos <- p + 1
                ValueTask<bool>(true)
            else
                this.MoveNextAsyncSlow()

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
