namespace Pyper

open System
open System.Buffers
open System.Collections.Generic
open System.Runtime.CompilerServices
open System.Threading
open System.Threading.Tasks

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

    /// Default capacity of a stage's output queue, in items.
    [<Literal>]
    let DefaultCapacity = 1024

    /// How many times a blocked thread spins (yielding to others) before it sleeps, as `Task.Wait`
    /// does: on 2 cores, 20 gives 20% less throughput than 35, and 70 or more gives 15% less.
    [<Literal>]
    let SpinBeforeBlocking = 35

    /// How far a run reads a source stream ahead of the first stage's workers.
    [<Literal>]
    let SourceReadAhead = 1024

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

/// How async code waits: a task per wait (awaiting code cannot reuse one safely).
[<Sealed>]
type internal TaskWaiter() =
    inherit TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)

    interface IWaiter with
        member this.Signal() = this.TrySetResult() |> ignore

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

/// A bounded multi-producer, multi-consumer queue that moves items in batches.
///
/// `bound` limits the items *occupying* the queue: items waiting in it plus items
/// taken by readers and not yet released. Readers release what they took once its
/// results are handed on, so a stage's in-flight items are bounded exactly.
/// Waiting never blocks inside the queue: an operation that cannot proceed registers the
/// caller's waiter and says so; the caller then blocks on it (thread workers) or awaits it
/// (async ones). `Abort` signals every waiter.
[<Sealed; AllowNullLiteral>]
type internal BatchQueue<'T>(capacity: int) =
    let sync = obj ()
    let mutable buffer: 'T[] = Array.zeroCreate 16
    let mutable head = 0
    let mutable count = 0
    let mutable occupied = 0
    let mutable bound = if capacity = 0 then Int32.MaxValue else capacity
    let mutable completed = false
    let mutable readersGone = false
    let mutable aborted = false
    let mutable tickets = 0L
    let readers = WaitList()
    let writers = WaitList()

    static let clears = RuntimeHelpers.IsReferenceOrContainsReferences<'T>()

    /// The waiter to register: the caller's, or (async callers pass null) a new task.
    static let register (list: WaitList) (w: IWaiter) =
        let w = if isNull w then TaskWaiter() :> IWaiter else w
        list.Add w
        w

    let grow needed =
        let next = Array.zeroCreate (max needed (buffer.Length * 2))
        let first = min count (buffer.Length - head)
        Array.Copy(buffer, head, next, 0, first)
        Array.Copy(buffer, 0, next, first, count - first)
        buffer <- next
        head <- 0

    let check () =
        if aborted then
            raise (RunAbortedException())

        if readersGone then
            raise (ReadersGoneException())

    /// Adds room for `n` more readers' items (each reader may hold items it took).
    member _.AddReaders(n: int) =
        if bound <> Int32.MaxValue then
            bound <- bound + n

    /// Room left for writers (a snapshot; only the single writer of a source queue relies on it).
    member _.Free = bound - occupied

    /// True while some reader waits for items: a writer should hand on what it has.
    member _.HasWaitingReader = readers.Any

    /// Writes up to `n` items from `src[offset..]`; returns how many were written and, when
    /// not all fitted, the waiter registered to hear when there may be room (`w`, or a new
    /// `TaskWaiter` when `w` is null).
    member _.TryWrite(src: 'T[], offset: int, n: int, w: IWaiter) : struct (int * IWaiter) =
        let mutable k = 0
        let mutable wait = null

        let woken =
            lock sync (fun () ->
                check ()
                k <- min n (bound - occupied)

                if k < n then
                    wait <- register writers w

                if k > 0 then
                    if count + k > buffer.Length then
                        grow (count + k)

                    let tail = (head + count) % buffer.Length
                    let first = min k (buffer.Length - tail)
                    Array.Copy(src, offset, buffer, tail, first)
                    Array.Copy(src, offset + first, buffer, 0, k - first)
                    count <- count + k
                    occupied <- occupied + k
                    readers.TakeAll()
                else
                    Woken(null, null, 0))

        woken.Signal()
        struct (k, wait)

    /// Takes up to `max` items into `dest`. Returns the count taken (0 when the queue is
    /// complete and empty, or when it must be waited for), the batch's ticket (taking order,
    /// for ordered stages) and the waiter registered when the caller must wait (`w`, or a new
    /// `TaskWaiter` when `w` is null), else null. With `release`, the taken items stop
    /// occupying the queue at once.
    member _.TryTake(dest: 'T[], max: int, release: bool, w: IWaiter) : struct (int * int64 * IWaiter) =
        let mutable result = struct (0, 0L, null)

        let woken =
            lock sync (fun () ->
                if aborted then
                    raise (RunAbortedException())

                if count > 0 then
                    let k = min count max
                    let first = min k (buffer.Length - head)
                    Array.Copy(buffer, head, dest, 0, first)
                    Array.Copy(buffer, 0, dest, first, k - first)

                    if clears then
                        Array.Clear(buffer, head, first)
                        Array.Clear(buffer, 0, k - first)

                    head <- (head + k) % buffer.Length
                    count <- count - k
                    let ticket = tickets
                    tickets <- tickets + 1L
                    result <- struct (k, ticket, null)

                    if release then
                        occupied <- occupied - k
                        writers.TakeAll()
                    else
                        Woken(null, null, 0)
                else
                    if not completed then
                        result <- struct (0, 0L, register readers w)

                    Woken(null, null, 0))

        woken.Signal()
        result

    /// Null while there is room for one more item, else the waiter registered to hear when
    /// there may be (`w`, or a new `TaskWaiter` when `w` is null).
    member _.RoomWait(w: IWaiter) : IWaiter =
        lock sync (fun () ->
            check ()
            if occupied < bound then null else register writers w)

    /// Frees the room of `n` taken items, waking waiting writers.
    /// (Each of these three writes its lock out: a shared helper taking the change as a function
    /// would allocate a closure per call, and Release runs once per batch.)
    member _.Release(n: int) =
        let woken =
            lock sync (fun () ->
                occupied <- occupied - n
                writers.TakeAll())

        woken.Signal()

    /// No more items will be written: readers drain what is left, then see the end.
    member _.Complete() =
        let woken =
            lock sync (fun () ->
                completed <- true
                readers.TakeAll())

        woken.Signal()

    /// Every reader has finished: writers stop quietly.
    member _.CloseReaders() =
        let woken =
            lock sync (fun () ->
                readersGone <- true
                writers.TakeAll())

        woken.Signal()

    interface IAbortable with
        member _.Abort() =
            let struct (r, w) =
                lock sync (fun () ->
                    aborted <- true
                    struct (readers.TakeAll(), writers.TakeAll()))

            r.Signal()
            w.Signal()

/// Lets the batches of an ordered stage leave in the order they were taken.
[<Sealed; AllowNullLiteral>]
type internal Turnstile() =
    let sync = obj ()
    let waiters = Collections.Generic.Dictionary<int64, TaskCompletionSource>()
    let mutable current = 0L
    let mutable aborted = false

    /// Null when it is `ticket`'s turn, else a task to wait on before asking again.
    member _.WaitTurn(ticket: int64) : Task =
        lock sync (fun () ->
            if aborted then
                raise (RunAbortedException())

            if ticket = current then
                null
            else
                match waiters.TryGetValue ticket with
                | true, w -> w.Task
                | _ ->
                    let w = TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)
                    waiters[ticket] <- w
                    w.Task)

    /// The current ticket's batch has left: the next one may go.
    member _.Advance() =
        let mutable wake = null

        lock sync (fun () ->
            current <- current + 1L

            match waiters.TryGetValue current with
            | true, w ->
                waiters.Remove current |> ignore
                wake <- w
            | _ -> ())

        if not (isNull wake) then
            wake.TrySetResult() |> ignore

    interface IAbortable with
        member _.Abort() =
            let all =
                lock sync (fun () ->
                    aborted <- true
                    let all = Seq.toArray waiters.Values
                    waiters.Clear()
                    all)

            for w in all do
                w.TrySetResult() |> ignore

/// Blocking and awaiting forms of the queue operations. Blocking forms wait with the calling
/// thread's `BlockingWaiter` (allocating nothing); awaiting forms with a `TaskWaiter` per wait.
module internal Wait =
    let inline block (t: Task) = t.Wait()

    /// The task of a waiter that an async caller (passing null) got registered.
    let inline taskOf (w: IWaiter) = (w :?> TaskWaiter).Task

    /// Writes all `n` items, blocking the calling (dedicated) thread while the queue is full.
    let write (q: BatchQueue<'T>) (src: 'T[]) (n: int) =
        let me = BlockingWaiter.ForThisThread
        let mutable off = 0

        while off < n do
            let struct (k, wait) = q.TryWrite(src, off, n - off, me)
            off <- off + k

            if not (isNull wait) then
                me.Wait()

    /// Writes all `n` items, awaiting while the queue is full.
    let writeAsync (q: BatchQueue<'T>) (src: 'T[]) (n: int) : ValueTask =
        let struct (k, wait) = q.TryWrite(src, 0, n, null)

        if isNull wait then
            ValueTask()
        else
            ValueTask(
                task {
                    let mutable off = k
                    let mutable wait = wait

                    while off < n do
                        do! taskOf wait
                        let struct (k, w) = q.TryWrite(src, off, n - off, null)
                        off <- off + k
                        wait <- w
                }
            )

    /// Takes a batch, blocking while the queue is empty; 0 items means the end.
    let take (q: BatchQueue<'T>) (dest: 'T[]) (max: int) (release: bool) : struct (int * int64) =
        let me = BlockingWaiter.ForThisThread
        let mutable result = struct (0, 0L)
        let mutable go = true

        while go do
            let struct (n, ticket, wait) = q.TryTake(dest, max, release, me)

            if isNull wait then
                result <- struct (n, ticket)
                go <- false
            else
                me.Wait()

        result

    /// Takes a batch, awaiting while the queue is empty; 0 items means the end.
    let takeAsync (q: BatchQueue<'T>) (dest: 'T[]) (max: int) (release: bool) : ValueTask<struct (int * int64)> =
        let struct (n, ticket, wait) = q.TryTake(dest, max, release, null)

        if isNull wait then
            ValueTask<_>(struct (n, ticket))
        else
            ValueTask<struct (int * int64)>(
                task {
                    let mutable result = struct (0, 0L)
                    let mutable wait = wait

                    while not (isNull wait) do
                        do! taskOf wait
                        let struct (n, ticket, w) = q.TryTake(dest, max, release, null)
                        result <- struct (n, ticket)
                        wait <- w

                    return result
                }
                : Task<struct (int * int64)>
            )

    /// Waits, blocking, until the queue has room for one more item.
    let room (q: BatchQueue<'T>) =
        let me = BlockingWaiter.ForThisThread

        while not (isNull (q.RoomWait me)) do
            me.Wait()

    /// Asks `poll` until it answers null, waiting (blocking) on each task it answers meanwhile.
    let until (poll: unit -> Task) =
        let mutable wait = poll ()

        while not (isNull wait) do
            block wait
            wait <- poll ()

    /// Asks `poll` until it answers null, awaiting each task it answers meanwhile.
    let untilAsync (poll: unit -> Task) : ValueTask =
        let wait = poll ()

        if isNull wait then
            ValueTask()
        else
            ValueTask(
                task {
                    let mutable wait = wait

                    while not (isNull wait) do
                        do! wait
                        wait <- poll ()
                }
            )

    /// Waits, awaiting, until the queue has room for one more item.
    let roomAsync (q: BatchQueue<'T>) : ValueTask =
        untilAsync (fun () ->
            match q.RoomWait null with
            | null -> null
            | w -> taskOf w)

    /// Waits, blocking, for `ticket`'s turn.
    let turn (t: Turnstile) (ticket: int64) = until (fun () -> t.WaitTurn ticket)

    /// Waits, awaiting, for `ticket`'s turn.
    let turnAsync (t: Turnstile) (ticket: int64) =
        untilAsync (fun () -> t.WaitTurn ticket)
