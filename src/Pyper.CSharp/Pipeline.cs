using System;
using System.Collections.Generic;
using System.Linq;
using System.Threading;
using System.Threading.RateLimiting;
using System.Threading.Tasks;
using Core = Pyper.FSharp;

namespace Pyper;

/// <summary>Starts pipelines.</summary>
public static class Pipeline
{
    /// <summary>
    /// The empty pipeline of items of type <typeparamref name="T"/> (its outputs are its inputs). Add
    /// stages fluently: <c>Pipeline.Start&lt;int&gt;().Branch(GetData).Map(Step1, workers: 20)</c>;
    /// the input type flows from the left, so method groups need no type arguments.
    /// </summary>
    /// <typeparam name="T">The type of the pipeline's input.</typeparam>
    public static Pipeline<T, T> Start<T>() => new(Core.Pipeline.id<T>());
}

/// <summary>
/// An immutable, reusable pipeline from <typeparamref name="TIn"/> to <typeparamref name="TOut"/>:
/// one stage (from <see cref="Stage"/>) or several composed with <see cref="Then{TNext}"/> or the
/// fluent stage methods. Run it with <see cref="Run(TIn)"/>; every run is independent.
/// </summary>
/// <typeparam name="TIn">The type of the items the first stage takes.</typeparam>
/// <typeparam name="TOut">The type of the items the last stage gives.</typeparam>
public sealed class Pipeline<TIn, TOut>
{
    internal Pipeline(Core.Pipeline<TIn, TOut> inner) => Inner = inner;

    internal Core.Pipeline<TIn, TOut> Inner { get; }

    /// <summary>The stages, first to last.</summary>
    public IReadOnlyList<StageInfo> Stages => Inner.Stages.ToArray();

    /// <summary>This pipeline followed by <paramref name="next"/>: every output of this one is an input of the next.</summary>
    /// <param name="next">The pipeline to run after this one.</param>
    public Pipeline<TIn, TNext> Then<TNext>(Pipeline<TOut, TNext> next)
    {
        ArgumentNullException.ThrowIfNull(next);
        return new(Core.Pipeline.compose(Inner, next.Inner));
    }

    /// <summary>Runs the pipeline on one input (the first stage's argument). Nothing starts until the flow is enumerated.</summary>
    /// <param name="input">The input.</param>
    public Flow<TOut> Run(TIn input) => Flow.Of(input) | this;

    /// <summary>Runs the pipeline over every item of a sequence (read on a thread of its own).</summary>
    /// <param name="inputs">The inputs.</param>
    public Flow<TOut> RunEach(IEnumerable<TIn> inputs) => Flow.From(inputs) | this;

    /// <summary>Runs the pipeline over every item of an async stream.</summary>
    /// <param name="inputs">The inputs.</param>
    public Flow<TOut> RunEach(IAsyncEnumerable<TIn> inputs) => Flow.From(inputs) | this;

    /// <summary>Pyper's <c>pipeline &gt; consumer</c>: a function that runs the pipeline on its input and gives the results to <paramref name="consumer"/>.</summary>
    /// <param name="consumer">Reads the results (as a blocking sequence) and returns the final value.</param>
    public Func<TIn, TResult> Into<TResult>(Func<IEnumerable<TOut>, TResult> consumer)
    {
        ArgumentNullException.ThrowIfNull(consumer);
        return input => consumer(Run(input).ToEnumerable());
    }

    /// <summary>Like <see cref="Into{TResult}"/>, for a consumer that awaits the async result stream.</summary>
    /// <param name="consumer">Reads the results and returns the final value.</param>
    public Func<TIn, Task<TResult>> IntoAsync<TResult>(Func<IAsyncEnumerable<TOut>, Task<TResult>> consumer)
    {
        ArgumentNullException.ThrowIfNull(consumer);
        return input => consumer(Run(input));
    }

