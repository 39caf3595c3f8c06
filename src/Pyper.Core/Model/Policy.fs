namespace Pyper

open System.Threading

[<Sealed>]
type FailureCounts() =
    let mutable retries = 0L
    let mutable skipped = 0L
    let mutable deadLettered = 0L
    let mutable timedOut = 0L
    let mutable abandoned = 0L

    member _.Retries = Interlocked.Read &retries
    member _.Skipped = Interlocked.Read &skipped
    member _.DeadLettered = Interlocked.Read &deadLettered
    member _.TimedOut = Interlocked.Read &timedOut
    member _.AbandonedThreads = Interlocked.Read &abandoned

    member _.Reset() =
        Interlocked.Exchange(&retries, 0L) |> ignore
        Interlocked.Exchange(&skipped, 0L) |> ignore
        Interlocked.Exchange(&deadLettered, 0L) |> ignore
        Interlocked.Exchange(&timedOut, 0L) |> ignore
        Interlocked.Exchange(&abandoned, 0L) |> ignore

    override this.ToString() =
        $"retries {this.Retries}, skipped {this.Skipped}, dead-lettered {this.DeadLettered}, timed out {this.TimedOut}, abandoned threads {this.AbandonedThreads}"

    member internal _.AddRetry() =
        Interlocked.Increment &retries |> ignore

    member internal _.AddSkipped() =
        Interlocked.Increment &skipped |> ignore

    member internal _.AddDeadLettered() =
        Interlocked.Increment &deadLettered |> ignore

    member internal _.AddTimedOut() =
        Interlocked.Increment &timedOut |> ignore

    member internal _.AddAbandoned() =
        Interlocked.Increment &abandoned |> ignore

namespace Pyper.FSharp

open System
open System.Threading

[<RequireQualifiedAccess; NoEquality; NoComparison>]
type OnError<'a> =
    | Fail
    | Skip
    | DeadLetter of sink: ('a -> exn -> int -> unit)
    | Retry of times: int * backoff: TimeSpan * retryOn: (exn -> bool) * otherwise: OnError<'a>
