using System;
using Microsoft.FSharp.Core;
using System.Collections.Generic;
using System.Threading;
using System.Threading.RateLimiting;
using System.Threading.Tasks;
using static Pyper.Interop;
using Core = Pyper.FSharp;

namespace Pyper;

/// <summary>
/// Builds one-stage pipelines from methods and lambdas (Pyper's <c>task(...)</c>). The function's
/// shape picks the executor: a blocking function runs on dedicated threads, one per worker; a
/// <see cref="Task{TResult}"/> or <see cref="ValueTask{TResult}"/> function runs as async workers.
/// </summary>
/// <remarks>
/// Every factory takes the same options, checked here (an <see cref="ArgumentException"/> names the
/// stage and the option): <c>workers</c> (1 to 10,000; 1 to 256 with <c>multiprocess</c>), <c>capacity</c> (results that may wait for the
/// next stage, Pyper's <c>throttle</c>; 0 = unbounded), <c>ordered</c> (results leave in input order)
/// and <c>name</c> (used in errors). Map stages on threads and async workers also take
/// <c>timeout</c> (how long one call may run), <c>onError</c> (an <see cref="ErrorPolicy"/>) and
/// <c>counts</c> (a <see cref="FailureCounts"/>) and <c>rateLimit</c> (a <see cref="RateLimiter"/>); see the README's "Failures, timeouts and retries". To build without type arguments, start from
/// <see cref="Pipeline.Start{T}"/> and add stages fluently: the input type flows from the left.
/// </remarks>
public static class Stage
{
    /// <summary>The default <c>capacity</c>: 1024 results may wait between two stages.</summary>
    public const int DefaultCapacity = StageDefaults.Capacity;

    /// <summary>
    /// A stage calling a blocking function once per item, on dedicated threads, or with
    /// <paramref name="multiprocess"/> in <paramref name="workers"/> worker processes.
    /// </summary>
    /// <param name="f">The function.</param>
    /// <param name="workers">How many workers call it at once (1 to 10,000; 1 to 256 with <paramref name="multiprocess"/>).</param>
    /// <param name="capacity">How many results may wait for the next stage (0 = unbounded).</param>
    /// <param name="ordered">Whether results leave in input order.</param>
    /// <param name="name">The stage's name in errors.</param>
    /// <param name="multiprocess">
    /// Run the function in worker processes (Pyper's <c>multiprocess=True</c>): for isolation of CPU-heavy or
    /// unsafe work. The function must be a static method, or a lambda that captures nothing, in a compiled
    /// assembly; items and results travel as JSON. Anything else is refused here with an <see cref="ArgumentException"/>.
    /// </param>
    /// <param name="timeout">
    /// How long one call may run (positive, at most about 49.7 days; default: no limit). A later call
    /// fails its item with a <see cref="TimeoutException"/> naming the stage and the item's input position.
    /// An async function's token is cancelled then; a blocking call cannot be stopped: it runs on a helper
    /// thread, which is abandoned (and counted) when it is late, and the worker goes on with a fresh one.
    /// With <paramref name="multiprocess"/>, a late worker process is killed and replaced.
    /// </param>
    /// <param name="onError">What to do with an item whose call failed (default <see cref="ErrorPolicy.Fail"/>). With <paramref name="multiprocess"/>, a worker process that crashes on an item fails that item (the next attempt gets a fresh process).</param>
    /// <param name="counts">Counts retries, skipped and dead-lettered items and time-outs, over every run.</param>
    /// <param name="rateLimit">
    /// A <see cref="RateLimiter"/> each call (each attempt) takes one permit from first, and gives back when it has
    /// returned: it bounds the rate of calls, where <paramref name="workers"/> bounds how many run at once. One limiter
    /// may be shared by several stages. A worker waits in the limiter's queue, or, when it refuses with a retry-after
    /// time, that long before asking again; a refusal without one fails the run. The stage takes its items one at a time, so no finished result waits for another item's permit. With <paramref name="multiprocess"/>, the permit is taken in this process before the item is sent.
    /// </param>
    public static Pipeline<TIn, TOut> Map<TIn, TOut>(
        Func<TIn, TOut> f, int workers = 1, int capacity = DefaultCapacity, bool ordered = false, string? name = null, bool multiprocess = false, TimeSpan? timeout = null, ErrorPolicy? onError = null, FailureCounts? counts = null, RateLimiter? rateLimit = null) =>
        new(Core.Stage.mapFunc(f, Some(workers), Some(capacity), Some(ordered), Name(name), Some(multiprocess), Span(timeout), ErrorPolicy.Option<TIn>(onError, name), Counts(counts), Limit(rateLimit)));