    /// <summary>Anchors the pipeline on a flow: <c>Flow.Of(20) | Stage.Map&lt;int, int&gt;(Step)</c>.</summary>
    /// <param name="flow">The items to run the pipeline over.</param>
    /// <param name="pipeline">The pipeline.</param>
    public static Flow<TOut> operator |(Flow<TIn> flow, Pipeline<TIn, TOut> pipeline)
    {
        ArgumentNullException.ThrowIfNull(flow);
        ArgumentNullException.ThrowIfNull(pipeline);
        return flow.Then(pipeline);
    }

    /// <summary>The stages, e.g. <c>branch &gt;=&gt; step2 (map, 20 workers)</c>.</summary>
    public override string ToString() => Inner.ToString();

    /// <summary>Adds a stage calling a blocking function once per item, on dedicated threads or in worker processes.</summary>
    /// <inheritdoc cref="Stage.Map{TIn, TOut}(Func{TIn, TOut}, int, int, bool, string?, bool, TimeSpan?, ErrorPolicy?, FailureCounts?, RateLimiter?)"/>
    public Pipeline<TIn, TNext> Map<TNext>(
        Func<TOut, TNext> f, int workers = 1, int capacity = Stage.DefaultCapacity, bool ordered = false, string? name = null, bool multiprocess = false, TimeSpan? timeout = null, ErrorPolicy? onError = null, FailureCounts? counts = null, RateLimiter? rateLimit = null) =>
        Then(Stage.Map(f, workers, capacity, ordered, name, multiprocess, timeout, onError, counts, rateLimit));

    /// <summary>Adds a blocking map stage whose function takes a bound argument, then each item.</summary>
    /// <inheritdoc cref="Stage.MapBound{TArg, TIn, TOut}(Func{TArg, TIn, TOut}, TArg, int, int, bool, string?, bool, TimeSpan?, ErrorPolicy?, FailureCounts?, RateLimiter?)"/>
    public Pipeline<TIn, TNext> MapBound<TArg, TNext>(
        Func<TArg, TOut, TNext> f, TArg arg, int workers = 1, int capacity = Stage.DefaultCapacity, bool ordered = false, string? name = null, bool multiprocess = false, TimeSpan? timeout = null, ErrorPolicy? onError = null, FailureCounts? counts = null, RateLimiter? rateLimit = null) =>
        Then(Stage.MapBound(f, arg, workers, capacity, ordered, name, multiprocess, timeout, onError, counts, rateLimit));

    /// <summary>Adds a stage awaiting a Task-returning function once per item.</summary>
    /// <inheritdoc cref="Stage.Map{TIn, TOut}(Func{TIn, TOut}, int, int, bool, string?, bool, TimeSpan?, ErrorPolicy?, FailureCounts?, RateLimiter?)"/>
    public Pipeline<TIn, TNext> Map<TNext>(
        Func<TOut, Task<TNext>> f, int workers = 1, int capacity = Stage.DefaultCapacity, bool ordered = false, string? name = null, bool multiprocess = false, TimeSpan? timeout = null, ErrorPolicy? onError = null, FailureCounts? counts = null, RateLimiter? rateLimit = null) =>
        Then(Stage.Map(f, workers, capacity, ordered, name, multiprocess, timeout, onError, counts, rateLimit));

    /// <summary>Adds a stage awaiting a Task-returning function once per item, passing the run's cancellation token.</summary>
    /// <inheritdoc cref="Stage.Map{TIn, TOut}(Func{TIn, TOut}, int, int, bool, string?, bool, TimeSpan?, ErrorPolicy?, FailureCounts?, RateLimiter?)"/>
    public Pipeline<TIn, TNext> Map<TNext>(
        Func<TOut, CancellationToken, Task<TNext>> f, int workers = 1, int capacity = Stage.DefaultCapacity, bool ordered = false, string? name = null, bool multiprocess = false, TimeSpan? timeout = null, ErrorPolicy? onError = null, FailureCounts? counts = null, RateLimiter? rateLimit = null) =>
        Then(Stage.Map(f, workers, capacity, ordered, name, multiprocess, timeout, onError, counts, rateLimit));

