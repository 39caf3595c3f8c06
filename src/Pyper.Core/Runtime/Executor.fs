namespace Pyper

open System
open System.Collections.Generic
open System.Diagnostics
open System.Threading
open System.Threading.Tasks

/// What one worker of a stage works with. The stage's workers share the run, the queues and the
/// turnstile; each worker has its own sizer (only that worker reads and updates it).
[<NoEquality; NoComparison>]
type internal WorkerEnv<'a, 'b> =
    {
        Ctx: RunContext
        /// The stage's name in this run.
        Name: string
        /// The worker's number in its stage, from 1.
        Worker: int
        Input: BatchQueue<'a>
        Output: BatchQueue<'b>
        /// Null unless the stage is ordered with more than one worker.
        Turnstile: Turnstile
        Sizer: Sizer
        /// The stage's instruments (metrics, activities).
        Probe: StageProbe
    }

/// The one contract between the interpreter and an executor: which executor it is, how much work
/// a batch should hold for it, and how to start one worker of a stage. The interpreter knows
/// nothing else about executors; each executor knows its stage's function and how to run it.
[<AbstractClass>]
type internal StageExecutor<'a, 'b>() =
    /// Which executor this is (shown in the stage's description).
    abstract Kind: Executor
    /// How much work one batch should hold, in Stopwatch ticks: well above what handing a batch
    /// to this executor costs, so that batching amortizes it.
    abstract Quantum: float
    /// Starts one worker over `env`; it calls `ended` once, with null or with the worker's exception.
    abstract Start: env: WorkerEnv<'a, 'b> * ended: (exn -> unit) -> unit

/// Thrown by a worker when the user's function returned null where it must return an object
/// (a Task, a sequence...); the stage turns it into an InvalidOperationException naming itself.
[<Sealed>]
type internal NullResultException(what: string, hint: string) =
    inherit Exception($"The function returned a null {what}.")
    /// What was null, e.g. "Task".
    member _.What = what
    /// What to return instead.
    member _.Hint = hint

module internal NullResult =
    /// `x`, or a NullResultException when it is null (`x` is a reference type).
    let inline check (what: string) (hint: string) (x: 'T) : 'T =
        match box x with
        | null -> raise (NullResultException(what, hint))
        | _ -> x

    let inline task (t: Task<'T>) =
        check "Task" "Task.FromResult for a value that is ready" t

    let inline sequence (items: seq<'T>) =
        check "sequence" "an empty sequence for no results" items

    let inline stream (items: IAsyncEnumerable<'T>) =
        check "IAsyncEnumerable" "an empty stream for no results" items