    /// <summary>
    /// A stage calling a blocking function with a bound argument and each item (Pyper's <c>bind</c>). With
    /// <paramref name="multiprocess"/> the argument is serialized here (refused with an <see cref="ArgumentException"/>
    /// naming <c>arg</c> when it cannot cross) and sent once to each worker process, not with every item; the function
    /// (called with <c>arg</c> and each item) must then be a static method or a lambda that captures nothing.
    /// </summary>
    /// <inheritdoc cref="Map{TIn, TOut}(Func{TIn, TOut}, int, int, bool, string?, bool, TimeSpan?, ErrorPolicy?, FailureCounts?, RateLimiter?)"/>
    public static Pipeline<TIn, TOut> MapBound<TArg, TIn, TOut>(
        Func<TArg, TIn, TOut> f, TArg arg, int workers = 1, int capacity = DefaultCapacity, bool ordered = false, string? name = null, bool multiprocess = false, TimeSpan? timeout = null, ErrorPolicy? onError = null, FailureCounts? counts = null, RateLimiter? rateLimit = null) =>
        new(Core.Stage.mapBoundFunc(f, arg, Some(workers), Some(capacity), Some(ordered), Name(name), Some(multiprocess), Span(timeout), ErrorPolicy.Option<TIn>(onError, name), Counts(counts), Limit(rateLimit)));

    /// <summary>A stage awaiting a Task-returning function once per item.</summary>
    /// <inheritdoc cref="Map{TIn, TOut}(Func{TIn, TOut}, int, int, bool, string?, bool, TimeSpan?, ErrorPolicy?, FailureCounts?, RateLimiter?)"/>
    public static Pipeline<TIn, TOut> Map<TIn, TOut>(
        Func<TIn, Task<TOut>> f, int workers = 1, int capacity = DefaultCapacity, bool ordered = false, string? name = null, bool multiprocess = false, TimeSpan? timeout = null, ErrorPolicy? onError = null, FailureCounts? counts = null, RateLimiter? rateLimit = null) =>
        multiprocess
            ? RefuseProcesses(f, workers, capacity, ordered, name)
            : new(Core.Stage.mapTask(Fn(f), Some(workers), Some(capacity), Some(ordered), Name(name), Span(timeout), ErrorPolicy.Option<TIn>(onError, name), Counts(counts), Limit(rateLimit)));

    /// <summary>A stage awaiting a Task-returning function once per item, passing the run's cancellation token.</summary>
    /// <inheritdoc cref="Map{TIn, TOut}(Func{TIn, TOut}, int, int, bool, string?, bool, TimeSpan?, ErrorPolicy?, FailureCounts?, RateLimiter?)"/>
    public static Pipeline<TIn, TOut> Map<TIn, TOut>(
        Func<TIn, CancellationToken, Task<TOut>> f, int workers = 1, int capacity = DefaultCapacity, bool ordered = false, string? name = null, bool multiprocess = false, TimeSpan? timeout = null, ErrorPolicy? onError = null, FailureCounts? counts = null, RateLimiter? rateLimit = null) =>
        multiprocess
            ? RefuseProcesses<TIn, TOut>(x => f(x, CancellationToken.None), workers, capacity, ordered, name)
            : new(Core.Stage.mapTask(Fn(f), Some(workers), Some(capacity), Some(ordered), Name(name), Span(timeout), ErrorPolicy.Option<TIn>(onError, name), Counts(counts), Limit(rateLimit)));

