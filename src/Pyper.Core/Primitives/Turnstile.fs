namespace Pyper

open System.Collections.Generic

/// Lets the batches of an ordered stage leave in the order they were taken. Waiting registers
/// the caller's own waiter (a thread's `BlockingWaiter`, an async worker's `AsyncWaiter`), so
/// a wait for the turn allocates nothing.
[<Sealed; AllowNullLiteral>]
type internal Turnstile() =
    let sync = obj ()
    /// The waiter of each ticket waiting for its turn (one holder per ticket).
    let waiters = Dictionary<int64, IWaiter>()
    let mutable current = 0L
    let mutable aborted = false

    /// True when it is `ticket`'s turn (a poll: registers nothing).
    member _.IsTurn(ticket: int64) =
        lock sync (fun () ->
            if aborted then
                raise (RunAbortedException())

            ticket = current)

    /// Null when it is `ticket`'s turn, else `w`, registered to be signalled (once) when the
    /// turn may have come; the caller waits on it and then asks again.
    member _.WaitTurn(ticket: int64, w: IWaiter) : IWaiter =
        lock sync (fun () ->
            if aborted then
                raise (RunAbortedException())

            if ticket = current then
                null
            else
                waiters[ticket] <- w
                w)

    /// The current ticket's batch has left: the next one may go.
    member _.Advance() =
        let mutable wake: IWaiter = null

        lock sync (fun () ->
            current <- current + 1L

            // The next ticket's waiter, if it waits (else null): signalled outside the lock.
            waiters.Remove(current, &wake) |> ignore)

        if not (isNull wake) then
            wake.Signal()

    interface IAbortable with
        member _.Abort() =
            let all =
                lock sync (fun () ->
                    aborted <- true
                    let all = Seq.toArray waiters.Values
                    waiters.Clear()
                    all)

            for w in all do
                w.Signal()
