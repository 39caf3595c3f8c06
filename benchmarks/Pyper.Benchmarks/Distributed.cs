using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using BenchmarkDotNet.Attributes;
using Pyper.Distributed;

namespace Pyper.Benchmarks;

/// <summary>
/// A nats-server with JetStream (a free loopback port, a temporary storage folder) and worker host
/// processes serving this assembly's functions, for the distributed rows. Without nats-server the
/// distributed rows print one line and measure nothing.
/// </summary>
public sealed class NatsCluster : IDisposable
{
    private static readonly string? ServerPath =
        new[] { "/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server" }.FirstOrDefault(File.Exists);

    private readonly Process? server;
    private readonly List<Process> workers = [];
    private readonly DirectoryInfo? store;

    /// <summary>The server, or null when nats-server is not installed.</summary>
    public NatsServer? Server { get; }

    /// <summary>Starts the server and <paramref name="workerProcesses"/> worker hosts, each running one batch at a time.</summary>
    public NatsCluster(int workerProcesses)
    {
        if (ServerPath is null)
        {
            Console.WriteLine("distributed benchmarks skipped: nats-server is not installed (Debian/Ubuntu: apt-get install -y nats-server)");
            return;
        }

        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        store = Directory.CreateTempSubdirectory("pyper-bench-nats-");
        server = Start(ServerPath, ["-js", "-a", "127.0.0.1", "-p", port.ToString(), "-sd", store.FullName], null);
        var url = $"nats://127.0.0.1:{port}";
        var deadline = Stopwatch.StartNew();
        while (!Accepts(port))
        {
            if (deadline.Elapsed > TimeSpan.FromSeconds(20)) throw new TimeoutException($"nats-server did not start on {url}");
            Thread.Sleep(10);
        }

        // The worker host comes with the core package into this program's folder; it loads this
        // assembly's functions from the same folder.
        var bin = AppContext.BaseDirectory;
        var ready = new List<Task>();
        for (var i = 0; i < workerProcesses; i++)
        {
            var signal = new TaskCompletionSource();
            ready.Add(signal.Task);
            workers.Add(Start(
                Dotnet(),
                ["exec", Path.Combine(bin, "Pyper.Worker.dll"), "--nats", url, "--assemblies", bin, "--parallel", "1",
                 "--parent", Environment.ProcessId.ToString()],
                line => { if (line.Contains(": ready,")) signal.TrySetResult(); }));
        }

        if (!Task.WhenAll(ready).Wait(TimeSpan.FromSeconds(60)))
            throw new TimeoutException("the distributed benchmark's worker hosts did not get ready");
        Server = new NatsServer(url);
    }

    private static string Dotnet()
    {
        var root = Path.GetFullPath(Path.Combine(System.Runtime.InteropServices.RuntimeEnvironment.GetRuntimeDirectory(), "..", "..", ".."));
        var candidate = Path.Combine(root, "dotnet");
        return File.Exists(candidate) ? candidate : "dotnet";
    }