    /// <summary>A stage awaiting a ValueTask-returning function once per item.</summary>
    /// <inheritdoc cref="Map{TIn, TOut}(Func{TIn, TOut}, int, int, bool, string?, bool, TimeSpan?, ErrorPolicy?, FailureCounts?, RateLimiter?)"/>
    public static Pipeline<TIn, TOut> MapValueTask<TIn, TOut>(
        Func<TIn, ValueTask<TOut>> f, int workers = 1, int capacity = DefaultCapacity, bool ordered = false, string? name = null, TimeSpan? timeout = null, ErrorPolicy? onError = null, FailureCounts? counts = null, RateLimiter? rateLimit = null) =>
        new(Core.Stage.mapValueTask(Fn(f), Some(workers), Some(capacity), Some(ordered), Name(name), Span(timeout), ErrorPolicy.Option<TIn>(onError, name), Counts(counts), Limit(rateLimit)));

    /// <summary>A stage awaiting a ValueTask-returning function once per item, passing the run's cancellation token.</summary>
    /// <inheritdoc cref="Map{TIn, TOut}(Func{TIn, TOut}, int, int, bool, string?, bool, TimeSpan?, ErrorPolicy?, FailureCounts?, RateLimiter?)"/>
    public static Pipeline<TIn, TOut> MapValueTask<TIn, TOut>(
        Func<TIn, CancellationToken, ValueTask<TOut>> f, int workers = 1, int capacity = DefaultCapacity, bool ordered = false, string? name = null, TimeSpan? timeout = null, ErrorPolicy? onError = null, FailureCounts? counts = null, RateLimiter? rateLimit = null) =>
        new(Core.Stage.mapValueTask(Fn(f), Some(workers), Some(capacity), Some(ordered), Name(name), Span(timeout), ErrorPolicy.Option<TIn>(onError, name), Counts(counts), Limit(rateLimit)));

    /// <summary>
    /// A stage whose blocking function returns many results per item, flattened downstream
    /// (Pyper's <c>branch=True</c>). As the first stage it generates the data from the run's input.
    /// </summary>
    /// <inheritdoc cref="Map{TIn, TOut}(Func{TIn, TOut}, int, int, bool, string?, bool, TimeSpan?, ErrorPolicy?, FailureCounts?, RateLimiter?)"/>
    /// <remarks>With <paramref name="multiprocess"/>, each item's results come back from the worker process in chunks
    /// (up to 1024 results or about 4 MB, or what is left when the batch is done).</remarks>
    public static Pipeline<TIn, TOut> Branch<TIn, TOut>(
        Func<TIn, IEnumerable<TOut>> f, int workers = 1, int capacity = DefaultCapacity, bool ordered = false, string? name = null, bool multiprocess = false) =>
        new(Core.Stage.branchFunc(f, Some(workers), Some(capacity), Some(ordered), Name(name), Some(multiprocess)));

    /// <summary>A stage whose function returns an async stream per item, flattened downstream.</summary>
    /// <inheritdoc cref="Map{TIn, TOut}(Func{TIn, TOut}, int, int, bool, string?, bool, TimeSpan?, ErrorPolicy?, FailureCounts?, RateLimiter?)"/>
    public static Pipeline<TIn, TOut> Branch<TIn, TOut>(
        Func<TIn, IAsyncEnumerable<TOut>> f, int workers = 1, int capacity = DefaultCapacity, bool ordered = false, string? name = null) =>
        new(Core.Stage.branchStream(Fn(f), Some(workers), Some(capacity), Some(ordered), Name(name)));

    /// <summary>
    /// A stage whose blocking function reads the whole upstream stream and returns one result
    /// (Pyper's <c>join=True</c>). With n workers the input is split into n partial streams and
    /// there are n results. Each stream can be enumerated once.
    /// </summary>
    /// <inheritdoc cref="Map{TIn, TOut}(Func{TIn, TOut}, int, int, bool, string?, bool, TimeSpan?, ErrorPolicy?, FailureCounts?, RateLimiter?)"/>
    /// <remarks>With <paramref name="multiprocess"/>, each worker's function runs in a worker process (the rules of
    /// <c>Map</c>): its share of the input streams to it in batches.</remarks>
    public static Pipeline<TIn, TOut> Join<TIn, TOut>(
        Func<IEnumerable<TIn>, TOut> f, int workers = 1, int capacity = DefaultCapacity, bool ordered = false, string? name = null, bool multiprocess = false) =>
        new(Core.Stage.joinFunc(f, Some(workers), Some(capacity), Some(ordered), Name(name), Some(multiprocess)));

