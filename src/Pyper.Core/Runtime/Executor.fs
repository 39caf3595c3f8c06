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
