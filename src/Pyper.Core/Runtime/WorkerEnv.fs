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
