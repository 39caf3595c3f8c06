using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Linq;
using System.Threading;
using System.Threading.RateLimiting;
using System.Threading.Tasks;
using Expecto;
using static Pyper.CSharp.Tests.Check;

namespace Pyper.CSharp.Tests;

/// <summary>Issue #17 through the C# facade: timeouts and failure policies on map stages.</summary>
public static class PolicyTests
{
    private sealed class Planned(int item) : Exception($"planned at {item}");

    private static readonly TimeSpan Tiny = TimeSpan.FromTicks(10);

    private static async Task<List<T>> Collect<T>(IAsyncEnumerable<T> results)
    {
        var list = new List<T>();
        await foreach (var x in results) list.Add(x);
        return list;
    }

    /// <summary>A function failing item x its first <paramref name="fails"/>(x) calls.</summary>
    private static Func<int, int> Failing(Func<int, int> fails)
    {
        var calls = new ConcurrentDictionary<int, int>();
        return x => calls.AddOrUpdate(x, 1, (_, c) => c + 1) <= fails(x) ? throw new Planned(x) : x * 10;
    }

    /// <summary>A static method for worker processes: fails on multiples of seven.</summary>
    private static int FailOnSevens(int x) => x % 7 == 0 ? throw new InvalidOperationException($"seven at {x}") : x * 2;

    /// <summary>A static method with a bound argument, for worker processes.</summary>
    private static int Scale(int k, int x) => k * x;