    /// <summary>A join stage whose function awaits the whole upstream async stream and returns one result.</summary>
    /// <inheritdoc cref="Join{TIn, TOut}(Func{IEnumerable{TIn}, TOut}, int, int, bool, string?, bool)"/>
    public static Pipeline<TIn, TOut> JoinTask<TIn, TOut>(
        Func<IAsyncEnumerable<TIn>, Task<TOut>> f, int workers = 1, int capacity = DefaultCapacity, bool ordered = false, string? name = null) =>
        new(Core.Stage.joinTask(Fn(f), Some(workers), Some(capacity), Some(ordered), Name(name)));

    /// <summary>A join stage whose blocking function returns many results, flattened downstream.</summary>
    /// <inheritdoc cref="Join{TIn, TOut}(Func{IEnumerable{TIn}, TOut}, int, int, bool, string?, bool)"/>
    public static Pipeline<TIn, TOut> JoinMany<TIn, TOut>(
        Func<IEnumerable<TIn>, IEnumerable<TOut>> f, int workers = 1, int capacity = DefaultCapacity, bool ordered = false, string? name = null, bool multiprocess = false) =>
        new(Core.Stage.joinManyFunc(f, Some(workers), Some(capacity), Some(ordered), Name(name), Some(multiprocess)));

    /// <summary>A join stage that turns the whole upstream async stream into an async stream of results.</summary>
    /// <inheritdoc cref="Join{TIn, TOut}(Func{IEnumerable{TIn}, TOut}, int, int, bool, string?, bool)"/>
    public static Pipeline<TIn, TOut> JoinStream<TIn, TOut>(
        Func<IAsyncEnumerable<TIn>, IAsyncEnumerable<TOut>> f, int workers = 1, int capacity = DefaultCapacity, bool ordered = false, string? name = null) =>
        new(Core.Stage.joinStream(Fn(f), Some(workers), Some(capacity), Some(ordered), Name(name)));

    /// <summary>
    /// A stage grouping items into arrays of <paramref name="size"/>. With a <paramref name="timeout"/>, a
    /// partial group is handed on once the timeout has passed since its first item; the end of input flushes it.
    /// </summary>
    /// <param name="size">The group size (1 to <see cref="Array.MaxLength"/>; a group's array grows as its items come).</param>
    /// <param name="timeout">How long a partial group may wait (any positive time), or null to wait for a full group.</param>
    /// <param name="capacity">How many groups may wait for the next stage (0 = unbounded).</param>
    /// <param name="name">The stage's name in errors.</param>
    public static Pipeline<T, T[]> Batch<T>(int size, TimeSpan? timeout = null, int capacity = DefaultCapacity, string? name = null) =>
        new(Core.Stage.batch<T>(
            size,
            timeout is { } t ? Some(t) : Microsoft.FSharp.Core.FSharpOption<TimeSpan>.None,
            Some(1), Some(capacity), Some(false), Name(name)));

