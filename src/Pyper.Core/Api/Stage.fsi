namespace Pyper.FSharp

open Pyper
open System
open System.Collections.Generic
open System.Threading
open System.Threading.RateLimiting
open System.Threading.Tasks

/// Builds one-stage pipelines from plain functions. The function's shape picks the executor:
/// a blocking function runs on dedicated threads (one per worker); a Task, ValueTask or
/// F# Async function runs as async workers on the thread pool.
///
/// Options (all optional, checked here, when the stage is built):
/// - `workers`: how many workers call the function concurrently (1 to 10,000; with `multiprocess`,
///   1 to 256; default 1).
/// - `capacity`: how many results may wait in the stage's output queue for the next stage
///   (Pyper's `throttle`). Default 1024: large enough to let batched hand-off keep every stage
///   busy, small enough to bound memory and let a slow consumer push back on the source.
///   0 means unbounded (so does a capacity that passes Int32.MaxValue once the next stage's workers
///   are added). Items in flight per stage never exceed `capacity` + the next stage's workers.
/// - `ordered`: results leave in input order even with many workers (default false: as ready).
/// - `name`: the stage's name in errors and diagnostics (default: kind and position, e.g. "map #2").
///
/// Map stages (threads, async and worker processes) also take, for production runs:
/// - `timeout`: how long one call may run (positive, at most about 49.7 days). A call that runs
///   longer fails its item with a TimeoutException naming the stage and the item's input position.
///   An async function's token is cancelled at the timeout; a blocking function cannot be stopped,
///   so its call runs on a helper thread that is abandoned (and counted) when it is late, and the
///   worker goes on with a fresh one. A worker process that is late is killed and replaced.
/// - `onError`: what to do with an item whose call failed (`OnError`: Fail, the default; Retry
///   with exponential backoff and jitter; Skip; DeadLetter). On worker processes a process that
///   crashes on an item is that item's failure too (the next attempt gets a fresh process). The
///   results a worker made before a retry's backoff leave before it waits (in an ordered stage,
///   when it is already their turn).
/// - `counts`: a `FailureCounts` that counts retries, skipped and dead-lettered items, time-outs.
/// - `rateLimit`: a `System.Threading.RateLimiting.RateLimiter`; each call (each attempt, retries
///   included) first takes one permit from it, and gives the permit back (`Dispose`) when the call
///   has returned. It bounds the rate of calls, where `workers` bounds how many run at once; one
///   limiter may be shared by several stages (one external API's quota). A worker waits in the
///   limiter's queue, or, when the limiter refuses with a retry-after time (a token bucket without a
///   queue), that long before asking again; a refusal without one fails the run. Waits end at once
///   when the run is cancelled or stopped; a permit wait is not part of the call's `timeout`. A
///   rate-limited stage takes its items one at a time, so no result waits for another's permit.
[<AbstractClass; Sealed>]
type Stage =
    /// A stage that calls a blocking function once per item, on dedicated threads, or, with
    /// `multiprocess = true`, in `workers` worker processes (Pyper's `multiprocess=True`). A process
    /// stage's function must be re-creatable in a new process: a module function or static method of
    /// a compiled assembly, or a lambda there that captures nothing; items and results travel as JSON.
    /// Anything else (a capturing closure, a function defined in FSI, an async function) is refused here.
    static member map:
        f: ('a -> 'b) *
        ?workers: int *
        ?capacity: int *
        ?ordered: bool *
        ?name: string *
        ?multiprocess: bool *
        ?timeout: TimeSpan *
        ?onError: OnError<'a> *
        ?counts: FailureCounts *
        ?rateLimit: RateLimiter ->
            Pipeline<'a, 'b>

    /// `map` for a .NET delegate (the C# facade's entry point): with `multiprocess = true`, the
    /// delegate must be a static method or a lambda that captures nothing, in a compiled assembly.
    static member mapFunc:
        f: Func<'a, 'b> *
        ?workers: int *
        ?capacity: int *
        ?ordered: bool *
        ?name: string *
        ?multiprocess: bool *
        ?timeout: TimeSpan *
        ?onError: OnError<'a> *
        ?counts: FailureCounts *
        ?rateLimit: RateLimiter ->
            Pipeline<'a, 'b>

    /// A blocking map stage whose function takes a bound argument, then each item (Pyper's `bind`).
    /// With `multiprocess = true` the argument is serialized when the stage is built (refused then,
    /// with an ArgumentException naming `arg`, when it cannot cross) and sent once to each worker
    /// process, where `f arg` is applied once: a module function `let f cfg = let model = load cfg
    /// in fun x -> ...` thereby loads its model once per worker process. On threads it is `map (f arg)`.
    static member mapBound:
        f: ('c -> 'a -> 'b) *
        arg: 'c *
        ?workers: int *
        ?capacity: int *
        ?ordered: bool *
        ?name: string *
        ?multiprocess: bool *
        ?timeout: TimeSpan *
        ?onError: OnError<'a> *
        ?counts: FailureCounts *
        ?rateLimit: RateLimiter ->
            Pipeline<'a, 'b>

    /// `mapBound` for a .NET delegate of the argument and the item (the C# facade's entry point):
    /// with `multiprocess = true`, a static method or a lambda that captures nothing.
    static member mapBoundFunc:
        f: Func<'c, 'a, 'b> *
        arg: 'c *
        ?workers: int *
        ?capacity: int *
        ?ordered: bool *
        ?name: string *
        ?multiprocess: bool *
        ?timeout: TimeSpan *
        ?onError: OnError<'a> *
        ?counts: FailureCounts *
        ?rateLimit: RateLimiter ->
            Pipeline<'a, 'b>

    /// A stage that awaits a Task-returning function once per item.
    static member mapTask:
        f: ('a -> Task<'b>) *
        ?workers: int *
        ?capacity: int *
        ?ordered: bool *
        ?name: string *
        ?timeout: TimeSpan *
        ?onError: OnError<'a> *
        ?counts: FailureCounts *
        ?rateLimit: RateLimiter ->
            Pipeline<'a, 'b>

    /// A stage that awaits a Task-returning function once per item, passing the run's cancellation token.
    static member mapTask:
        f: ('a -> CancellationToken -> Task<'b>) *
        ?workers: int *
        ?capacity: int *
        ?ordered: bool *
        ?name: string *
        ?timeout: TimeSpan *
        ?onError: OnError<'a> *
        ?counts: FailureCounts *
        ?rateLimit: RateLimiter ->
            Pipeline<'a, 'b>

    /// A stage that awaits a ValueTask-returning function once per item.
    static member mapValueTask:
        f: ('a -> ValueTask<'b>) *
        ?workers: int *
        ?capacity: int *
        ?ordered: bool *
        ?name: string *
        ?timeout: TimeSpan *
        ?onError: OnError<'a> *
        ?counts: FailureCounts *
        ?rateLimit: RateLimiter ->
            Pipeline<'a, 'b>

    /// A stage that awaits a ValueTask-returning function once per item, passing the run's cancellation token.
    static member mapValueTask:
        f: ('a -> CancellationToken -> ValueTask<'b>) *
        ?workers: int *
        ?capacity: int *
        ?ordered: bool *
        ?name: string *
        ?timeout: TimeSpan *
        ?onError: OnError<'a> *
        ?counts: FailureCounts *
        ?rateLimit: RateLimiter ->
            Pipeline<'a, 'b>

    /// A stage that runs an F# Async function once per item; the run's cancellation flows into it.
    static member mapAsync:
        f: ('a -> Async<'b>) *
        ?workers: int *
        ?capacity: int *
        ?ordered: bool *
        ?name: string *
        ?timeout: TimeSpan *
        ?onError: OnError<'a> *
        ?counts: FailureCounts *
        ?rateLimit: RateLimiter ->
            Pipeline<'a, 'b>

    /// A blocking map stage with per-worker state: `init` runs once per worker, on the worker's
    /// thread, before its first item; `f` gets that worker's state with each item; `dispose`
    /// (optional) runs on the same thread when the worker ends, also when the run fails or is
    /// cancelled. With a `timeout`, the calls run on the worker's helper thread (see `timeout`):
    /// the state must then not depend on the thread. An exception in `init` or `dispose` fails the
    /// run with that exception, whatever `onError` says (it is the worker's failure, not an item's).
    ///
    /// `recycleAfter` (at least 1; default: never): after that many calls of `f` (retries
    /// included) the worker disposes its state and makes a fresh one (`dispose`, then `init`)
    /// before its next call: for state that leaks or grows (a native library, a cache).
    ///
    /// With `multiprocess = true` each worker is a worker process, and `init`, `f` and `dispose`
    /// run in it: `init` when the worker process takes up the stage, `dispose` when it ends the
    /// stage (before it parks for another run: no state ever passes from one run to the next, or
    /// when the run fails, is cancelled or stops early: the worker process then gets 2 s to dispose
    /// and exit; and when the parent process dies, within the same 2 s), `recycleAfter` in the same process. The state never crosses between processes
    /// (it need not be serializable), but the three functions must be re-creatable there, by the
    /// rules of `map` (module functions, or lambdas that capture nothing, in a compiled assembly);
    /// each is refused here otherwise, with an ArgumentException whose ParamName names it. A
    /// worker process that crashes, or is killed at a `timeout`, does not dispose (it is gone); its
    /// replacement makes a fresh state.
    static member mapWithState:
        init: (unit -> 's) *
        f: ('s -> 'a -> 'b) *
        ?dispose: ('s -> unit) *
        ?workers: int *
        ?capacity: int *
        ?ordered: bool *
        ?name: string *
        ?timeout: TimeSpan *
        ?onError: OnError<'a> *
        ?counts: FailureCounts *
        ?rateLimit: RateLimiter *
        ?multiprocess: bool *
        ?recycleAfter: int ->
            Pipeline<'a, 'b>

    /// `mapWithState` for .NET delegates (the C# facade's entry point): with `multiprocess = true`,
    /// static methods or lambdas that capture nothing, in a compiled assembly; `f`'s method must
    /// take the stage's own state and item types and return its result type.
    static member mapWithStateFunc:
        init: Func<'s> *
        f: Func<'s, 'a, 'b> *
        ?dispose: Action<'s> *
        ?workers: int *
        ?capacity: int *
        ?ordered: bool *
        ?name: string *
        ?timeout: TimeSpan *
        ?onError: OnError<'a> *
        ?counts: FailureCounts *
        ?rateLimit: RateLimiter *
        ?multiprocess: bool *
        ?recycleAfter: int ->
            Pipeline<'a, 'b>

    /// An async map stage with per-worker state (see `mapWithState`): `init` runs once per async
    /// worker before its first item, `dispose` when the worker ends; `f` gets the state, the item
    /// and the token (the run's, or the item's under a `timeout`). `recycleAfter` as for `mapWithState`.
    static member mapTaskWithState:
        init: (unit -> 's) *
        f: ('s -> 'a -> CancellationToken -> Task<'b>) *
        ?dispose: ('s -> unit) *
        ?workers: int *
        ?capacity: int *
        ?ordered: bool *
        ?name: string *
        ?timeout: TimeSpan *
        ?onError: OnError<'a> *
        ?counts: FailureCounts *
        ?rateLimit: RateLimiter *
        ?recycleAfter: int ->
            Pipeline<'a, 'b>

    /// A stage whose blocking function returns many results per item, flattened downstream
    /// (Pyper's `branch=True`). As the first stage, it generates the data from the run's input.
    /// With `multiprocess = true` it runs in worker processes, with the rules of `map`; each item's
    /// results come back in chunks (up to 1024 results or about 4 MB, or what is left when the
    /// batch is done), so that a long sequence streams with bounded memory on both sides.
    static member branch:
        f: ('a -> seq<'b>) * ?workers: int * ?capacity: int * ?ordered: bool * ?name: string * ?multiprocess: bool ->
            Pipeline<'a, 'b>

    /// `branch` for a .NET delegate (the C# facade's entry point); with `multiprocess = true`, the
    /// delegate must be a static method or a lambda that captures nothing, in a compiled assembly.
    static member branchFunc:
        f: Func<'a, IEnumerable<'b>> *
        ?workers: int *
        ?capacity: int *
        ?ordered: bool *
        ?name: string *
        ?multiprocess: bool ->
            Pipeline<'a, 'b>

    /// A stage whose function returns an async stream per item, flattened downstream.
    static member branchStream:
        f: ('a -> IAsyncEnumerable<'b>) * ?workers: int * ?capacity: int * ?ordered: bool * ?name: string ->
            Pipeline<'a, 'b>

    /// A stage whose blocking function reads the whole upstream stream and returns one result
    /// (Pyper's `join=True`). With n workers, the input is split into n partial streams and
    /// there are n results. Each stream can be enumerated once.
    /// With `multiprocess = true` each worker's function runs in a worker process, with the rules
    /// of `map`: its share of the input streams to it in batches, the result comes back.
    static member join:
        f: (seq<'a> -> 'b) * ?workers: int * ?capacity: int * ?ordered: bool * ?name: string * ?multiprocess: bool ->
            Pipeline<'a, 'b>

    /// `join` for a .NET delegate (the C# facade's entry point).
    static member joinFunc:
        f: Func<IEnumerable<'a>, 'b> *
        ?workers: int *
        ?capacity: int *
        ?ordered: bool *
        ?name: string *
        ?multiprocess: bool ->
            Pipeline<'a, 'b>

    /// A join stage whose function returns many results, flattened downstream (`join` and `branch`).
    /// With `multiprocess = true`, as `join`; the results come back in chunks as for `branch`.
    static member joinMany:
        f: (seq<'a> -> seq<'b>) * ?workers: int * ?capacity: int * ?ordered: bool * ?name: string * ?multiprocess: bool ->
            Pipeline<'a, 'b>

    /// `joinMany` for a .NET delegate (the C# facade's entry point).
    static member joinManyFunc:
        f: Func<IEnumerable<'a>, IEnumerable<'b>> *
        ?workers: int *
        ?capacity: int *
        ?ordered: bool *
        ?name: string *
        ?multiprocess: bool ->
            Pipeline<'a, 'b>

    /// A join stage whose function awaits the whole upstream async stream and returns one result.
    static member joinTask:
        f: (IAsyncEnumerable<'a> -> Task<'b>) * ?workers: int * ?capacity: int * ?ordered: bool * ?name: string ->
            Pipeline<'a, 'b>

    /// A join stage whose function reads the whole upstream async stream and returns an async stream of results.
    static member joinStream:
        f: (IAsyncEnumerable<'a> -> IAsyncEnumerable<'b>) *
        ?workers: int *
        ?capacity: int *
        ?ordered: bool *
        ?name: string ->
            Pipeline<'a, 'b>

    /// A stage that groups items into arrays of `size` (1 to Array.MaxLength; a group's array grows as
    /// its items come). With `timeout` (any positive TimeSpan), a partial group is handed on once
    /// `timeout` has passed since its first item; the end of input flushes it.
    static member batch:
        size: int * ?timeout: TimeSpan * ?workers: int * ?capacity: int * ?ordered: bool * ?name: string ->
            Pipeline<'a, 'a array>
