using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Diagnostics;
using System.Linq;
using System.Threading;
using System.Threading.Tasks;
using Expecto;
using static Pyper.CSharp.Tests.Check;

namespace Pyper.CSharp.Tests;

/// <summary>Issue #11 through the C# facade: the same limits and messages as the core.</summary>
public static class HardeningTests
{
    private static async Task<List<T>> Collect<T>(IAsyncEnumerable<T> results)
    {
        var list = new List<T>();
        await foreach (var x in results) list.Add(x);
        return list;
    }

    private static void ThrowsRange(string paramName, string fragment, Func<object> build)
    {
        try
        {
            build();
        }
        catch (ArgumentOutOfRangeException e)
        {
            Equal(e.ParamName, paramName, "names the option");
            True(e.Message.Contains(fragment, StringComparison.Ordinal), $"message '{e.Message}' says '{fragment}'");
            return;
        }

        throw new AssertException("expected an ArgumentOutOfRangeException");
    }

    /// <summary>The hardening tests of the facade.</summary>
    [Tests]
    public static Test All => Expecto.CSharp.Runner.TestList("C# hardening", new[]
    {
        Case("a capacity near int.MaxValue before a stage with 2 workers runs", async () =>
        {
            var p = Pipeline.Start<int>().Map(x => x, capacity: int.MaxValue - 1).Map(x => x, workers: 2);
            Sequence((await Collect(p.RunEach(Enumerable.Range(1, 100)))).Order(), Enumerable.Range(1, 100), "results");
        }),

        Case("upper bounds are checked when the stage is built, with the core's messages", () =>
        {
            ThrowsRange("workers", "Stage 'wide' (map): workers must be at most 10000",
                () => Stage.Map((int x) => x, workers: int.MaxValue, name: "wide"));
            ThrowsRange("workers", "A map stage: workers must be at most 10000",
                () => Stage.Map((int x) => Task.FromResult(x), workers: 10_001));
            ThrowsRange("workers", "workers must be at most 256",
                () => Stage.Map((int x) => x, workers: 1000, multiprocess: true));
            ThrowsRange("size", "A batch stage: size must be at most 2147483591", () => Stage.Batch<int>(int.MaxValue));
        }),

        Case("a null Task names the stage", async () =>
        {
            var e = await Throws(() => Collect(Flow.Of(1) | Stage.Map<int, int>(x => null!, name: "nulls")));
            True(e is InvalidOperationException, $"InvalidOperationException, got {e}");
            True(e.Message.Contains("Stage 'nulls' (map): the function returned a null Task", StringComparison.Ordinal), e.Message);
        }),

        Case("MoveNextAsync after DisposeAsync answers false", async () =>
        {
            var e = Flow.From(Enumerable.Range(1, 10)).Then(Stage.Map((int x) => x)).GetAsyncEnumerator();
            True(await e.MoveNextAsync(), "a first result");
            await e.DisposeAsync();
            True(!await e.MoveNextAsync(), "nothing after disposal");
        }),

        Case("break returns while the source blocks in MoveNext", async () =>
        {
            using var items = new BlockingCollection<int> { 1 };
            var clock = new Stopwatch();
            try
            {
                await Task.Run(() =>
                {
                    foreach (var x in Flow.From(items.GetConsumingEnumerable()) | Stage.Map((int x) => x))
                    {
                        clock.Start();
                        break;
                    }
                    clock.Stop();
                }).WaitAsync(HangGuard);
            }
            finally
            {
                items.CompleteAdding();
            }
            True(clock.Elapsed < TimeSpan.FromSeconds(2), $"the consumer got control back ({clock.Elapsed})");
            True(SpinWait.SpinUntil(() => Live.threadCount() == 0, HangGuard), "the source's thread ends once MoveNext returns");
        }),
    });
}
