using System;
using System.Collections;
using System.Collections.Generic;
using System.Threading;
using Core = Pyper.FSharp;

namespace Pyper;

/// <summary>Anchors pipelines on their input.</summary>
public static class Flow
{
    /// <summary>A flow of one value: the input of the pipeline that follows (its first stage's argument).</summary>
    /// <param name="input">The input.</param>
    public static Flow<T> Of<T>(T input) => new(new Single<T>(input), Core.Pipeline.id<T>());

    /// <summary>A flow of every item of a sequence, read on a thread of its own as the pipeline needs them.</summary>
    /// <param name="source">The items.</param>
    public static Flow<T> From<T>(IEnumerable<T> source)
    {
        ArgumentNullException.ThrowIfNull(source);
        return new(new Many<T>(source), Core.Pipeline.id<T>());
    }

    /// <summary>A flow of every item of an async stream, read as the pipeline needs them.</summary>
    /// <param name="source">The items.</param>
    public static Flow<T> From<T>(IAsyncEnumerable<T> source)
    {
        ArgumentNullException.ThrowIfNull(source);
        return new(new Stream<T>(source), Core.Pipeline.id<T>());
    }

    private sealed class Single<T>(T input) : ISource<T>
    {
        public IAsyncEnumerable<TOut> Run<TOut>(Core.Pipeline<T, TOut> p) => Core.Pipeline.stream(input, p);
    }

    private sealed class Many<T>(IEnumerable<T> source) : ISource<T>
    {
        public IAsyncEnumerable<TOut> Run<TOut>(Core.Pipeline<T, TOut> p) => Core.Pipeline.streamFromSeq(source, p);
    }

    private sealed class Stream<T>(IAsyncEnumerable<T> source) : ISource<T>
    {
        public IAsyncEnumerable<TOut> Run<TOut>(Core.Pipeline<T, TOut> p) => Core.Pipeline.streamFrom(source, p);
    }
}

/// <summary>Where a flow's items come from: one input, a sequence or an async stream.</summary>
internal interface ISource<TSource>
{
    IAsyncEnumerable<TOut> Run<TOut>(Core.Pipeline<TSource, TOut> pipeline);
}

/// <summary>What a flow is made of, with its source type hidden.</summary>
internal interface IAnchored<T>
{
    IAsyncEnumerable<T> Stream();

    IAnchored<TNext> Then<TNext>(Core.Pipeline<T, TNext> next);
}

/// <summary>A source and the pipeline that runs over it.</summary>
internal sealed class Anchored<TSource, T>(ISource<TSource> source, Core.Pipeline<TSource, T> pipeline) : IAnchored<T>
{
    public IAsyncEnumerable<T> Stream() => source.Run(pipeline);

    public IAnchored<TNext> Then<TNext>(Core.Pipeline<T, TNext> next) =>
        new Anchored<TSource, TNext>(source, Core.Pipeline.compose(pipeline, next));
}

/// <summary>
/// The results of a pipeline anchored on its input, not yet run. Enumerate it with <c>await foreach</c>
/// (cancel with <c>WithCancellation</c>) or a plain <c>foreach</c> (blocking); every enumeration is a
/// new, independent run, and breaking out of the loop stops it. A failure in any stage is rethrown as
/// the original exception. Extend it with <c>flow | stage</c> or <see cref="Then{TNext}"/>.
/// It is also an <see cref="IEnumerable{T}"/> (a blocking run), so LINQ's <c>Single()</c>, <c>First()</c>,
/// <c>ToList()</c>, <c>Sum()</c>... just work. LINQ operators that .NET also defines for async streams
/// (<c>Where</c>, <c>Select</c>...) need a side picked: <see cref="ToEnumerable"/> or
/// <see cref="AsAsyncEnumerable"/>.
/// </summary>
/// <typeparam name="T">The type of the results.</typeparam>
public sealed class Flow<T> : IAsyncEnumerable<T>, IEnumerable<T>
{
    private readonly IAnchored<T> anchored;

    internal Flow(IAnchored<T> anchored) => this.anchored = anchored;

    internal Flow(ISource<T> source, Core.Pipeline<T, T> id) => anchored = new Anchored<T, T>(source, id);

    /// <summary>This flow run through <paramref name="next"/>.</summary>
    /// <param name="next">The pipeline to run over this flow's items.</param>
    public Flow<TNext> Then<TNext>(Pipeline<T, TNext> next)
    {
        ArgumentNullException.ThrowIfNull(next);
        return new(anchored.Then(next.Inner));
    }

    /// <summary>Starts a run, streaming its results as they are ready.</summary>
    /// <param name="cancellationToken">Cancels the run.</param>
    public IAsyncEnumerator<T> GetAsyncEnumerator(CancellationToken cancellationToken = default) =>
        anchored.Stream().GetAsyncEnumerator(cancellationToken);

    /// <summary>Starts a run for a plain, blocking <c>foreach</c> or LINQ; a failure is rethrown as the original exception.</summary>
    public IEnumerator<T> GetEnumerator() => ToEnumerable().GetEnumerator();

    IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();

    /// <summary>This flow as an async stream only: for .NET's async LINQ (<c>Where</c>, <c>Select</c>, <c>ToListAsync</c>...).</summary>
    public IAsyncEnumerable<T> AsAsyncEnumerable() => this;

    /// <summary>The results as a blocking sequence, cancelled by <paramref name="cancellationToken"/>.</summary>
    /// <param name="cancellationToken">Cancels the run.</param>
    public IEnumerable<T> ToEnumerable(CancellationToken cancellationToken = default) =>
        Core.Pipeline.toBlockingSeq(cancellationToken, anchored.Stream());
}
