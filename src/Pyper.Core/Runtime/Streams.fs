namespace Pyper

open System
open System.Collections.Generic
open System.Runtime.ExceptionServices
open System.Threading
open System.Threading.Tasks

/// Reads a stage's input as one lazy stream (join stages); items leave the queue as read.
[<Sealed>]
type internal QueueStream<'a>(q: BatchQueue<'a>) =
    let buf = Array.zeroCreate<'a> Tuning.MaxBatch
    let mutable pos = 0
    let mutable len = 0
    let mutable current = Unchecked.defaultof<'a>
    let mutable claimed = 0

    member private _.Claim() =
        if Interlocked.Exchange(&claimed, 1) = 1 then
            raise (InvalidOperationException "A join stage's input stream can be enumerated only once.")

    member private _.Next() =
        current <- buf[pos]
        buf[pos] <- Unchecked.defaultof<'a>
        pos <- pos + 1
        true

    member private this.Fill(n: int) =
        pos <- 0
        len <- n
        n > 0 && this.Next()

    interface IEnumerable<'a> with
        member this.GetEnumerator() : IEnumerator<'a> =
            this.Claim()

            { new IEnumerator<'a> with
                member _.Current = current
              interface Collections.IEnumerator with
                  member _.Current = box current

                  member _.MoveNext() =
                      if pos < len then
                          this.Next()
                      else
                          let struct (n, _) = Wait.take q buf Tuning.MaxBatch true
                          this.Fill n

                  member _.Reset() = raise (NotSupportedException())
              interface IDisposable with
                  member _.Dispose() = ()
            }

        member this.GetEnumerator() : Collections.IEnumerator =
            (this :> IEnumerable<'a>).GetEnumerator()

    interface IAsyncEnumerable<'a> with
        member this.GetAsyncEnumerator(_ct) =
            this.Claim()

            { new IAsyncEnumerator<'a> with
                member _.Current = current

                member _.MoveNextAsync() =
                    if pos < len then
                        ValueTask<bool>(this.Next())
                    else
                        let t = Wait.takeAsync q buf Tuning.MaxBatch true

                        if t.IsCompletedSuccessfully then
                            let struct (n, _) = t.Result
                            ValueTask<bool>(this.Fill n)
                        else
                            ValueTask<bool>(
                                task {
                                    let! struct (n, _) = t
                                    return this.Fill n
                                }
                            )
              interface IAsyncDisposable with
                  member _.DisposeAsync() = ValueTask()
            }

/// Async stream helpers (the BCL has no awaited foreach for F#).
module internal AsyncStream =
    /// Awaits `action` for each item of `items`, then disposes the enumerator (also on failure).
    /// `beforeWait` runs whenever the next item is not ready at once, while that move is in
    /// flight: if it fails, the move is still awaited before the enumerator is disposed (which
    /// a move in flight forbids), and its outcome observed (left alone, a move that fails as the
    /// run stops, as a join's input does, would be an unobserved task exception). The move's
    /// own failure is raised then, else the one of `beforeWait`.
    let forEach
        (items: IAsyncEnumerable<'T>)
        (token: CancellationToken)
        (beforeWait: unit -> Task)
        (action: 'T -> Task)
        : Task =
        task {
            let e = items.GetAsyncEnumerator token
            let mutable failure = null

            try
                let mutable more = true

                while more do
                    let next = e.MoveNextAsync()
                    let mutable stopped: ExceptionDispatchInfo = null

                    if not next.IsCompleted then
                        try
                            do! beforeWait ()
                        with ex ->
                            stopped <- ExceptionDispatchInfo.Capture ex

                    let! m = next

                    if not (isNull stopped) then
                        stopped.Throw()

                    more <- m

                    if m then
                        do! action e.Current
            with ex ->
                failure <- ExceptionDispatchInfo.Capture ex

            do! e.DisposeAsync()

            if not (isNull failure) then
                failure.Throw()
        }
