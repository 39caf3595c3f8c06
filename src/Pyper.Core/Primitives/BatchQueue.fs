namespace Pyper

open System
open System.Runtime.CompilerServices
open System.Threading

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
    /// A bound that would pass Int32.MaxValue saturates there, which means unbounded.
    member _.AddReaders(n: int) =
        if bound <> Int32.MaxValue then
            bound <-
                if bound > Int32.MaxValue - n then
                    Int32.MaxValue
                else
                    bound + n

    /// Items waiting to be taken (a snapshot, for the queue-length gauge).
    member _.Count = Volatile.Read &count

    /// True when a take would not wait: items are waiting, or the queue is complete or aborted
    /// (a racy snapshot, for a reader deciding whether to spin a little before it registers).
    member _.Ready =
        Volatile.Read &count > 0 || Volatile.Read &completed || Volatile.Read &aborted

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
    /// occupying the queue at once; without it, a take takes at most half the bound.
    member _.TryTake(dest: 'T[], max: int, release: bool, w: IWaiter) : struct (int * int64 * IWaiter) =
        let mutable result = struct (0, 0L, null)

        let woken =
            lock sync (fun () ->
                if aborted then
                    raise (RunAbortedException())

                if count > 0 then
                    // A reader that keeps occupying what it takes takes at most half the bound,
                    // so its writer can fill the other half meanwhile (else they alternate).
                    let k =
                        if release then
                            min count max
                        else
                            min count (min max (Math.Max(1, bound / 2)))

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
