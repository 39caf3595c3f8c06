namespace Pyper

open System
open System.Runtime.CompilerServices
open System.Threading
open System.Threading.Tasks

module internal Buffers =
    let inline clear<'T> (buf: 'T[]) (n: int) =
        if RuntimeHelpers.IsReferenceOrContainsReferences<'T>() then
            Array.Clear(buf, 0, n)

/// A worker's input buffer (and output buffer, for a map stage). They start with room for one
/// item and double (up to `MaxBatch`) each time a take fills them while the batch limit allows
/// more, so a short run allocates little; a buffer is empty (cleared) whenever it grows.
[<Sealed>]
type internal WorkerBuffers<'a, 'b>(withOutput: bool) =
    let mutable input: 'a[] = Array.zeroCreate 1
    let mutable output: 'b[] = if withOutput then Array.zeroCreate 1 else null
    let mutable full = false

    member _.In = input
    member _.Out = output

    /// Before a take: the most items it may take, for a batch limit of `limit`.
    member _.Fit(limit: int) =
        if full && input.Length < limit then
            let size = min Tuning.MaxBatch (2 * input.Length)
            input <- Array.zeroCreate size

            if withOutput then
                output <- Array.zeroCreate size

        full <- false
        min limit input.Length

    /// After a take: it took `n` items.
    member _.Took(n: int) = full <- n = input.Length

/// Collects a worker's outputs and hands them on: at once when the next stage is idle,
/// else when the buffer is full or the input batch is done; ordered stages wait their turn.
[<Sealed>]
type internal Emitter<'b>(output: BatchQueue<'b>, turnstile: Turnstile) =
    /// Starts small and doubles as it fills, up to MaxBatch (a short run allocates little).
    let mutable buf = Array.zeroCreate<'b> 16
    let mutable k = 0
    let mutable ticket = 0L
    let mutable hasTurn = true
    /// How `EmitAsync` waits (made on its first use: blocking emitters never need it).
    let mutable waiter: AsyncWaiter = null

    member _.Begin(t: int64) =
        ticket <- t
        hasTurn <- isNull turnstile

    /// Adds an output; true when the caller must hand the buffer on: it is full, or it may
    /// go now (our turn) and either the next stage is idle or `eager` says the producer
    /// may block before its next item (a sequence that is not an in-memory collection).
    member this.Add(x: 'b, eager: bool) =
        if k = buf.Length then
            let grown = Array.zeroCreate (min Tuning.MaxBatch (2 * buf.Length))
            Array.Copy(buf, grown, k)
            Buffers.clear buf k
            buf <- grown

        buf[k] <- x
        k <- k + 1
        k = Tuning.MaxBatch || ((eager || output.HasWaitingReader) && this.CanFlushNow)

    /// True when the buffer holds items that may be handed on now without waiting for the turn.
    member _.CanFlushNow =
        if k = 0 then
            false
        elif hasTurn then
            true
        elif turnstile.IsTurn ticket then
            hasTurn <- true
            true
        else
            false

    member _.Count = k

    /// The stage's instruments, told how many results leave (null: not counted).
    member val Probe: StageProbe = null with get, set

    member private this.Counted() =
        if not (isNull this.Probe) then
            this.Probe.Out k

    member private _.Flushed() =
        Buffers.clear buf k
        k <- 0

    /// Hands the buffer on, blocking for the turn and for room.
    member this.Emit() =
        if not hasTurn then
            Wait.turn turnstile ticket
            hasTurn <- true

        Wait.write output buf k
        this.Counted()
        this.Flushed()

    /// Hands the buffer on, awaiting the turn and room.
    member this.EmitAsync() : Task =
        task {
            if isNull waiter then
                waiter <- AsyncWaiter()

            if not hasTurn then
                while not (isNull (turnstile.WaitTurn(ticket, waiter.Arm()))) do
                    do! waiter.Wait

                hasTurn <- true

            do! Wait.writeWith waiter output buf k
            this.Counted()
            this.Flushed()
        }

    member _.End() =
        if not (isNull turnstile) then
            turnstile.Advance()
