using System;
using System.Collections.Generic;
using System.Linq;
using System.Reflection;
using System.Runtime.CompilerServices;
using System.Threading;
using System.Threading.Tasks;
using Expecto;
using static Pyper.CSharp.Tests.Check;

namespace Pyper.CSharp.Tests;

/// <summary>Tests of the C# facade, run by the same Expecto runner as the F# tests.</summary>
public static class FacadeTests
{
    private static async Task<List<T>> Collect<T>(IAsyncEnumerable<T> results)
    {
        var list = new List<T>();
        await foreach (var x in results) list.Add(x);
        return list;
    }

    private static async IAsyncEnumerable<int> Twice(int x, [EnumeratorCancellation] CancellationToken ct = default)
    {
        await Task.Yield();
        yield return x;
        ct.ThrowIfCancellationRequested();
        yield return x;
    }

    private static IEnumerable<int> Endless()
    {
        for (var i = 0; ; i++) yield return i;
    }

    private static int Square(int x) => x * x;

    private static IEnumerable<int> Upto(int n) => Enumerable.Range(0, n);

    private static int Total(IEnumerable<int> xs) => xs.Sum();

    private static IEnumerable<int> Evens(IEnumerable<int> xs) => xs.Where(x => x % 2 == 0);

    private sealed class Boom(int item) : Exception($"boom at {item}");

    /// <summary>Every type the facade exposes, with every type its public members mention.</summary>
    private static IEnumerable<(string Where, Type Type)> PublicSurface(Assembly assembly)
    {
        const BindingFlags all = BindingFlags.Public | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly;
        foreach (var t in assembly.GetExportedTypes())
        {
            if (t.BaseType is { } b) yield return ($"{t.Name} base", b);
            foreach (var i in t.GetInterfaces()) yield return ($"{t.Name} interface", i);
            foreach (var m in t.GetMethods(all))
            {
                yield return ($"{t.Name}.{m.Name} returns", m.ReturnType);
                foreach (var p in m.GetParameters()) yield return ($"{t.Name}.{m.Name}({p.Name})", p.ParameterType);
            }
            foreach (var c in t.GetConstructors(all))
                foreach (var p in c.GetParameters()) yield return ($"{t.Name} constructor ({p.Name})", p.ParameterType);
            foreach (var p in t.GetProperties(all)) yield return ($"{t.Name}.{p.Name}", p.PropertyType);
            foreach (var f in t.GetFields(all)) yield return ($"{t.Name}.{f.Name}", f.FieldType);
        }
    }

    private static IEnumerable<Type> Mentioned(Type t)
    {
        yield return t;
        if (t.HasElementType)
            foreach (var e in Mentioned(t.GetElementType()!)) yield return e;
        if (t.IsGenericType)
            foreach (var a in t.GetGenericArguments().SelectMany(Mentioned)) yield return a;
    }

