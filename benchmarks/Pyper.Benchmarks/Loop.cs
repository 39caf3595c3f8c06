using System.Diagnostics;

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

        once();
        var clock = Stopwatch.StartNew();
        var runs = 0;
        var cpu = Process.GetCurrentProcess().TotalProcessorTime;
        while (clock.Elapsed < time)
        {
            once();
            runs++;
        }

        var ownCpu = (Process.GetCurrentProcess().TotalProcessorTime - cpu).TotalMilliseconds / runs;
        Console.WriteLine($"{who}, {items} item(s), {workers} worker(s): {runs} runs, {clock.Elapsed.TotalMilliseconds / runs:F1} ms per run, this process's CPU {ownCpu:F1} ms per run");
        return 0;
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
            _ => throw new ArgumentException($"--loop: unknown system '{who}' (F#, C#, Dataflow, Channels)"),
        };

        once();
        var allocated = GC.GetTotalAllocatedBytes(precise: true);
        var clock = Stopwatch.StartNew();
        var runs = 0;
        while (clock.Elapsed < time)
        {
            once();
            runs++;
        }

        var items = (double)runs * source.Length;
        var perItem = clock.Elapsed.TotalNanoseconds / items;
        var bytes = (GC.GetTotalAllocatedBytes(precise: true) - allocated) / items;
        Console.WriteLine($"{who}, {workers} worker(s): {runs} runs, {perItem:F1} ns/item, {1000 / perItem:F1}M items/s, {bytes:F2} B/item");
        return 0;
    }
}
