using Akka.Actor;
using Akka.Streams;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Engines;

namespace Pyper.Benchmarks;

/// <summary>Item counts: the full run's, or a hundredth of them for the smoke run (<c>--quick</c>).</summary>
public static class Size
{
    public static bool Quick { get; set; }
    public static int Of(int items) => Quick ? Math.Max(10, items / 100) : items;
}

/// <summary>Scenario 1: three trivial stages (x + 1) over 1,000,000 ints. Mean is per item.</summary>
[MemoryDiagnoser]
[SimpleJob(launchCount: 1, warmupCount: 2, iterationCount: 5, id: "Full")]
public class Overhead
{
    public const int Items = 1_000_000;
    private int[] source = [];
    private Pyper.Pipeline<int, int> csharp = null!;
    private Pyper.FSharp.Pipeline<int, int> fsharp = null!;
    private ActorSystem system = null!;
    private IMaterializer materializer = null!;
    private static readonly Work Inc = Work.Of(x => x + 1);

    [Params(1, 4)] public int Workers { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        source = Enumerable.Range(0, Size.Of(Items)).ToArray();
        csharp = Peers.CSharpPipeline(3, Workers, Stage.DefaultCapacity, Inc);
        fsharp = Peers.FSharpPipeline(3, Workers, Stage.DefaultCapacity, Inc);
        system = ActorSystem.Create("bench", "akka.loglevel = ERROR");
        materializer = system.Materializer();
    }

    [GlobalCleanup]
    public void Cleanup() => system.Terminate().Wait();

    [Benchmark(Baseline = true, OperationsPerInvoke = Items)]
    public Task<long> Channels() => Peers.Channels(source, 3, Workers, Stage.DefaultCapacity, Inc);

    [Benchmark(OperationsPerInvoke = Items)]
    public Task<long> ChannelsChunked() => Peers.ChannelsChunked(source, 3, Workers, Stage.DefaultCapacity, x => x + 1);

    [Benchmark(OperationsPerInvoke = Items)]
    public long PyperFSharp() => Peers.RunFSharp(fsharp, source);

    private Listeners? listeners;

    /// <summary>The same F# run with a MeterListener taking every Pyper measurement and an
    /// ActivityListener recording every Pyper activity (run, stages, batches).</summary>
    [Benchmark(OperationsPerInvoke = Items)]
    public long PyperFSharpObserved() => Peers.RunFSharp(fsharp, source);

    [GlobalSetup(Target = nameof(PyperFSharpObserved))]
    public void SetupObserved()
    {
        Setup();
        listeners = new Listeners();
    }

    [GlobalCleanup(Target = nameof(PyperFSharpObserved))]
    public void CleanupObserved()
    {
        listeners?.Dispose();
        Cleanup();
    }

    [Benchmark(OperationsPerInvoke = Items)]
    public Task<long> PyperCSharp() => Peers.RunCSharp(csharp, source);

    [Benchmark(OperationsPerInvoke = Items)]
    public Task<long> Dataflow() => Peers.Dataflow(source, 3, Workers, Stage.DefaultCapacity, Inc);

    [Benchmark(OperationsPerInvoke = Items)]
    public Task<long> AkkaStreams() => Peers.Akka(materializer, source, 3, Workers, Inc);

    [Benchmark(OperationsPerInvoke = Items)]
    public long Linq() => source.Select(x => x + 1).Select(x => x + 1).Select(x => x + 1).Sum(x => (long)x);
}

/// <summary>Latency: the one result of a one-item, three-stage pipeline (start-up included).</summary>
[SimpleJob(launchCount: 1, warmupCount: 2, iterationCount: 5, id: "Full")]
public class FirstResult
{
    private static readonly int[] One = [1];
    private readonly Pyper.FSharp.Pipeline<int, int> threads = Peers.FSharpPipeline(3, 1, Stage.DefaultCapacity, Work.Of(x => x + 1));
    private readonly Pyper.Pipeline<int, int> async =
        Peers.CSharpPipeline(3, 1, Stage.DefaultCapacity, Work.Of(x => Task.FromResult(x + 1)));

    [Benchmark(Baseline = true)]
    public Task<long> Channels() => Peers.Channels(One, 3, 1, Stage.DefaultCapacity, Work.Of(x => x + 1));

    [Benchmark]
    public long PyperThreadStages() => Peers.RunFSharp(threads, One);

    [Benchmark]
    public Task<long> PyperAsyncStages() => Peers.RunCSharp(async, One);

    [Benchmark]
    public Task<long> Dataflow() => Peers.Dataflow(One, 3, 1, Stage.DefaultCapacity, Work.Of(x => x + 1));
}