    /// <summary>All tests of the C# policies.</summary>
    [Tests]
    public static Test All => Expecto.CSharp.Runner.TestList("C# policies", new[]
    {
        Case("rateLimit: every call of both fluent and Stage forms takes a permit of the limiter", async () =>
        {
            // The test holds the only permit and the limiter has no queue: a stage that asks for a
            // permit is refused, which fails the run and says why.
            using var limiter = new ConcurrencyLimiter(new ConcurrencyLimiterOptions { PermitLimit = 1, QueueLimit = 0 });
            using var held = limiter.AttemptAcquire();
            True(held.IsAcquired, "the test holds the permit");
            var fluent = Pipeline.Start<int>().Map(x => x + 1, name: "api", rateLimit: limiter);
            var error = await Throws(() => Collect(fluent.RunEach(Enumerable.Range(1, 3))));
            True(error is InvalidOperationException, $"an InvalidOperationException, got {error}");
            True(error.Message.Contains("Stage 'api' (map): its rate limiter refused a permit"), error.Message);
            var tasks = Stage.Map<int, int>(async x => { await Task.Yield(); return x; }, name: "api", rateLimit: limiter);
            error = await Throws(() => Collect(tasks.RunEach(Enumerable.Range(1, 3))));
            True(error is InvalidOperationException, $"an InvalidOperationException, got {error}");
            True(error.Message.Contains("rate limiter refused"), error.Message);
            held.Dispose();
            var results = await Collect(fluent.RunEach(Enumerable.Range(1, 3)));
            Sequence(results.Order(), new[] { 2, 3, 4 }, "with the permit free, the run goes through");
        }),

        Case("Retry then Skip on a blocking stage, counted", async () =>
        {
            var counts = new FailureCounts();
            var f = Failing(x => x % 5 == 0 ? int.MaxValue : x % 2);
            var p = Pipeline.Start<int>()
                .Map(f, workers: 3, ordered: true, onError: ErrorPolicy.Retry(2, Tiny, otherwise: ErrorPolicy.Skip), counts: counts);
            var results = await Collect(p.RunEach(Enumerable.Range(1, 50)));
            Sequence(results, Enumerable.Range(1, 50).Where(x => x % 5 != 0).Select(x => x * 10), "in order, skipped left out");
            Equal(counts.Skipped, 10L, "skipped");
            Equal(counts.Retries, 20L + 20L, "retries: 2 for each multiple of 5, 1 for each other odd item");
        }),

        Case("Skip and a timeout on worker processes (multiprocess)", async () =>
        {
            var counts = new FailureCounts();
            var p = Pipeline.Start<int>()
                .Map(FailOnSevens, workers: 2, ordered: true, multiprocess: true, timeout: TimeSpan.FromSeconds(60),
                     onError: ErrorPolicy.Skip, counts: counts);
            var results = await Collect(p.RunEach(Enumerable.Range(1, 30)));
            Sequence(results, Enumerable.Range(1, 30).Where(x => x % 7 != 0).Select(x => x * 2), "in order, sevens left out");
            Equal(counts.Skipped, 4L, "skipped");
        }),

        Case("MapBound: a bound argument for worker processes, and on threads", async () =>
        {
            var p = Pipeline.Start<int>().MapBound(Scale, 3, workers: 2, ordered: true, multiprocess: true);
            Sequence(await Collect(p.RunEach(Enumerable.Range(1, 10))), Enumerable.Range(1, 10).Select(x => x * 3), "scaled in worker processes");
            var q = Pipeline.Start<int>().MapBound(Scale, 2);
            Sequence(await Collect(q.RunEach(Enumerable.Range(1, 3))), new[] { 2, 4, 6 }, "scaled on threads");
        }),

        Case("DeadLetter on an async stage gets item, exception and attempts", async () =>
        {
            var dead = new ConcurrentBag<(int, Exception, int)>();
            var f = Failing(x => x == 3 ? int.MaxValue : 0);
            var p = Pipeline.Start<int>()
                .Map(async x => { await Task.Yield(); return f(x); },
                    onError: ErrorPolicy.Retry(1, Tiny, e => e is Planned, ErrorPolicy.DeadLetter<int>((x, e, n) => dead.Add((x, e, n)))));
            var results = await Collect(p.RunEach(Enumerable.Range(1, 5)));
            Sequence(results.Order(), new[] { 10, 20, 40, 50 }, "the others delivered");
            var (item, error, attempts) = dead.Single();
            Equal(item, 3, "item");
            True(error is Planned, "the item's exception");
            Equal(attempts, 2, "attempts");
        }),

        Case("a timeout cancels the token and fails the run with a TimeoutException by default", async () =>
        {
            var p = Stage.Map<int, int>(async (x, ct) => { if (x == 2) await Task.Delay(Timeout.Infinite, ct); return x; },
                timeout: TimeSpan.FromMilliseconds(300), name: "slow");
            // Check.Throws reads a TimeoutException as its own hang guard: catch it here.
            var run = Collect(p.RunEach(new[] { 1, 2, 3 }));
            True(await Task.WhenAny(run, Task.Delay(HangGuard)) == run, "the run ended");
            var e = run.Exception?.InnerException ?? throw new AssertException("expected a failure");
            True(e is TimeoutException, $"a TimeoutException, got {e}");
            True(e.Message.Contains("Stage 'slow' (map)") && e.Message.Contains("input position 1"), e.Message);
            Equal(e.PipelineStage(), "slow", "the stage");
        }),

        Case("MapWithState: init once per worker on its thread, dispose at the end", async () =>
        {
            var inits = new ConcurrentBag<int>();
            var disposed = new ConcurrentBag<int>();
            var p = Pipeline.Start<int>()
                .MapWithState(() => { inits.Add(Environment.CurrentManagedThreadId); return Environment.CurrentManagedThreadId; },
                    (int s, int x) => s == Environment.CurrentManagedThreadId ? x : -1,
                    dispose: s => disposed.Add(s), workers: 2)
                .MapWithState(() => new List<int>(), async (List<int> seen, int x, CancellationToken _) => { await Task.Yield(); seen.Add(x); return seen.Count; },
                    dispose: seen => disposed.Add(-seen.Count));
            var results = await Collect(p.RunEach(Enumerable.Range(1, 100)));
            Sequence(results.Order(), Enumerable.Range(1, 100), "one async worker counts every item");
            Equal(inits.Count, 2, "init once per blocking worker");
            Sequence(disposed.Where(d => d > 0).Order(), inits.Order(), "each blocking state disposed");
            Sequence(disposed.Where(d => d < 0), new[] { -100 }, "the async state disposed after 100 items");
        }),

        Case("MapWithState with multiprocess: the state is made in the worker process, recycled every N calls", async () =>
        {
            var p = Stage.MapWithState(static () => new[] { Environment.ProcessId, 0 },
                static (int[] s, int x) => { s[1]++; return (s[0], s[1]); }, multiprocess: true, recycleAfter: 2);
            var results = await Collect(p.RunEach(Enumerable.Range(1, 5)));
            True(results.All(r => r.Item1 != Environment.ProcessId), "made in a worker process");
            Sequence(results.Select(r => r.Item2), new[] { 1, 2, 1, 2, 1 }, "a fresh state every two calls");
        }),

        Case("MapWithState with multiprocess refuses a capturing init, and recycleAfter below 1", () =>
        {
            var offset = Environment.ProcessId;
            try
            {
                Stage.MapWithState(() => offset, static (int s, int x) => s + x, multiprocess: true, name: "s");
                throw new AssertException("expected an ArgumentException");
            }
            catch (ArgumentException e) when (e.ParamName == "init")
            {
                True(e.Message.Contains("Stage 's' (map): cannot run in worker processes: init"), e.Message);
            }
            try
            {
                Stage.MapWithState(static () => 0, static (int s, int x) => s + x, recycleAfter: 0, name: "s");
                throw new AssertException("expected an ArgumentOutOfRangeException");
            }
            catch (ArgumentOutOfRangeException e) when (e.ParamName == "recycleAfter")
            {
                True(e.Message.Contains("Stage 's' (map): recycleAfter must be at least 1"), e.Message);
            }
        }),

        Case("a dead-letter sink for other items is refused when the stage is built", () =>
        {
            try
            {
                Stage.Map((int x) => x, onError: ErrorPolicy.DeadLetter<string>((_, _, _) => { }), name: "s");
            }
            catch (ArgumentException e) when (e.ParamName == "onError")
            {
                True(e.Message.Contains("Stage 's' (map)") && e.Message.Contains("String"), e.Message);
                return Task.CompletedTask;
            }
            throw new AssertException("expected an ArgumentException");
        }),
    });
}