    /// <summary>
    /// A blocking map stage with per-worker state: <paramref name="init"/> runs once per worker, on the
    /// worker's thread, before its first item; <paramref name="f"/> gets that worker's state with each
    /// item; <paramref name="dispose"/> runs on the same thread when the worker ends (also when the run
    /// fails or is cancelled). With a <c>timeout</c>, calls run on the worker's helper thread. An exception
    /// in <paramref name="init"/> or <paramref name="dispose"/> fails the run, whatever <paramref name="onError"/> says.
    /// </summary>
    /// <param name="init">Makes one worker's state.</param>
    /// <param name="f">The function, given the worker's state and the item.</param>
    /// <param name="dispose">Releases one worker's state (optional).</param>
    /// <param name="workers">How many workers (each with its own state) call it at once (1 to 10,000; 1 to 256 with <paramref name="multiprocess"/>).</param>
    /// <param name="capacity">How many results may wait for the next stage (0 = unbounded).</param>
    /// <param name="ordered">Whether results leave in input order.</param>
    /// <param name="name">The stage's name in errors.</param>
    /// <param name="timeout">How long one call may run (see <see cref="Map{TIn, TOut}(Func{TIn, TOut}, int, int, bool, string?, bool, TimeSpan?, ErrorPolicy?, FailureCounts?, RateLimiter?)"/>).</param>
    /// <param name="onError">What to do with an item whose call failed (default <see cref="ErrorPolicy.Fail"/>).</param>
    /// <param name="counts">Counts retries, skipped and dead-lettered items and time-outs, over every run.</param>
    /// <param name="rateLimit">A limiter each call takes one permit from (see <see cref="Map{TIn, TOut}(Func{TIn, TOut}, int, int, bool, string?, bool, TimeSpan?, ErrorPolicy?, FailureCounts?, RateLimiter?)"/>).</param>
    /// <param name="multiprocess">
    /// Each worker is a worker process, and <paramref name="init"/>, <paramref name="f"/> and <paramref name="dispose"/>
    /// run in it: the state lives there (it need not be serializable). <paramref name="dispose"/> runs when the worker
    /// process ends the stage: before it parks for another run (no state passes from one run to the next), or when the
    /// run fails, is cancelled or stops early (the process then gets 2 s to dispose and exit). The three delegates must
    /// be static methods or lambdas that capture nothing, in a compiled assembly; <paramref name="f"/>'s method must take
    /// the stage's own types. Each is refused here otherwise, with an <see cref="ArgumentException"/> naming it.
    /// </param>
    /// <param name="recycleAfter">
    /// After this many calls of <paramref name="f"/> (at least 1; retries count) a worker disposes its state and makes a
    /// fresh one before its next call; null: never.
    /// </param>
    public static Pipeline<TIn, TOut> MapWithState<TState, TIn, TOut>(
        Func<TState> init, Func<TState, TIn, TOut> f, Action<TState>? dispose = null, int workers = 1, int capacity = DefaultCapacity,
        bool ordered = false, string? name = null, TimeSpan? timeout = null, ErrorPolicy? onError = null, FailureCounts? counts = null, RateLimiter? rateLimit = null,
        bool multiprocess = false, int? recycleAfter = null) =>
        new(Core.Stage.mapWithStateFunc(init, f, DisposeAction(dispose), Some(workers), Some(capacity), Some(ordered), Name(name),
            Span(timeout), ErrorPolicy.Option<TIn>(onError, name), Counts(counts), Limit(rateLimit), Some(multiprocess), Recycle(recycleAfter)));

    /// <summary>
    /// An async map stage with per-worker state: <paramref name="init"/> runs once per async worker
    /// before its first item, <paramref name="dispose"/> when the worker ends; <paramref name="f"/> gets
    /// the state, the item and the token (the run's, or the item's under a <c>timeout</c>).
    /// </summary>
    /// <inheritdoc cref="MapWithState{TState, TIn, TOut}(Func{TState}, Func{TState, TIn, TOut}, Action{TState}?, int, int, bool, string?, TimeSpan?, ErrorPolicy?, FailureCounts?, RateLimiter?, bool, int?)"/>
    public static Pipeline<TIn, TOut> MapWithState<TState, TIn, TOut>(
        Func<TState> init, Func<TState, TIn, CancellationToken, Task<TOut>> f, Action<TState>? dispose = null, int workers = 1,
        int capacity = DefaultCapacity, bool ordered = false, string? name = null, TimeSpan? timeout = null, ErrorPolicy? onError = null,
        FailureCounts? counts = null, RateLimiter? rateLimit = null, int? recycleAfter = null) =>
        new(Core.Stage.mapTaskWithState(Fn(init), Fn(f), Dispose(dispose), Some(workers), Some(capacity), Some(ordered), Name(name),
            Span(timeout), ErrorPolicy.Option<TIn>(onError, name), Counts(counts), Limit(rateLimit), Recycle(recycleAfter)));

    /// <summary>
    /// An async function with <c>multiprocess: true</c> (the parameter is there so that overloads resolve
    /// as for blocking functions): the core refuses it, as Pyper does, with an ArgumentException that says why.
    /// </summary>
    private static Pipeline<TIn, TOut> RefuseProcesses<TIn, TOut>(
        Func<TIn, Task<TOut>> f, int workers, int capacity, bool ordered, string? name)
    {
        Core.Stage.mapFunc(f, Some(workers), Some(capacity), Some(ordered), Name(name), Some(true), null, null, null, null);
        throw new System.Diagnostics.UnreachableException("the core refuses async functions for worker processes");
    }
}