/// <summary>
/// The first result through three thread stages when no parked thread is left (each run starts
/// its threads): what the very first run of a process pays.
/// </summary>
[SimpleJob(RunStrategy.ColdStart, launchCount: 1, warmupCount: 3, iterationCount: 15, id: "NoParkedThreads")]
public class FirstResultColdThreads
{
    private static readonly int[] One = [1];
    private readonly Pyper.FSharp.Pipeline<int, int> threads = Peers.FSharpPipeline(3, 1, Stage.DefaultCapacity, Work.Of(x => x + 1));

    [IterationSetup]
    public void RetireParkedThreads() => DedicatedThreads.retireIdle();

    [Benchmark]
    public long PyperThreadStages() => Peers.RunFSharp(threads, One);
}

/// <summary>Scenario 2: one stage awaiting Task.Delay(1) per item.</summary>
[SimpleJob(launchCount: 1, warmupCount: 2, iterationCount: 5, id: "Full")]
public class AsyncIo
{
    public const int Items = 1_000;
    private int[] source = [];
    private Pyper.Pipeline<int, int> pyper = null!;
    private ActorSystem system = null!;
    private IMaterializer materializer = null!;

    private static readonly Work Wait = Work.Of(async x =>
    {
        await Task.Delay(1);
        return x;
    });

    [Params(1, 16, 64)] public int Workers { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        source = Enumerable.Range(0, Size.Of(Items)).ToArray();
        pyper = Peers.CSharpPipeline(1, Workers, Stage.DefaultCapacity, Wait);
        system = ActorSystem.Create("bench", "akka.loglevel = ERROR");
        materializer = system.Materializer();
    }

    [GlobalCleanup]
    public void Cleanup() => system.Terminate().Wait();

    [Benchmark(Baseline = true)]
    public Task<long> Channels() => Peers.Channels(source, 1, Workers, Stage.DefaultCapacity, Wait);

    [Benchmark]
    public Task<long> Pyper() => Peers.RunCSharp(pyper, source);

    [Benchmark]
    public Task<long> Dataflow() => Peers.Dataflow(source, 1, Workers, Stage.DefaultCapacity, Wait);

    [Benchmark]
    public Task<long> AkkaStreams() => Peers.Akka(materializer, source, 1, Workers, Wait);
}

/// <summary>
/// Scenario 3: one stage blocking in Thread.Sleep(1) per item. The FirstRun job measures single cold
/// runs (no parked Pyper threads), where thread-pool peers pay for thread injection; Steady is after warm-up.
/// </summary>
[SimpleJob(RunStrategy.ColdStart, launchCount: 3, warmupCount: 0, iterationCount: 1, id: "FirstRun")]
[SimpleJob(launchCount: 1, warmupCount: 1, iterationCount: 3, id: "Steady")]
public class BlockingIo
{
    public const int Items = 500;
    private int[] source = [];
    private Pyper.FSharp.Pipeline<int, int> pyper = null!;

    private static readonly Work Sleep = Work.Of(x =>
    {
        Thread.Sleep(1);
        return x;
    });

    [Params(1, 16, 64)] public int Workers { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        source = Enumerable.Range(0, Size.Of(Items)).ToArray();
        pyper = Peers.FSharpPipeline(1, Workers, Stage.DefaultCapacity, Sleep);
        // A first run starts its own threads: none parked by earlier benchmarks.
        DedicatedThreads.retireIdle();
    }

    [Benchmark(Baseline = true)]
    public Task<long> Channels() => Peers.Channels(source, 1, Workers, Stage.DefaultCapacity, Sleep);

    [Benchmark]
    public long Pyper() => Peers.RunFSharp(pyper, source);

    [Benchmark]
    public Task<long> Dataflow() => Peers.Dataflow(source, 1, Workers, Stage.DefaultCapacity, Sleep);
}

/// <summary>Scenario 4: a stage doing about 1 ms of arithmetic per item, on threads and in processes.</summary>
[SimpleJob(launchCount: 1, warmupCount: 2, iterationCount: 5, id: "Full")]
public class CpuBound
{
    public const int Items = 400;
    private int[] source = [];
    private Pyper.Pipeline<int, int> threads = null!;
    private Pyper.Pipeline<int, int> processes = null!;

    [Params(1, 2)] public int Workers { get; set; }

    /// <summary>About a millisecond of arithmetic whose result is used.</summary>
    public static int Crunch(int x)
    {
        long acc = x;
        for (var i = 0; i < 700_000; i++) acc = acc * 31 + i;
        return (int)(acc & 0xFF);
    }

