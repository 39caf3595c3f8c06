namespace Pyper

open System
open Pyper.FSharp
open System.Collections.Generic
open System.Diagnostics
open System.IO
open System.Net.Sockets
open System.Text.Json
open System.Runtime.CompilerServices
open System.Runtime.ExceptionServices
open System.Threading
open System.Threading.Tasks
open System.Threading.Tasks.Sources

/// What one worker of a stage works with.
[<NoEquality; NoComparison>]
type internal WorkerEnv<'a, 'b> =
    {
        Ctx: RunContext
        /// The stage's name in this run.
        Name: string
        Input: BatchQueue<'a>
        Output: BatchQueue<'b>
        /// Null unless the stage is ordered with more than one worker.
        Turnstile: Turnstile
        Sizer: Sizer
    }

/// A stage's worker body, by executor.
[<NoEquality; NoComparison>]
type internal Body<'a, 'b> =
    | OnThread of (WorkerEnv<'a, 'b> -> unit)
    | OnPool of (WorkerEnv<'a, 'b> -> Task)

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
