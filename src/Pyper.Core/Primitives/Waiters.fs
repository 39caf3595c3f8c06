namespace Pyper

open System
open System.Buffers
open System.Collections.Generic
open System.Threading
open System.Threading.Tasks
open System.Threading.Tasks.Sources

/// Thrown inside the runtime when a run stops (failure, cancellation, early stop); never seen by users.
[<Sealed>]
type internal RunAbortedException() =
    inherit Exception("The pipeline run was stopped.")

/// Thrown to a writer whose readers have all finished (a join that did not read its whole input).
[<Sealed>]
type internal ReadersGoneException() =
    inherit Exception("The next stage has finished reading.")

/// Something the run must wake up when it stops.
[<AllowNullLiteral>]
type internal IAbortable =
    abstract Abort: unit -> unit

/// Tuning constants of the hand-off between stages.
module internal Tuning =
    /// The largest batch a worker takes or hands on at once.
    [<Literal>]
    let MaxBatch = 1024

    /// How many times a blocked thread spins (yielding to others) before it sleeps, as `Task.Wait`
    /// does: on 2 cores, 20 gives 20% less throughput than 35, and 70 or more gives 15% less.
    [<Literal>]
    let SpinBeforeBlocking = 35

    /// How far a run reads a source stream ahead of the first stage's workers.
    [<Literal>]
    let SourceReadAhead = 1024

    /// The most workers a stage on threads or async workers may have.
    [<Literal>]
    let MaxWorkers = 10_000

    /// The most workers a process stage may have (each is a .NET process).
    [<Literal>]
    let MaxProcessWorkers = 256

    /// How long a stopping run waits for a source that is inside its own MoveNext before it
    /// leaves it behind (detached: it ends by itself when MoveNext returns).
    [<Literal>]
    let SourceGraceMilliseconds = 50

/// Someone waiting on a queue: registered by an operation that could not proceed, then
/// signalled exactly once (by the operation that changed what it waits for, or by Abort).
[<AllowNullLiteral>]
type internal IWaiter =
    /// Wakes the waiter; called outside the queue's lock.
    abstract Signal: unit -> unit

/// How a dedicated thread waits: one per thread, reused for every wait, so waiting allocates nothing.
[<Sealed; AllowNullLiteral>]
type internal BlockingWaiter() =

    [<VolatileField>]
    let mutable signalled = false

    [<ThreadStatic; DefaultValue>]
    static val mutable private current: BlockingWaiter

    /// The calling thread's waiter.
    static member ForThisThread =
        if isNull BlockingWaiter.current then
            BlockingWaiter.current <- BlockingWaiter()

        BlockingWaiter.current

    /// Blocks until signalled (returns at once if it already was), then re-arms. It spins
    /// briefly first, as `Task.Wait` does: the signal usually comes within microseconds, and a
    /// sleep and wake-up through the kernel would cost more than the batch it waits for.
    member this.Wait() =
        let mutable spinner = SpinWait()

        while not (Volatile.Read &signalled) && spinner.Count < Tuning.SpinBeforeBlocking do
            spinner.SpinOnce -1

        lock this (fun () ->
            while not signalled do
                Monitor.Wait this |> ignore

            signalled <- false)

    interface IWaiter with
        member this.Signal() =
            lock this (fun () ->
                signalled <- true
                Monitor.Pulse this)

/// How async code waits when it cannot reuse a waiter (a wait it may abandon): a task per wait.
[<Sealed>]
type internal TaskWaiter() =
    inherit TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)

    interface IWaiter with
        member this.Signal() = this.TrySetResult() |> ignore

/// How an async worker waits: one per worker, reused for every wait, so waiting allocates
/// nothing. `Arm` re-arms it before each attempt that may register it; when the attempt did
/// register it, the worker awaits `Wait` (a ValueTask over the waiter itself), which completes
/// when the waiter is signalled (exactly once per registration, also when the run stops: the
/// queue's Abort signals every waiter, and the retried attempt then raises). A wait must be
/// awaited before the next `Arm`.
[<Sealed; AllowNullLiteral>]
type internal AsyncWaiter() =
    let mutable core =
        ManualResetValueTaskSourceCore<bool>(RunContinuationsAsynchronously = true)

    /// 1 while `Signal` is inside SetResult.
    let mutable signalling = 0

    /// Re-arms the waiter for a new wait and answers it, to register.
    member this.Arm() : IWaiter =
        // An awaiter may resume as soon as SetResult has marked the wait complete, while the
        // signalling thread is still inside SetResult (publishing to the continuation slot):
        // resetting then would corrupt the next wait. Let it leave first (almost never waits).
        if Interlocked.CompareExchange(&signalling, 0, 0) <> 0 then
            let mutable spinner = SpinWait()

            while Volatile.Read &signalling <> 0 do
                spinner.SpinOnce()

        core.Reset()
        this

    /// The wait registered since the last `Arm`.
    member this.Wait = ValueTask(this, core.Version)

    interface IWaiter with
        member _.Signal() =
            Interlocked.Exchange(&signalling, 1) |> ignore
            core.SetResult true
            Volatile.Write(&signalling, 0)

    interface IValueTaskSource with
        member _.GetResult(token) = core.GetResult token |> ignore
        member _.GetStatus(token) = core.GetStatus token

        member _.OnCompleted(continuation, state, token, flags) =
            core.OnCompleted(continuation, state, token, flags)

/// Waiters taken off a list under a lock, to be signalled once it is released.
[<Struct; NoEquality; NoComparison>]
type internal Woken =
    val First: IWaiter
    val Rest: IWaiter[]
    val RestCount: int

    new(first, rest, n) =
        {
            First = first
            Rest = rest
            RestCount = n
        }

    member w.Signal() =
        if not (isNull w.First) then
            w.First.Signal()

            if not (isNull w.Rest) then
                for i in 0 .. w.RestCount - 1 do
                    w.Rest[i].Signal()

                ArrayPool<IWaiter>.Shared.Return(w.Rest, true)

/// The waiters on one side of a queue (used under the queue's lock). One waiter, the common
/// case, lives in a field; taking them off allocates nothing.
[<Sealed>]
type internal WaitList() =
    let mutable first: IWaiter = null
    let rest = List<IWaiter>()

    /// True while someone waits (a racy read is a fine hint).
    member _.Any = not (isNull first)

    member _.Add(w: IWaiter) =
        if isNull first then first <- w else rest.Add w

    /// Takes every waiter off the list; signal the result after releasing the lock.
    member _.TakeAll() =
        if isNull first then
            Woken(null, null, 0)
        else
            let f = first
            first <- null

            if rest.Count = 0 then
                Woken(f, null, 0)
            else
                let n = rest.Count
                let arr = ArrayPool<IWaiter>.Shared.Rent n
                rest.CopyTo arr
                rest.Clear()
                Woken(f, arr, n)