    [GlobalSetup]
    public void Setup()
    {
        source = Enumerable.Range(0, Size.Of(Items)).ToArray();
        threads = Pyper.Pipeline.Start<int>().Map(Crunch, workers: Workers);
        processes = Pyper.Pipeline.Start<int>().Map(Crunch, workers: Workers, multiprocess: true);
    }

    [Benchmark(Baseline = true)]
    public long Sequential() => source.Sum(x => (long)Crunch(x));

    [Benchmark]
    public Task<long> PyperThreads() => Peers.RunCSharp(threads, source);

    /// <summary>Worker processes parked between runs (the default: each run after the first reuses them).</summary>
    [Benchmark]
    public Task<long> PyperProcesses() => Peers.RunCSharp(processes, source);

    /// <summary>A fresh worker process per worker and run (keep-alive 0): what a first run pays.</summary>
    [Benchmark]
    public async Task<long> PyperFreshProcesses()
    {
        AppContext.SetData("Pyper.WorkerKeepAliveMilliseconds", 0);
        try
        {
            return await Peers.RunCSharp(processes, source);
        }
        finally
        {
            AppContext.SetData("Pyper.WorkerKeepAliveMilliseconds", null);
        }
    }

    [Benchmark]
    public Task<long> Channels() => Peers.Channels(source, 1, Workers, Stage.DefaultCapacity, Work.Of(Crunch));
}

/// <summary>A small record crossing the process boundary.</summary>
public sealed record Reading(int Id, string Sensor, double Value);

/// <summary>Scenario 5: a trivial function on small records (JSON on the wire), and on ints (raw bytes),
/// in 2 worker processes. Mean is per item.</summary>
[SimpleJob(launchCount: 1, warmupCount: 2, iterationCount: 5, id: "Full")]
public class ProcessThroughput
{
    public const int Items = 100_000;
    private Reading[] source = [];
    private Pyper.Pipeline<Reading, Reading> pipeline = null!;
    private int[] ints = [];
    private Pyper.Pipeline<int, int> numbers = null!;

    public static Reading Calibrate(Reading r) => r with { Value = r.Value * 2 };

    /// <summary>The trivial int function of the <c>--loop-proc ints</c> probe.</summary>
    public static int Increment(int x) => x + 1;

    [GlobalSetup]
    public void Setup()
    {
        source = Enumerable.Range(0, Size.Of(Items)).Select(i => new Reading(i, "s" + (i % 10), i)).ToArray();
        pipeline = Pyper.Pipeline.Start<Reading>().Map(Calibrate, workers: 2, multiprocess: true);
        ints = Enumerable.Range(0, Size.Of(Items)).ToArray();
        numbers = Pyper.Pipeline.Start<int>().Map(Increment, workers: 2, multiprocess: true);
    }

    [Benchmark(OperationsPerInvoke = Items)]
    public async Task<double> PyperProcesses()
    {
        double sum = 0;
        await foreach (var r in pipeline.RunEach(source)) sum += r.Value;
        return sum;
    }

    [Benchmark(OperationsPerInvoke = Items)]
    public async Task<long> PyperProcessesInts()
    {
        long sum = 0;
        await foreach (var x in numbers.RunEach(ints)) sum += x;
        return sum;
    }
}

/// <summary>A MeterListener that sums every Pyper measurement and an ActivityListener that records
/// every Pyper activity: what an observed run pays (the <c>Observed</c> rows).</summary>
public sealed class Listeners : IDisposable
{
    private readonly System.Diagnostics.Metrics.MeterListener meters = new();
    private readonly System.Diagnostics.ActivityListener activities = new()
    {
        ShouldListenTo = s => s.Name == Pyper.Telemetry.ActivitySourceName,
        Sample = (ref System.Diagnostics.ActivityCreationOptions<System.Diagnostics.ActivityContext> _) =>
            System.Diagnostics.ActivitySamplingResult.AllDataAndRecorded,
    };
    private long sum;

    public Listeners()
    {
        meters.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == Pyper.Telemetry.MeterName) l.EnableMeasurementEvents(instrument);
        };
        meters.SetMeasurementEventCallback<long>((_, v, _, _) => Interlocked.Add(ref sum, v));
        meters.SetMeasurementEventCallback<int>((_, v, _, _) => Interlocked.Add(ref sum, v));
        meters.SetMeasurementEventCallback<double>((_, v, _, _) => Interlocked.Increment(ref sum));
        meters.Start();
        System.Diagnostics.ActivitySource.AddActivityListener(activities);
    }

    public void Dispose()
    {
        meters.Dispose();
        activities.Dispose();
    }
}