    /// <summary>Adds a blocking map stage with per-worker state.</summary>
    /// <inheritdoc cref="Stage.MapWithState{TState, TIn, TOut}(Func{TState}, Func{TState, TIn, TOut}, Action{TState}?, int, int, bool, string?, TimeSpan?, ErrorPolicy?, FailureCounts?, RateLimiter?, bool, int?)"/>
    public Pipeline<TIn, TNext> MapWithState<TState, TNext>(
        Func<TState> init, Func<TState, TOut, TNext> f, Action<TState>? dispose = null, int workers = 1, int capacity = Stage.DefaultCapacity,
        bool ordered = false, string? name = null, TimeSpan? timeout = null, ErrorPolicy? onError = null, FailureCounts? counts = null, RateLimiter? rateLimit = null,
        bool multiprocess = false, int? recycleAfter = null) =>
        Then(Stage.MapWithState(init, f, dispose, workers, capacity, ordered, name, timeout, onError, counts, rateLimit, multiprocess, recycleAfter));

    /// <summary>Adds an async map stage with per-worker state.</summary>
    /// <inheritdoc cref="Stage.MapWithState{TState, TIn, TOut}(Func{TState}, Func{TState, TIn, CancellationToken, Task{TOut}}, Action{TState}?, int, int, bool, string?, TimeSpan?, ErrorPolicy?, FailureCounts?, RateLimiter?, int?)"/>
    public Pipeline<TIn, TNext> MapWithState<TState, TNext>(
        Func<TState> init, Func<TState, TOut, CancellationToken, Task<TNext>> f, Action<TState>? dispose = null, int workers = 1,
        int capacity = Stage.DefaultCapacity, bool ordered = false, string? name = null, TimeSpan? timeout = null, ErrorPolicy? onError = null,
        FailureCounts? counts = null, RateLimiter? rateLimit = null, int? recycleAfter = null) =>
        Then(Stage.MapWithState(init, f, dispose, workers, capacity, ordered, name, timeout, onError, counts, rateLimit, recycleAfter));

    /// <summary>Adds a stage awaiting a ValueTask-returning function once per item.</summary>
    /// <inheritdoc cref="Stage.Map{TIn, TOut}(Func{TIn, TOut}, int, int, bool, string?, bool, TimeSpan?, ErrorPolicy?, FailureCounts?, RateLimiter?)"/>
    public Pipeline<TIn, TNext> MapValueTask<TNext>(
        Func<TOut, ValueTask<TNext>> f, int workers = 1, int capacity = Stage.DefaultCapacity, bool ordered = false, string? name = null, TimeSpan? timeout = null, ErrorPolicy? onError = null, FailureCounts? counts = null, RateLimiter? rateLimit = null) =>
        Then(Stage.MapValueTask(f, workers, capacity, ordered, name, timeout, onError, counts, rateLimit));

    /// <summary>Adds a stage awaiting a ValueTask-returning function once per item, passing the run's cancellation token.</summary>
    /// <inheritdoc cref="Stage.Map{TIn, TOut}(Func{TIn, TOut}, int, int, bool, string?, bool, TimeSpan?, ErrorPolicy?, FailureCounts?, RateLimiter?)"/>
    public Pipeline<TIn, TNext> MapValueTask<TNext>(
        Func<TOut, CancellationToken, ValueTask<TNext>> f, int workers = 1, int capacity = Stage.DefaultCapacity, bool ordered = false, string? name = null, TimeSpan? timeout = null, ErrorPolicy? onError = null, FailureCounts? counts = null, RateLimiter? rateLimit = null) =>
        Then(Stage.MapValueTask(f, workers, capacity, ordered, name, timeout, onError, counts, rateLimit));

