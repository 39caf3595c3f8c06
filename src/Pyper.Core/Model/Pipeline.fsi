namespace Pyper

open System.Threading
open System.Collections.Generic

/// How a stage's workers run.
type Executor =
    /// Each worker is a dedicated thread: for blocking functions.
    | Thread = 0
    /// Each worker is an async loop on the thread pool: for Task, ValueTask and Async functions.
    | Async = 1
    /// Each worker is a separate process (`multiprocess`): for isolation of CPU-heavy or unsafe work.
    | Process = 2
    /// Workers are processes on any number of machines, fed through a NATS JetStream server (Pyper.Distributed).
    | Distributed = 3

/// Defaults of the stage options, shared by the F# API and the C# facade.
[<RequireQualifiedAccess>]
module StageDefaults =
    /// The default `capacity` of a stage's output queue: 1024 items, enough for batched hand-off to
    /// keep every stage busy, few enough to bound memory and let a slow consumer push back.
    [<Literal>]
    val Capacity: int = 1024

/// What a stage does with its items.
type StageKind =
    /// One result per item (`Stage.map` and its async forms).
    | Map = 0
    /// Any number of results per item, flattened downstream (`Stage.branch`, `branchStream`).
    | Branch = 1
    /// Reads the whole upstream stream (`Stage.join`, `joinMany`, `joinTask`, `joinStream`).
    | Join = 2
    /// Groups items into arrays (`Stage.batch`).
    | Batch = 3

/// What a stage is, as built: its name, kind, executor and options.
[<Sealed>]
type StageInfo =
    /// The name given with `name`, or the kind in lower case (e.g. "map") when none was given.
    /// In a run's errors an unnamed stage is called by kind and position (e.g. "map #2").
    member Name: string
    /// What the stage does with its items.
    member Kind: StageKind
    /// How the stage's workers run.
    member Executor: Executor
    /// The number of workers.
    member Workers: int
    /// The output queue's capacity in items (0 = unbounded).
    member Capacity: int
    /// Whether results leave in input order.
    member Ordered: bool

/// Internal stage builder.
module internal StageInfo =
    val create:
        name: string option ->
        kind: StageKind ->
        executor: Executor ->
        workers: int ->
        capacity: int ->
        ordered: bool ->
            StageInfo

    /// The stage's name in a run: its own, or kind and position.
    val runName: index: int -> StageInfo -> string

    /// The kind as written in names and messages ("map", "branch", "join", "batch").
    val label: kind: StageKind -> string

namespace Pyper.FSharp

open Pyper

/// An immutable, reusable pipeline from items of type 'a to items of type 'b.
/// Build one with the `Stage` constructors, compose with `>=>`, run with the `Pipeline` module.
/// Each run is independent: running a pipeline twice starts two separate sets of workers.
[<Sealed>]
type Pipeline<'a, 'b> =
    internal new: stages: StageInfo list * connect: (RunContext -> BatchQueue<'a> -> BatchQueue<'b>) -> Pipeline<'a, 'b>
    /// The stages, first to last.
    member Stages: StageInfo list
    member internal Connect: (RunContext -> BatchQueue<'a> -> BatchQueue<'b>)
    /// Kleisli composition over streams: every output of the left pipeline is an input of the right one.
    static member (>=>): left: Pipeline<'a, 'b> * right: Pipeline<'b, 'c> -> Pipeline<'a, 'c>
    /// What the pipeline is and its stages in order, each with its name, kind, workers and executor,
    /// e.g. "Pipeline<Int32, Int32>: branch #1 (threads) >=> step2 (map, 20 workers, threads)".
    override ToString: unit -> string
