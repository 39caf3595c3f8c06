namespace Pyper

open System
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
    let MaxBatch = 256

    /// Default capacity of a stage's output queue, in items.
    [<Literal>]
    let DefaultCapacity = 1024

    /// How far a run reads a source stream ahead of the first stage's workers.
    [<Literal>]
    let SourceReadAhead = 256

/// A bounded multi-producer, multi-consumer queue that moves items in batches.
///
/// `bound` limits the items *occupying* the queue: items waiting in it plus items
/// taken by readers and not yet released. Readers release what they took once its
/// results are handed on, so a stage's in-flight items are bounded exactly.
/// Waiting never blocks a caller itself: operations return a Task to wait on
/// (blocking for thread workers, awaited for async ones), and `Abort` wakes every waiter.
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

    [<VolatileField>]
    let mutable readWaiter: TaskCompletionSource = null

    let mutable writeWaiter: TaskCompletionSource = null

    static let clears = RuntimeHelpers.IsReferenceOrContainsReferences<'T>()

    static let newWaiter () =
        TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)

    static let signal (w: TaskCompletionSource) =
        if not (isNull w) then
            w.TrySetResult() |> ignore

    /// Applies `change` under the lock, then wakes whoever waits on that side.
    let wakeWriter (change: unit -> unit) =
        let mutable wake = null

        lock sync (fun () ->
            change ()
            wake <- writeWaiter
            writeWaiter <- null)

        signal wake

    let wakeReader (change: unit -> unit) =
        let mutable wake = null

        lock sync (fun () ->
            change ()
            wake <- readWaiter
            readWaiter <- null)

        signal wake

    let grow needed =
        let next = Array.zeroCreate (max needed (buffer.Length * 2))
        let first = min count (buffer.Length - head)
        Array.Copy(buffer, head, next, 0, first)
        Array.Copy(buffer, 0, next, first, count - first)
        buffer <- next
        head <- 0

    /// Adds room for `n` more readers' items (each reader may hold items it took).
    member _.AddReaders(n: int) =
        if bound <> Int32.MaxValue then
            bound <- bound + n


    /// Room left for writers (a snapshot; only the single writer of a source queue relies on it).
    member _.Free = bound - occupied

    /// True while some reader waits for items: a writer should hand on what it has.
    member _.HasWaitingReader = not (isNull readWaiter)

    /// Writes up to `n` items from `src[offset..]`; returns how many were written and,
    /// when not all fitted, a task that completes when there may be room.
    member _.TryWrite(src: 'T[], offset: int, n: int) : struct (int * Task) =
        let mutable wake = null
        let mutable wait = null
        let mutable k = 0

        lock sync (fun () ->
            if aborted then
                raise (RunAbortedException())

            if readersGone then
                raise (ReadersGoneException())

            k <- min n (bound - occupied)

            if k > 0 then
                if count + k > buffer.Length then
                    grow (count + k)

                let tail = (head + count) % buffer.Length
                let first = min k (buffer.Length - tail)
                Array.Copy(src, offset, buffer, tail, first)
                Array.Copy(src, offset + first, buffer, 0, k - first)
                count <- count + k
                occupied <- occupied + k
                wake <- readWaiter
                readWaiter <- null

            if k < n then
                if isNull writeWaiter then
                    writeWaiter <- newWaiter ()

                wait <- writeWaiter.Task)

        signal wake
        struct (k, wait)

    /// Takes up to `max` items into `dest`. Returns the count taken (0 when the queue
    /// is complete and empty, or when it must be waited for), the batch's ticket
    /// (taking order, for ordered stages) and the task to wait on (null unless waiting).
    /// With `release`, the taken items stop occupying the queue at once.
    member _.TryTake(dest: 'T[], max: int, release: bool) : struct (int * int64 * Task) =
        let mutable wake = null
        let mutable result = struct (0, 0L, null)

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

                if release then
                    occupied <- occupied - k
                    wake <- writeWaiter
                    writeWaiter <- null

                result <- struct (k, ticket, null)
            elif not completed then
                if isNull readWaiter then
                    readWaiter <- newWaiter ()

                result <- struct (0, 0L, readWaiter.Task))

        signal wake
        result

    /// Null while there is room for one more item, else a task that completes when there may be.
    member _.RoomWait() : Task =
        lock sync (fun () ->
            if aborted then
                raise (RunAbortedException())

            if readersGone then
                raise (ReadersGoneException())

            if occupied < bound then
                null
            else
                if isNull writeWaiter then
                    writeWaiter <- newWaiter ()

                writeWaiter.Task)

    /// Frees the room of `n` taken items, waking a waiting writer.
    member _.Release(n: int) =
        wakeWriter (fun () -> occupied <- occupied - n)

    /// No more items will be written: readers drain what is left, then see the end.
    member _.Complete() =
        wakeReader (fun () -> completed <- true)

    /// Every reader has finished: writers stop quietly.
    member _.CloseReaders() =
        wakeWriter (fun () -> readersGone <- true)

    interface IAbortable with
        member _.Abort() =
            let mutable r = null
            let mutable w = null

            lock sync (fun () ->
                aborted <- true
                r <- readWaiter
                w <- writeWaiter
                readWaiter <- null
                writeWaiter <- null)

            signal r
            signal w

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

/// Blocking and awaiting forms of the queue operations.
module internal Wait =
    let inline block (t: Task) = t.Wait()

    /// Writes all `n` items, blocking the calling (dedicated) thread while the queue is full.
    let write (q: BatchQueue<'T>) (src: 'T[]) (n: int) =
        let mutable off = 0

        while off < n do
            let struct (k, wait) = q.TryWrite(src, off, n - off)
            off <- off + k

            if not (isNull wait) then
                block wait

    /// Writes all `n` items, awaiting while the queue is full.
    let writeAsync (q: BatchQueue<'T>) (src: 'T[]) (n: int) : ValueTask =
        let struct (k, wait) = q.TryWrite(src, 0, n)

        if isNull wait then
            ValueTask()
        else
            ValueTask(
                task {
                    let mutable off = k
                    let mutable wait = wait

                    while off < n do
                        do! wait
                        let struct (k, w) = q.TryWrite(src, off, n - off)
                        off <- off + k
                        wait <- w
                }
            )

    /// Takes a batch, blocking while the queue is empty; 0 items means the end.
    let take (q: BatchQueue<'T>) (dest: 'T[]) (max: int) (release: bool) : struct (int * int64) =
        let mutable result = struct (0, 0L)
        let mutable go = true

        while go do
            let struct (n, ticket, wait) = q.TryTake(dest, max, release)

            if isNull wait then
                result <- struct (n, ticket)
                go <- false
            else
                block wait

        result

    /// Takes a batch, awaiting while the queue is empty; 0 items means the end.
    let takeAsync (q: BatchQueue<'T>) (dest: 'T[]) (max: int) (release: bool) : ValueTask<struct (int * int64)> =
        let struct (n, ticket, wait) = q.TryTake(dest, max, release)

        if isNull wait then
            ValueTask<_>(struct (n, ticket))
        else
            ValueTask<struct (int * int64)>(
                task {
                    let mutable result = struct (0, 0L)
                    let mutable wait = wait

                    while not (isNull wait) do
                        do! wait
                        let struct (n, ticket, w) = q.TryTake(dest, max, release)
                        result <- struct (n, ticket)
                        wait <- w

                    return result
                }
                : Task<struct (int * int64)>
            )

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

    /// Waits, blocking, until the queue has room for one more item.
    let room (q: BatchQueue<'T>) = until q.RoomWait

    /// Waits, awaiting, until the queue has room for one more item.
    let roomAsync (q: BatchQueue<'T>) = untilAsync q.RoomWait

    /// Waits, blocking, for `ticket`'s turn.
    let turn (t: Turnstile) (ticket: int64) = until (fun () -> t.WaitTurn ticket)

    /// Waits, awaiting, for `ticket`'s turn.
    let turnAsync (t: Turnstile) (ticket: int64) =
        untilAsync (fun () -> t.WaitTurn ticket)