    /// <summary>All tests of the facade.</summary>
    [Tests]
    public static Test All => Expecto.CSharp.Runner.TestList("C# facade", new[]
    {
        Case("the README example builds without type arguments and runs", async () =>
        {
            var total = 0;
            await foreach (var output in ReadmeExample.Pipeline.Run(20)) total += output;
            Equal(total, 190, "total");
            Equal(ReadmeExample.Pipeline.ToString(), "Pipeline<Int32, Int32>: branch #1 (threads) >=> map #2 (20 workers, async) >=> map #3 (20 workers, threads) >=> map #4 (20 workers, threads)", "stages");
        }),

        Case("a plain foreach works too", () =>
        {
            var results = new List<int>();
            foreach (var x in ReadmeExample.Pipeline.Run(5)) results.Add(x);
            Sequence(results.Order(), Enumerable.Range(0, 5), "results");
        }),

        Case("operator | anchors stages on a flow", async () =>
        {
            var flow = Flow.Of(4)
                | Stage.Branch((int n) => Enumerable.Range(1, n))
                | Stage.Map((int x) => x * 10, workers: 2, ordered: true)
                | Stage.Map(async (int x) => { await Task.Yield(); return x + 1; });
            Sequence((await Collect(flow)).Order(), new[] { 11, 21, 31, 41 }, "results");
        }),

        Case("fluent Then composes reusable pipelines", async () =>
        {
            var inc = Stage.Map((int x) => x + 1);
            var twice = inc.Then(inc).Then(Stage.Map((int x) => x.ToString()));
            Sequence(await Collect(twice.RunEach(new[] { 1, 2, 3 })), new[] { "3", "4", "5" }, "results");
        }),

        Case("every stage kind", async () =>
        {
            var p = Pipeline.Start<int>()
                .Map(x => x + 1)
                .Map(x => Task.FromResult(x))
                .Map((x, ct) => Task.FromResult(x))
                .MapValueTask(x => new ValueTask<int>(x))
                .MapValueTask((x, ct) => new ValueTask<int>(x))
                .Branch(x => new[] { x, x })
                .Branch(x => Twice(x))
                .Batch(4)
                .Map(xs => xs.Sum())
                .JoinMany(sums => sums.OrderBy(s => s))
                .JoinTask(async xs => { var n = 0; await foreach (var x in xs) n += x; return n; });
            // 1..5 -> 2..6, each four times: 4 * 20 = 80
            Sequence(await Collect(p.RunEach(Enumerable.Range(1, 5))), new[] { 80 }, "sum");
            var joins = Stage.Join((IEnumerable<int> xs) => xs.Count())
                .Then(Stage.JoinStream((IAsyncEnumerable<int> xs) => xs));
            Sequence(await Collect(joins.RunEach(Enumerable.Range(0, 10))), new[] { 10 }, "count");
        }),

        Case("LINQ on a run's results: blocking, with the original exception", () =>
        {
            var p = Pipeline.Start<int>().Map(Square, workers: 2);
            Equal(p.Run(7).Single(), 49, "Single");
            Equal(p.RunEach(Enumerable.Range(1, 4)).Sum(), 30, "Sum");
            Equal(p.RunEach(Enumerable.Range(1, 4)).ToList().Count, 4, "ToList");
            Equal(p.RunEach(Enumerable.Range(1, 4)).ToArray().Length, 4, "ToArray");
            Equal(Pipeline.Start<int>().Map(Square).RunEach(Endless()).First(x => x > 100), 121, "First stops an endless run");
            Equal(p.RunEach(Enumerable.Range(1, 4)).ToEnumerable().Where(x => x > 4).Count(), 2, "sync side");
            Equal(p.RunEach(Enumerable.Range(1, 4)).AsAsyncEnumerable().Where(x => x > 4).CountAsync().AsTask().Result, 2, "async side");
            var failing = Pipeline.Start<int>().Map(x => x == 3 ? throw new Boom(x) : x, name: "picky");
            try
            {
                failing.RunEach(Enumerable.Range(0, 10)).ToList();
                throw new AssertException("expected an exception");
            }
            catch (Boom e)
            {
                Equal(e.PipelineStage(), "picky", "stage");
            }
        }),

        Case("consumers: Into and IntoAsync", async () =>
        {
            var gen = Stage.Branch((int n) => Enumerable.Range(1, n));
            Equal(gen.Into(xs => xs.Sum())(100), 5050, "sum");
            Equal(await gen.IntoAsync(async xs => { var n = 0; await foreach (var _ in xs) n++; return n; })(42), 42, "count");
        }),

        Case("a failure surfaces from await foreach with its original type and stage", async () =>
        {
            var p = Pipeline.Start<int>().Map(x => x == 7 ? throw new Boom(x) : x, workers: 2, name: "picky");
            var e = await Throws(() => Collect(p.RunEach(Enumerable.Range(0, 100))));
            True(e is Boom, $"Boom, got {e.GetType().Name}");
            Equal(e.PipelineStage(), "picky", "stage");
            Equal(e.OtherPipelineErrors().Count, 0, "no other failure");
        }),

        Case("a failure surfaces from foreach with its original type", () =>
        {
            var p = Pipeline.Start<int>().Map(async x => { await Task.Yield(); return x == 3 ? throw new InvalidOperationException("three") : x; });
            try
            {
                foreach (var _ in p.RunEach(Enumerable.Range(0, 10))) { }
                throw new AssertException("expected an exception");
            }
            catch (InvalidOperationException e)
            {
                Equal(e.Message, "three", "message");
            }
        }),

        Case("cancellation with WithCancellation stops the run", async () =>
        {
            using var cts = new CancellationTokenSource();
            var p = Pipeline.Start<int>().Map(async (x, ct) => { await Task.Delay(1, ct); return x; }, workers: 4);
            var e = await Throws(async () =>
            {
                await foreach (var x in p.RunEach(Endless()).WithCancellation(cts.Token))
                    if (x >= 20) cts.Cancel();
            });
            True(e is OperationCanceledException, $"cancelled, got {e.GetType().Name}");
        }),

        Case("breaking out of the loop stops the run", async () =>
        {
            var seen = 0;
            await foreach (var _ in Pipeline.Start<int>().Map(x => x, workers: 3).RunEach(Endless()))
                if (++seen == 5) break;
            Equal(seen, 5, "five");
        }),

        Case("bad options name the stage and the option", () =>
        {
            try
            {
                Stage.Map((int x) => x, workers: 0, name: "step1");
                throw new AssertException("expected an ArgumentException");
            }
            catch (ArgumentOutOfRangeException e)
            {
                Equal(e.ParamName, "workers", "option");
                True(e.Message.Contains("Stage 'step1' (map): workers must be at least 1"), e.Message);
            }

            try
            {
                Stage.Map((Func<int, int>)null!);
                throw new AssertException("expected an ArgumentNullException");
            }
            catch (ArgumentNullException e)
            {
                True(e.Message.Contains("the function is null"), e.Message);
            }
        }),

        Case("stages describe themselves", () =>
        {
            var info = Stage.Map(async (int x) => { await Task.Yield(); return x; }, workers: 3, name: "step1").Stages.Single();
            Equal(info.Name, "step1", "name");
            Equal(info.Executor, Executor.Async, "executor");
            Equal(info.Workers, 3, "workers");
        }),

        Case("multiprocess: a static method runs in worker processes", async () =>
        {
            var p = Pipeline.Start<int>().Map(Square, workers: 2, multiprocess: true);
            Equal(p.Stages.Single().Executor, Executor.Process, "executor");
            Sequence((await Collect(p.RunEach(Enumerable.Range(0, 100)))).Order(), Enumerable.Range(0, 100).Select(x => x * x), "squares");
            var lambda = Stage.Map((int x) => x + 1, multiprocess: true, ordered: true);
            Sequence(await Collect(lambda.RunEach(new[] { 1, 2, 3 })), new[] { 2, 3, 4 }, "a lambda that captures nothing");
        }),

        Case("multiprocess: Branch, Join and JoinMany run static methods in worker processes", async () =>
        {
            var branch = Pipeline.Start<int>().Branch(Upto, workers: 2, multiprocess: true, ordered: true);
            Equal(branch.Stages.Single().Executor, Executor.Process, "branch executor");
            Sequence(await Collect(branch.RunEach(new[] { 3, 0, 2 })), new[] { 0, 1, 2, 0, 1 }, "flattened, in order");
            var join = Pipeline.Start<int>().Join(Total, multiprocess: true);
            Sequence(await Collect(join.RunEach(Enumerable.Range(1, 100))), new[] { 5050 }, "the whole stream's sum");
            var many = Pipeline.Start<int>().JoinMany(Evens, multiprocess: true);
            Sequence(await Collect(many.RunEach(Enumerable.Range(1, 10))), new[] { 2, 4, 6, 8, 10 }, "many results");
            var k = Environment.ProcessorCount;
            try
            {
                Stage.Branch((int x) => Enumerable.Repeat(x, k), multiprocess: true, name: "rep");
                throw new AssertException("expected an ArgumentException");
            }
            catch (ArgumentException e)
            {
                True(e.Message.Contains("Stage 'rep' (branch)") && e.Message.Contains("captures variables"), e.Message);
            }
        }),

        Case("multiprocess: a capturing lambda and an async function are refused when built", () =>
        {
            var k = Environment.ProcessorCount;
            try
            {
                Stage.Map((int x) => x * k, multiprocess: true);
                throw new AssertException("expected an ArgumentException");
            }
            catch (ArgumentException e)
            {
                True(e.Message.Contains("captures variables"), e.Message);
            }

            try
            {
                Stage.Map(async (int x) => { await Task.Yield(); return x; }, multiprocess: true);
                throw new AssertException("expected an ArgumentException");
            }
            catch (ArgumentException e)
            {
                Equal(e.ParamName, "multiprocess", "option");
                True(e.Message.Contains("async function"), e.Message);
            }
        }),

        Case("no F# type appears in the C# surface", () =>
        {
            var fsharp = typeof(Microsoft.FSharp.Core.FSharpFunc<,>).Assembly;
            var leaks = PublicSurface(typeof(Flow).Assembly)
                .SelectMany(m => Mentioned(m.Type).Select(t => (m.Where, t)))
                .Where(m => m.t.Assembly == fsharp || (m.t.Namespace?.StartsWith("Pyper.FSharp", StringComparison.Ordinal) ?? false))
                .Select(m => $"{m.Where}: {m.t}")
                .Distinct()
                .ToList();
            True(leaks.Count == 0, "F# types in the C# surface: " + string.Join("; ", leaks));
            True(PublicSurface(typeof(Flow).Assembly).Any(), "the surface was read");
        }),
    });
}
