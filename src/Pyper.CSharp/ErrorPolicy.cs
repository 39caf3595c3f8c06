using System;
using Microsoft.FSharp.Core;
using Core = Pyper.FSharp;

namespace Pyper;

/// <summary>
/// What a map stage does with an item whose call failed (threw, or ran past the stage's
/// <c>timeout</c>): <see cref="Fail"/> (the default), <see cref="Retry"/>, <see cref="Skip"/> or
/// <see cref="DeadLetter{T}"/>. Given with a map stage's <c>onError:</c> argument. No item is lost
/// silently: each is delivered, retried, skipped or dead-lettered, and a <see cref="FailureCounts"/>
/// counts them. A cancelled or stopped run is never an item failure.
/// </summary>
public sealed class ErrorPolicy
{
    private enum Rule { Fail, Skip, DeadLetter, Retry }

    private readonly Rule _rule;
    private readonly Delegate? _sink;
    private readonly int _times;
    private readonly TimeSpan _backoff;
    private readonly Func<Exception, bool>? _retryOn;
    private readonly ErrorPolicy? _otherwise;

    private ErrorPolicy(Rule rule, Delegate? sink = null, int times = 0, TimeSpan backoff = default,
        Func<Exception, bool>? retryOn = null, ErrorPolicy? otherwise = null)
    {
        _rule = rule;
        _sink = sink;
        _times = times;
        _backoff = backoff;
        _retryOn = retryOn;
        _otherwise = otherwise;
    }

    /// <summary>Fail the run with the item's exception (the default).</summary>
    public static ErrorPolicy Fail { get; } = new(Rule.Fail);

    /// <summary>Drop the item (counted in <see cref="FailureCounts.Skipped"/>); an ordered stage moves on past it.</summary>
    public static ErrorPolicy Skip { get; } = new(Rule.Skip);

    /// <summary>
    /// Give the item, its last exception and the number of attempts made to <paramref name="sink"/>
    /// (counted in <see cref="FailureCounts.DeadLettered"/>), then go on. An exception in the sink
    /// fails the run. <typeparamref name="T"/> must accept the stage's items (checked when the stage is built).
    /// </summary>
    public static ErrorPolicy DeadLetter<T>(Action<T, Exception, int> sink) => new(Rule.DeadLetter, sink);

    /// <summary>
    /// Call the function again, at most <paramref name="times"/> more times (0 to 1000), while
    /// <paramref name="retryOn"/> accepts the exception (default: any); before retry k (from 1) wait
    /// <paramref name="backoff"/> * 2^(k-1) (capped at 1 hour) with jitter: a random time between half
    /// of it and all of it. A cancelled run ends its wait at once. Then <paramref name="otherwise"/>
    /// applies (<see cref="Fail"/> by default, <see cref="Skip"/> or <see cref="DeadLetter{T}"/>).
    /// </summary>
    public static ErrorPolicy Retry(int times, TimeSpan backoff, Func<Exception, bool>? retryOn = null, ErrorPolicy? otherwise = null) =>
        new(Rule.Retry, times: times, backoff: backoff, retryOn: retryOn ?? (_ => true), otherwise: otherwise ?? Fail);

    /// <summary>The F# core's policy for a stage over <typeparamref name="T"/>.</summary>
    internal Core.OnError<T> ToCore<T>(string? name) => _rule switch
    {
        Rule.Skip => Core.OnError<T>.Skip,
        Rule.DeadLetter when _sink is Action<T, Exception, int> sink =>
            Core.OnError<T>.NewDeadLetter(FuncConvert.FromFunc<T, Exception, int, Unit>((x, e, n) => { sink(x, e, n); return null!; })),
        Rule.DeadLetter => throw new ArgumentException(
            $"{Describe(name)}: the dead-letter sink takes {_sink!.GetType().GetGenericArguments()[0].Name} items, but the stage's items are {typeof(T).Name}.", "onError"),
        Rule.Retry => Core.OnError<T>.NewRetry(_times, _backoff, FuncConvert.FromFunc(_retryOn!), _otherwise!.ToCore<T>(name)),
        _ => Core.OnError<T>.Fail,
    };

    private static string Describe(string? name) => name is null ? "A map stage" : $"Stage '{name}' (map)";

    /// <summary>Options for the core: none when not given.</summary>
    internal static FSharpOption<Core.OnError<T>> Option<T>(ErrorPolicy? policy, string? name) =>
        policy is null ? FSharpOption<Core.OnError<T>>.None : FSharpOption<Core.OnError<T>>.Some(policy.ToCore<T>(name));
}
