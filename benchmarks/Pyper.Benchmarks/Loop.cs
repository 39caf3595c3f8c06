using System.Diagnostics;
using Pyper.Distributed;

namespace Pyper.Benchmarks;

/// <summary>One scenario in a loop, for a profiler to watch (dotnet fsi build.fsx profile).</summary>
public static class Loop
{
    /// <summary>Runs scenario 4 (CPU-bound) with Pyper's threads or processes, or the Channels peer, until
    /// <paramref name="time"/> is up, printing wall time and this process's CPU per run; with 1 item
    /// and processes, it measures what taking and releasing worker processes costs.</summary>
    public static int Cpu(string who, int items, int workers, TimeSpan time)
    {
        var source = Enumerable.Range(0, items).ToArray();
        var threads = Pyper.Pipeline.Start<int>().Map(CpuBound.Crunch, workers: workers);
        var processes = Pyper.Pipeline.Start<int>().Map(CpuBound.Crunch, workers: workers, multiprocess: true);
        Func<long> once = who switch
        {
            "threads" => () => Peers.RunCSharp(threads, source).Result,
            "processes" => () => Peers.RunCSharp(processes, source).Result,
            "Channels" => () => Peers.Channels(source, 1, workers, Stage.DefaultCapacity, Work.Of(CpuBound.Crunch)).Result,
            _ => throw new ArgumentException($"--loop-cpu: unknown system '{who}' (threads, processes, Channels)"),
        };

        var (runs, elapsed, cpu, _) = Repeat(once, time);
        Console.WriteLine($"{who}, {items} item(s), {workers} worker(s): {runs} runs, {elapsed.TotalMilliseconds / runs:F1} ms per run, this process's CPU {cpu.TotalMilliseconds / runs:F1} ms per run");
        return 0;
    }

    /// <summary>Runs scenario 5 (a trivial function on small records, or on ints, in 2 worker processes) until
    /// <paramref name="time"/> is up, printing items/s and this (the parent) process's CPU per item.</summary>
    public static int Processes(string what, int items, TimeSpan time)
    {
        var readings = Enumerable.Range(0, items).Select(i => new Reading(i, "s" + (i % 10), i)).ToArray();
        var ints = Enumerable.Range(0, items).ToArray();
        var records = Pyper.Pipeline.Start<Reading>().Map(ProcessThroughput.Calibrate, workers: 2, multiprocess: true);
        var numbers = Pyper.Pipeline.Start<int>().Map(ProcessThroughput.Increment, workers: 2, multiprocess: true);
        Func<long> once = what switch
        {
            "records" => () => Sum(records, readings).Result,
            "ints" => () => Peers.RunCSharp(numbers, ints).Result,
            _ => throw new ArgumentException($"--loop-proc: unknown items '{what}' (records, ints)"),
        };

        var (runs, elapsed, cpu, _) = Repeat(once, time);
        var total = (double)runs * items;
        Console.WriteLine($"{what}, {items} items, 2 worker processes: {runs} runs, {total / elapsed.TotalSeconds / 1000:F0}k items/s, parent CPU {cpu.TotalNanoseconds / total:F0} ns/item");
        return 0;
    }

    private static async Task<long> Sum(Pyper.Pipeline<Reading, Reading> pipeline, Reading[] source)
    {
        long sum = 0;
        await foreach (var r in pipeline.RunEach(source)) sum += r.Id;
        return sum;
    }

