using System.Diagnostics;

namespace Pyper.Benchmarks;

/// <summary>The <c>--loop-fail</c> probe: how long a failure takes to reach the consumer (issue #11, point 3).</summary>
public static class Fail
{
    /// <summary>The item that fails.</summary>
    public const int At = 50;

    /// <summary>Fails at item 50 with the thrower's <see cref="Stopwatch.GetTimestamp"/> as the message (on
    /// Linux CLOCK_MONOTONIC: one clock for every process of the machine).</summary>
    public static int ThrowAt50(int x) =>
        x == At ? throw new InvalidOperationException(Stopwatch.GetTimestamp().ToString()) : x;

    /// <summary>The warm-up's function.</summary>
    public static int Identity(int x) => x;

    /// <summary>Runs <c>Map(ThrowAt50, workers: 2)</c> over 100,000 items <paramref name="runs"/> times with
    /// worker processes (two warm ones parked before each run) and with threads, alternately; prints, per
    /// system, the median and range of the time from the throw to the consumer's exception, of the disposal
    /// after it, and the results yielded before the exception.</summary>
    public static int Loop(int runs)
    {
        var source = Enumerable.Range(0, 100_000).ToArray();
        var warm = Pyper.Pipeline.Start<int>().Map(Identity, workers: 2, multiprocess: true);
        var processes = Pyper.Pipeline.Start<int>().Map(ThrowAt50, workers: 2, multiprocess: true);
        var threads = Pyper.Pipeline.Start<int>().Map(ThrowAt50, workers: 2);
        var seen = new Dictionary<string, List<(double Throw, double Dispose, int Yielded)>>
        {
            ["processes"] = [],
            ["threads"] = [],
        };

        for (var i = 0; i <= runs; i++)
        {
            // Two worker processes parked, so that the failing run starts on warm ones.
            Peers.RunCSharp(warm, source).Wait();
            var p = Once(processes, source).Result;
            var t = Once(threads, source).Result;
            if (i == 0) continue; // the first run warms this process up
            seen["processes"].Add(p);
            seen["threads"].Add(t);
        }

        Console.WriteLine($"load average {File.ReadAllText("/proc/loadavg").Trim()}; {runs} runs each");
        foreach (var (who, list) in seen)
        {
            static string Stats(IEnumerable<double> xs)
            {
                var s = xs.OrderBy(x => x).ToArray();
                return $"median {s[s.Length / 2]:F1} ms (min {s[0]:F1}, max {s[^1]:F1})";
            }

            Console.WriteLine($"{who}: throw -> consumer's exception {Stats(list.Select(x => x.Throw))}; " +
                $"disposal after it {Stats(list.Select(x => x.Dispose))}; yielded median {list.Select(x => x.Yielded).Order().ElementAt(list.Count / 2)}");
        }

        return 0;
    }

    private static async Task<(double Throw, double Dispose, int Yielded)> Once(Pyper.Pipeline<int, int> pipeline, int[] source)
    {
        var run = pipeline.RunEach(source).AsAsyncEnumerable().GetAsyncEnumerator();
        var yielded = 0;
        long thrown;
        long caught;
        try
        {
            while (await run.MoveNextAsync()) yielded++;
            throw new InvalidOperationException("the run did not fail");
        }
        catch (InvalidOperationException e) when (long.TryParse(e.Message, out thrown))
        {
            caught = Stopwatch.GetTimestamp();
        }

        await run.DisposeAsync();
        var disposed = Stopwatch.GetTimestamp();
        return (Stopwatch.GetElapsedTime(thrown, caught).TotalMilliseconds,
            Stopwatch.GetElapsedTime(caught, disposed).TotalMilliseconds, yielded);
    }
}