    private static bool Accepts(int port)
    {
        try
        {
            using var c = new TcpClient();
            c.Connect(IPAddress.Loopback, port);
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }

    private static Process Start(string file, string[] args, Action<string>? onError)
    {
        var psi = new ProcessStartInfo(file) { UseShellExecute = false, RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        var p = new Process { StartInfo = psi };
        p.ErrorDataReceived += (_, e) => { if (e.Data is { } line) onError?.Invoke(line); };
        p.OutputDataReceived += (_, _) => { };
        p.Start();
        p.BeginErrorReadLine();
        p.BeginOutputReadLine();
        return p;
    }

    /// <summary>Stops the workers and the server and deletes the storage.</summary>
    public void Dispose()
    {
        foreach (var p in workers.Append(server))
        {
            if (p is null) continue;
            if (!p.HasExited) p.Kill(true);
            p.WaitForExit();
            p.Dispose();
        }

        try { store?.Delete(true); } catch (IOException) { }
    }
}

/// <summary>
/// The distributed executor (NATS JetStream, 2 worker processes, server and parent on this machine)
/// next to the process executor (2 worker processes): a trivial function on ints. Mean is per item.
/// Target: 50,000 items/s or more (20 µs per item).
/// </summary>
[SimpleJob(launchCount: 1, warmupCount: 2, iterationCount: 5, id: "Full")]
public class DistributedThroughput
{
    public const int Items = 100_000;
    private int[] source = [];
    private NatsCluster cluster = null!;
    private Pyper.Pipeline<int, int> distributed = null!;
    private Pyper.Pipeline<int, int> processes = null!;

    /// <summary>The trivial function, a static method the worker hosts load from this assembly.</summary>
    public static int Inc(int x) => x + 1;

    [GlobalSetup]
    public void Setup()
    {
        source = Enumerable.Range(0, Size.Of(Items)).ToArray();
        cluster = new NatsCluster(2);
        processes = Pyper.Pipeline.Start<int>().Map(Inc, workers: 2, multiprocess: true);
        if (cluster.Server is { } server)
            distributed = Pyper.Pipeline.Start<int>().MapDistributed(Inc, server, workers: 4);
    }

    [GlobalCleanup]
    public void Cleanup() => cluster.Dispose();

    [Benchmark(Baseline = true, OperationsPerInvoke = Items)]
    public Task<long> PyperProcesses() => Peers.RunCSharp(processes, source);

    [Benchmark(OperationsPerInvoke = Items)]
    public Task<long> PyperDistributed() => distributed is null ? Task.FromResult(0L) : Peers.RunCSharp(distributed, source);
}

/// <summary>
/// A CPU-bound stage (40 items of about 9 ms each) with 1 and 2 workers: in-flight batches for the
/// distributed executor (2 worker processes serve it), worker processes for the process executor.
/// Target: 2 workers at least 1.7 times as fast as 1.
/// </summary>
[SimpleJob(launchCount: 1, warmupCount: 2, iterationCount: 5, id: "Full")]
public class DistributedCpu
{
    public const int Items = 40;
    private int[] source = [];
    private NatsCluster cluster = null!;
    private Pyper.Pipeline<int, int> distributed = null!;
    private Pyper.Pipeline<int, int> processes = null!;

    [Params(1, 2)] public int Workers { get; set; }

    /// <summary>About 9 ms of arithmetic whose result is used.</summary>
    public static int Crunch9(int x)
    {
        long acc = x;
        for (var i = 0; i < 6_300_000; i++) acc = acc * 31 + i;
        return (int)(acc & 0xFF);
    }

    [GlobalSetup]
    public void Setup()
    {
        // The smoke run keeps 10 items (Size.Of's floor).
        source = Enumerable.Range(0, Size.Of(Items)).ToArray();
        cluster = new NatsCluster(2);
        processes = Pyper.Pipeline.Start<int>().Map(Crunch9, workers: Workers, multiprocess: true);
        if (cluster.Server is { } server)
            distributed = Pyper.Pipeline.Start<int>().MapDistributed(Crunch9, server, workers: Workers);
    }

    [GlobalCleanup]
    public void Cleanup() => cluster.Dispose();

    [Benchmark(Baseline = true)]
    public Task<long> PyperProcesses() => Peers.RunCSharp(processes, source);

    [Benchmark]
    public Task<long> PyperDistributed() => distributed is null ? Task.FromResult(0L) : Peers.RunCSharp(distributed, source);
}

/// <summary>
/// Latency: the first (and only) result of a one-item run through one stage, workers already
/// connected (the distributed run sets up its queues on the server each time). One run per
/// iteration: the clock stops when the result is in hand; the run's clean-up on the server (and
/// the process stage's disposal) runs in the iteration's clean-up, outside the measurement.
/// Target: under 20 ms.
/// </summary>
[SimpleJob(launchCount: 1, warmupCount: 5, iterationCount: 30, invocationCount: 1, id: "Full")]
public class DistributedFirstResult
{
    private static readonly int[] One = [1];
    private NatsCluster cluster = null!;
    private Pyper.Pipeline<int, int> distributed = null!;
    private Pyper.Pipeline<int, int> processes = null!;
    private IAsyncEnumerator<int>? open;

    [GlobalSetup]
    public void Setup()
    {
        cluster = new NatsCluster(2);
        processes = Pyper.Pipeline.Start<int>().Map(DistributedThroughput.Inc, multiprocess: true);
        if (cluster.Server is { } server)
            distributed = Pyper.Pipeline.Start<int>().MapDistributed(DistributedThroughput.Inc, server);
    }

    [GlobalCleanup]
    public void Cleanup() => cluster.Dispose();

    /// <summary>Ends the measured run: its last MoveNext and its disposal.</summary>
    [IterationCleanup]
    public void EndRun()
    {
        if (open is null) return;
        while (open.MoveNextAsync().AsTask().Result) { }
        open.DisposeAsync().AsTask().Wait();
        open = null;
    }

    private async Task<int> First(Pyper.Pipeline<int, int> pipeline)
    {
        open = pipeline.RunEach(One).GetAsyncEnumerator();
        if (!await open.MoveNextAsync()) throw new InvalidOperationException("no result");
        return open.Current;
    }

    [Benchmark(Baseline = true)]
    public Task<int> PyperProcesses() => First(processes);

    [Benchmark]
    public Task<int> PyperDistributed() => distributed is null ? Task.FromResult(0) : First(distributed);
}

/// <summary>The first result of a run, timed apart from the whole run.</summary>
public static class TimedRun
{
    /// <summary>Runs <paramref name="pipeline"/> over <paramref name="source"/>: the sum of the results and
    /// the time from the start of the run to its first result.</summary>
    public static async Task<(long Sum, TimeSpan First)> Run(Pyper.Pipeline<int, int> pipeline, int[] source)
    {
        var clock = Stopwatch.StartNew();
        var first = TimeSpan.Zero;
        long sum = 0;
        await foreach (var x in pipeline.RunEach(source))
        {
            if (first == TimeSpan.Zero) first = clock.Elapsed;
            sum += x;
        }

        return (sum, first);
    }
}