    /// <summary>Runs scenario 1 (3 trivial stages, 1,000,000 ints) with one system until <paramref name="time"/> is up.</summary>
    public static int Overhead(string who, int workers, TimeSpan time)
    {
        var source = Enumerable.Range(0, Benchmarks.Overhead.Items).ToArray();
        var inc = Work.Of(x => x + 1);
        var csharp = Peers.CSharpPipeline(3, workers, Stage.DefaultCapacity, inc);
        var fsharp = Peers.FSharpPipeline(3, workers, Stage.DefaultCapacity, inc);
        Func<long> once = who switch
        {
            "F#" => () => Peers.RunFSharp(fsharp, source),
            "C#" => () => Peers.RunCSharp(csharp, source).Result,
            "Dataflow" => () => Peers.Dataflow(source, 3, workers, Stage.DefaultCapacity, inc).Result,
            "Channels" => () => Peers.Channels(source, 3, workers, Stage.DefaultCapacity, inc).Result,
            "ChannelsChunked" => () => Peers.ChannelsChunked(source, 3, workers, Stage.DefaultCapacity, x => x + 1).Result,
            _ => throw new ArgumentException($"--loop: unknown system '{who}' (F#, C#, Dataflow, Channels, ChannelsChunked)"),
        };

        var (runs, elapsed, _, allocated) = Repeat(once, time);
        var items = (double)runs * source.Length;
        var perItem = elapsed.TotalNanoseconds / items;
        var bytes = allocated / items;
        Console.WriteLine($"{who}, {workers} worker(s): {runs} runs, {perItem:F1} ns/item, {1000 / perItem:F1}M items/s, {bytes:F2} B/item");
        return 0;
    }

    /// <summary>Runs the first-result scenario (one item, 3 trivial stages) with Pyper's thread stages,
    /// async stages or the Channels peer until <paramref name="time"/> is up: time and bytes per run.</summary>
    public static int First(string who, TimeSpan time)
    {
        int[] one = [1];
        if (who == "distributed")
        {
            // One distributed stage (2 worker hosts, connected), as DistributedFirstResult measures it.
            using var cluster = new NatsCluster(2);
            if (cluster.Server is not { } server) return 1;
            var distributed = Pyper.Pipeline.Start<int>().MapDistributed(DistributedThroughput.Inc, server);
            var first = new List<double>();
            var (n, took, used, _) = Repeat(() =>
            {
                var (sum, firstResult) = TimedRun.Run(distributed, one).Result;
                first.Add(firstResult.TotalMilliseconds);
                return sum;
            }, time);
            first.Sort();
            Console.WriteLine($"distributed: {n} runs, first result median {first[first.Count / 2]:F2} ms (min {first[0]:F2}, max {first[^1]:F2}), "
                              + $"{took.TotalMilliseconds / n:F2} ms per whole run (set-up, result, clean-up on the server), CPU {used.TotalMilliseconds / n:F2} ms per run");
            return 0;
        }

        var threads = Peers.FSharpPipeline(3, 1, Stage.DefaultCapacity, Work.Of(x => x + 1));
        var async = Peers.CSharpPipeline(3, 1, Stage.DefaultCapacity, Work.Of(x => Task.FromResult(x + 1)));
        Func<long> once = who switch
        {
            "threads" => () => Peers.RunFSharp(threads, one),
            "async" => () => Peers.RunCSharp(async, one).Result,
            "Channels" => () => Peers.Channels(one, 3, 1, Stage.DefaultCapacity, Work.Of(x => x + 1)).Result,
            _ => throw new ArgumentException($"--loop-first: unknown system '{who}' (threads, async, Channels, distributed)"),
        };

        var (runs, elapsed, cpu, allocated) = Repeat(once, time);
        Console.WriteLine($"{who}: {runs} runs, {elapsed.TotalMicroseconds / runs:F1} µs per run, CPU {cpu.TotalMicroseconds / runs:F1} µs per run, {allocated / runs} B per run");
        return 0;
    }

    /// <summary>Runs <paramref name="once"/> once to warm up, then again until <paramref name="time"/> is up:
    /// how many runs, how long they took, this process's CPU time and the bytes allocated meanwhile.</summary>
    private static (int Runs, TimeSpan Elapsed, TimeSpan Cpu, long Allocated) Repeat(Func<long> once, TimeSpan time)
    {
        once();
        var allocated = GC.GetTotalAllocatedBytes(precise: true);
        var cpu = Process.GetCurrentProcess().TotalProcessorTime;
        var clock = Stopwatch.StartNew();
        var runs = 0;
        while (clock.Elapsed < time)
        {
            once();
            runs++;
        }

        var elapsed = clock.Elapsed;
        return (runs, elapsed, Process.GetCurrentProcess().TotalProcessorTime - cpu,
            GC.GetTotalAllocatedBytes(precise: true) - allocated);
    }
}
