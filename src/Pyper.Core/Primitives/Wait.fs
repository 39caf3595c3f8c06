namespace Pyper

open System
open System.Threading
open System.Threading.Tasks
open System.Threading.Tasks

/// Blocking and awaiting forms of the queue operations. Blocking forms wait with the calling
/// thread's `BlockingWaiter` (allocating nothing); awaiting forms with the caller's own
/// `AsyncWaiter` (allocating only the task that retries, when they must wait).
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

    /// Writes all `n` items, awaiting with the caller's own `w` while the queue is full (only a
    /// write that must wait allocates: the task that retries it).
    let writeWith (w: AsyncWaiter) (q: BatchQueue<'T>) (src: 'T[]) (n: int) : ValueTask =
        let struct (k, wait) = q.TryWrite(src, 0, n, w.Arm())

        if isNull wait then
            ValueTask()
        else
            ValueTask(
                task {
                    let mutable off = k
                    do! w.Wait

                    while off < n do
                        let struct (k, wait) = q.TryWrite(src, off, n - off, w.Arm())
                        off <- off + k

                        if not (isNull wait) then
                            do! w.Wait
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

    /// Takes a batch, awaiting with the caller's own `w` while the queue is empty; 0 items means
    /// the end (only a take that must wait allocates: the task that retries it).
    let takeWith
        (w: AsyncWaiter)
        (q: BatchQueue<'T>)
        (dest: 'T[])
        (max: int)
        (release: bool)
        : ValueTask<struct (int * int64)> =
        let struct (n, ticket, wait) = q.TryTake(dest, max, release, w.Arm())

        if isNull wait then
            ValueTask<_>(struct (n, ticket))
        else
            ValueTask<struct (int * int64)>(
                task {
                    let mutable result = struct (0, 0L)
                    let mutable waiting = true

                    while waiting do
                        do! w.Wait
                        let struct (n, ticket, wait) = q.TryTake(dest, max, release, w.Arm())
                        result <- struct (n, ticket)
                        waiting <- not (isNull wait)

                    return result
                }
                : Task<struct (int * int64)>
            )

    /// Waits, blocking, until the queue has room for one more item.
    let room (q: BatchQueue<'T>) =
        let me = BlockingWaiter.ForThisThread

        while not (isNull (q.RoomWait me)) do
            me.Wait()

    /// Waits, awaiting with the caller's own `w`, until the queue has room for one more item.
    let roomWith (w: AsyncWaiter) (q: BatchQueue<'T>) : ValueTask =
        if isNull (q.RoomWait(w.Arm())) then
            ValueTask()
        else
            ValueTask(
                task {
                    do! w.Wait

                    while not (isNull (q.RoomWait(w.Arm()))) do
                        do! w.Wait
                }
            )

    /// Waits, blocking, for `ticket`'s turn (with the calling thread's waiter: allocates nothing).
    let turn (t: Turnstile) (ticket: int64) =
        let me = BlockingWaiter.ForThisThread

        while not (isNull (t.WaitTurn(ticket, me))) do
            me.Wait()

    /// Waits, awaiting with the caller's own `w`, for `ticket`'s turn (only a wait allocates: the
    /// task that retries; loops that can, await `WaitTurn` with their waiter inline instead).
    let turnWith (w: AsyncWaiter) (t: Turnstile) (ticket: int64) : ValueTask =
        if isNull (t.WaitTurn(ticket, w.Arm())) then
            ValueTask()
        else
            ValueTask(
                task {
                    do! w.Wait

                    while not (isNull (t.WaitTurn(ticket, w.Arm()))) do
                        do! w.Wait
                }
            )