    /// <summary>Adds a stage whose blocking function returns many results per item, flattened downstream.</summary>
    /// <inheritdoc cref="Stage.Map{TIn, TOut}(Func{TIn, TOut}, int, int, bool, string?, bool, TimeSpan?, ErrorPolicy?, FailureCounts?, RateLimiter?)"/>
    public Pipeline<TIn, TNext> Branch<TNext>(
        Func<TOut, IEnumerable<TNext>> f, int workers = 1, int capacity = Stage.DefaultCapacity, bool ordered = false, string? name = null, bool multiprocess = false) =>
        Then(Stage.Branch(f, workers, capacity, ordered, name, multiprocess));

    /// <summary>Adds a stage whose function returns an async stream per item, flattened downstream.</summary>
    /// <inheritdoc cref="Stage.Map{TIn, TOut}(Func{TIn, TOut}, int, int, bool, string?, bool, TimeSpan?, ErrorPolicy?, FailureCounts?, RateLimiter?)"/>
    public Pipeline<TIn, TNext> Branch<TNext>(
        Func<TOut, IAsyncEnumerable<TNext>> f, int workers = 1, int capacity = Stage.DefaultCapacity, bool ordered = false, string? name = null) =>
        Then(Stage.Branch(f, workers, capacity, ordered, name));

    /// <summary>Adds a join stage: a blocking function over the whole upstream stream, giving one result.</summary>
    /// <inheritdoc cref="Stage.Join{TIn, TOut}(Func{IEnumerable{TIn}, TOut}, int, int, bool, string?, bool)"/>
    public Pipeline<TIn, TNext> Join<TNext>(
        Func<IEnumerable<TOut>, TNext> f, int workers = 1, int capacity = Stage.DefaultCapacity, bool ordered = false, string? name = null, bool multiprocess = false) =>
        Then(Stage.Join(f, workers, capacity, ordered, name, multiprocess));

    /// <summary>Adds a join stage awaiting the whole upstream async stream, giving one result.</summary>
    /// <inheritdoc cref="Stage.Join{TIn, TOut}(Func{IEnumerable{TIn}, TOut}, int, int, bool, string?, bool)"/>
    public Pipeline<TIn, TNext> JoinTask<TNext>(
        Func<IAsyncEnumerable<TOut>, Task<TNext>> f, int workers = 1, int capacity = Stage.DefaultCapacity, bool ordered = false, string? name = null) =>
        Then(Stage.JoinTask(f, workers, capacity, ordered, name));

    /// <summary>Adds a join stage whose blocking function gives many results.</summary>
    /// <inheritdoc cref="Stage.Join{TIn, TOut}(Func{IEnumerable{TIn}, TOut}, int, int, bool, string?, bool)"/>
    public Pipeline<TIn, TNext> JoinMany<TNext>(
        Func<IEnumerable<TOut>, IEnumerable<TNext>> f, int workers = 1, int capacity = Stage.DefaultCapacity, bool ordered = false, string? name = null, bool multiprocess = false) =>
        Then(Stage.JoinMany(f, workers, capacity, ordered, name, multiprocess));

    /// <summary>Adds a join stage turning the whole upstream async stream into an async stream of results.</summary>
    /// <inheritdoc cref="Stage.Join{TIn, TOut}(Func{IEnumerable{TIn}, TOut}, int, int, bool, string?, bool)"/>
    public Pipeline<TIn, TNext> JoinStream<TNext>(
        Func<IAsyncEnumerable<TOut>, IAsyncEnumerable<TNext>> f, int workers = 1, int capacity = Stage.DefaultCapacity, bool ordered = false, string? name = null) =>
        Then(Stage.JoinStream(f, workers, capacity, ordered, name));

    /// <summary>Adds a stage grouping items into arrays.</summary>
    /// <inheritdoc cref="Stage.Batch{T}(int, TimeSpan?, int, string?)"/>
    public Pipeline<TIn, TOut[]> Batch(int size, TimeSpan? timeout = null, int capacity = Stage.DefaultCapacity, string? name = null) =>
        Then(Stage.Batch<TOut>(size, timeout, capacity, name));
}
