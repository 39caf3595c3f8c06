namespace Pyper

/// Counts of what failure policies did, summed over every run of the stages it is given to
/// (`counts` option); thread-safe. Read it after a run, or while one runs.
[<Sealed>]
type FailureCounts =
    /// New counts, all zero.
    new: unit -> FailureCounts
    /// Calls made again after a failure.
    member Retries: int64
    /// Items dropped by `OnError.Skip`.
    member Skipped: int64
    /// Items given to an `OnError.DeadLetter` sink.
    member DeadLettered: int64
    /// Calls that ran past the stage's `timeout`.
    member TimedOut: int64
    /// Threads abandoned because their call ran past the timeout of a blocking (thread) stage:
    /// each ends when its call returns.
    member AbandonedThreads: int64
    /// Sets every count to zero.
    member Reset: unit -> unit
    override ToString: unit -> string
    member internal AddRetry: unit -> unit
    member internal AddSkipped: unit -> unit
    member internal AddDeadLettered: unit -> unit
    member internal AddTimedOut: unit -> unit
    member internal AddAbandoned: unit -> unit

namespace Pyper.FSharp

open System

/// What a stage does with an item whose call failed (threw, or ran past the stage's `timeout`).
/// Set with a map stage's `onError` option; without it the run fails, as it always did.
/// Whatever the policy, no item is lost silently: each is delivered, retried, skipped (counted)
/// or dead-lettered (counted). A cancelled or stopped run is never an item failure.
[<RequireQualifiedAccess; NoEquality; NoComparison>]
type OnError<'a> =
    /// Fail the run with the item's exception (the default).
    | Fail
    /// Drop the item (counted in `FailureCounts.Skipped`); an ordered stage moves on past it.
    | Skip
    /// Give the item, its last exception and the number of attempts made to `sink` (counted in
    /// `FailureCounts.DeadLettered`), then go on. An exception in the sink fails the run.
    | DeadLetter of sink: ('a -> exn -> int -> unit)
    /// Call the function again, at most `times` more times (0 to 1000), while `retryOn` accepts the
    /// exception; before retry k (from 1) wait `backoff` * 2^(k-1) (capped at 1 hour) with jitter:
    /// a random time between half of it and all of it. A cancelled run ends its wait at once.
    /// When the retries are used up or `retryOn` refuses, `otherwise` applies (Fail, Skip or DeadLetter).
    | Retry of times: int * backoff: TimeSpan * retryOn: (exn -> bool) * otherwise: OnError<'a>
