using System;
using System.Threading.RateLimiting;
using Microsoft.FSharp.Core;

namespace Pyper;

/// <summary>Turns the facade's delegates and options into the F# core's types. Nothing here is public.</summary>
internal static class Interop
{
    /// <summary>An F# function for a delegate; null stays null so the core reports it with the stage's name.</summary>
    internal static FSharpFunc<TIn, TOut> Fn<TIn, TOut>(Func<TIn, TOut>? f) =>
        f is null ? null! : FuncConvert.FromFunc(f);

    /// <summary>A curried F# function for a two-argument delegate.</summary>
    internal static FSharpFunc<TIn, FSharpFunc<TArg, TOut>> Fn<TIn, TArg, TOut>(Func<TIn, TArg, TOut>? f) =>
        f is null ? null! : FuncConvert.FromFunc(f);

    internal static FSharpOption<T> Some<T>(T value) => FSharpOption<T>.Some(value);

    /// <summary>An F# function for a parameterless delegate; null stays null.</summary>
    internal static FSharpFunc<Unit, T> Fn<T>(Func<T>? f) =>
        f is null ? null! : FuncConvert.FromFunc(f);

    /// <summary>A curried F# function for a three-argument delegate; null stays null.</summary>
    internal static FSharpFunc<T1, FSharpFunc<T2, FSharpFunc<T3, TOut>>> Fn<T1, T2, T3, TOut>(Func<T1, T2, T3, TOut>? f) =>
        f is null ? null! : FuncConvert.FromFunc(f);

    /// <summary>An optional F# dispose function; none when not given.</summary>
    internal static FSharpOption<FSharpFunc<T, Unit>> Dispose<T>(Action<T>? d) =>
        d is null ? FSharpOption<FSharpFunc<T, Unit>>.None : FSharpOption<FSharpFunc<T, Unit>>.Some(FuncConvert.FromAction(d));

    /// <summary>An optional delegate (a process stage's dispose must stay a delegate); none when not given.</summary>
    internal static FSharpOption<Action<T>> DisposeAction<T>(Action<T>? d) =>
        d is null ? FSharpOption<Action<T>>.None : FSharpOption<Action<T>>.Some(d);

    internal static FSharpOption<int> Recycle(int? n) =>
        n is { } v ? FSharpOption<int>.Some(v) : FSharpOption<int>.None;

    internal static FSharpOption<TimeSpan> Span(TimeSpan? t) =>
        t is { } v ? FSharpOption<TimeSpan>.Some(v) : FSharpOption<TimeSpan>.None;

    internal static FSharpOption<FailureCounts> Counts(FailureCounts? c) =>
        c is null ? FSharpOption<FailureCounts>.None : FSharpOption<FailureCounts>.Some(c);

    internal static FSharpOption<RateLimiter> Limit(RateLimiter? r) =>
        r is null ? FSharpOption<RateLimiter>.None : FSharpOption<RateLimiter>.Some(r);

    internal static FSharpOption<string> Name(string? name) =>
        name is null ? FSharpOption<string>.None : FSharpOption<string>.Some(name);
}
