using System.Threading.Channels;
using System.Threading.Tasks.Dataflow;
using Akka;
using Akka.Streams;
using Akka.Streams.Dsl;
using Microsoft.FSharp.Core;

namespace Pyper.Benchmarks;

/// <summary>A stage's work, blocking or async: each peer runs it the idiomatic way.</summary>
public sealed record Work(Func<int, int>? Blocking, Func<int, Task<int>>? Async)
{
    public static Work Of(Func<int, int> f) => new(f, null);
    public static Work Of(Func<int, Task<int>> f) => new(null, f);
}

/// <summary>The same pipeline (stages × work, each stage with n workers) in each system, summing the results.</summary>
public static class Peers
{
    /// <summary>Hand-written: one bounded channel and n reader tasks per stage, TryRead/TryWrite fast paths.</summary>
    public static async Task<long> Channels(int[] source, int stages, int workers, int capacity, Work work)
    {
        var options = new BoundedChannelOptions(capacity) { SingleReader = workers == 1, FullMode = BoundedChannelFullMode.Wait };
        var channels = Enumerable.Range(0, stages + 1).Select(_ => Channel.CreateBounded<int>(options)).ToArray();
        var running = new List<Task>
        {
            Task.Run(async () =>
            {
                var w = channels[0].Writer;
                foreach (var x in source)
                    if (!w.TryWrite(x)) await w.WriteAsync(x);
                w.Complete();
            }),
        };
        for (var s = 0; s < stages; s++)
        {
            var input = channels[s].Reader;
            var output = channels[s + 1].Writer;
            var readers = Enumerable.Range(0, workers).Select(_ => Task.Run(async () =>
            {
                while (await input.WaitToReadAsync())
                    while (input.TryRead(out var x))
                    {
                        var y = work.Blocking is { } f ? f(x) : await work.Async!(x);
                        if (!output.TryWrite(y)) await output.WriteAsync(y);
                    }
            })).ToArray();
            running.Add(Task.WhenAll(readers).ContinueWith(_ => output.Complete(), TaskScheduler.Default));
        }

        long sum = 0;
        var last = channels[stages].Reader;
        while (await last.WaitToReadAsync())
            while (last.TryRead(out var x)) sum += x;
        await Task.WhenAll(running);
        return sum;
    }

    /// <summary>
    /// Hand-written and batched, the limit of batched hand-off: bounded channels of 256-item chunks,
    /// n reader tasks per stage, TryRead/TryWrite fast paths, chunks rented from the shared ArrayPool
    /// and returned once mapped (no allocation per chunk). Capacity counts items, as in the others.
    /// </summary>
    public static async Task<long> ChannelsChunked(int[] source, int stages, int workers, int capacity, Func<int, int> f)
    {
        const int Chunk = 256;
        var pool = System.Buffers.ArrayPool<int>.Shared;
        var options = new BoundedChannelOptions(Math.Max(1, capacity / Chunk)) { SingleReader = workers == 1, FullMode = BoundedChannelFullMode.Wait };
        var channels = Enumerable.Range(0, stages + 1).Select(_ => Channel.CreateBounded<(int[] Items, int Count)>(options)).ToArray();
        var running = new List<Task>
        {
            Task.Run(async () =>
            {
                var w = channels[0].Writer;
                for (var i = 0; i < source.Length; i += Chunk)
                {
                    var n = Math.Min(Chunk, source.Length - i);
                    var chunk = pool.Rent(Chunk);
                    source.AsSpan(i, n).CopyTo(chunk);
                    if (!w.TryWrite((chunk, n))) await w.WriteAsync((chunk, n));
                }
                w.Complete();
            }),
        };
        for (var s = 0; s < stages; s++)
        {
            var input = channels[s].Reader;
            var output = channels[s + 1].Writer;
            var readers = Enumerable.Range(0, workers).Select(_ => Task.Run(async () =>
            {
                while (await input.WaitToReadAsync())
                    while (input.TryRead(out var c))
                    {
                        var next = pool.Rent(Chunk);
                        for (var i = 0; i < c.Count; i++) next[i] = f(c.Items[i]);
                        pool.Return(c.Items);
                        if (!output.TryWrite((next, c.Count))) await output.WriteAsync((next, c.Count));
                    }
            })).ToArray();
            running.Add(Task.WhenAll(readers).ContinueWith(_ => output.Complete(), TaskScheduler.Default));
        }

        long sum = 0;
        var last = channels[stages].Reader;
        while (await last.WaitToReadAsync())
            while (last.TryRead(out var c))
            {
                for (var i = 0; i < c.Count; i++) sum += c.Items[i];
                pool.Return(c.Items);
            }
        await Task.WhenAll(running);
        return sum;
    }

    /// <summary>TPL Dataflow: a TransformBlock chain with the same bounded capacity, PropagateCompletion.</summary>
    public static async Task<long> Dataflow(int[] source, int stages, int workers, int capacity, Work work)
    {
        var options = new ExecutionDataflowBlockOptions { BoundedCapacity = capacity, MaxDegreeOfParallelism = workers, EnsureOrdered = false };
        var link = new DataflowLinkOptions { PropagateCompletion = true };
        TransformBlock<int, int> Block() => work.Blocking is { } f ? new(f, options) : new(work.Async!, options);
        var first = Block();
        var last = first;
        for (var s = 1; s < stages; s++)
        {
            var next = Block();
            last.LinkTo(next, link);
            last = next;
        }

        long sum = 0;
        var sink = new ActionBlock<int>(x => sum += x, new ExecutionDataflowBlockOptions { BoundedCapacity = capacity });
        last.LinkTo(sink, link);
        foreach (var x in source) await first.SendAsync(x);
        first.Complete();
        await sink.Completion;
        return sum;
    }

    /// <summary>Akka.Streams: Select (fused) with one worker, SelectAsyncUnordered with more, blocking work on Task.Run.</summary>
    public static Task<long> Akka(IMaterializer materializer, int[] source, int stages, int workers, Work work)
    {
        var flow = Source.From(source);
        for (var s = 0; s < stages; s++)
            flow = work switch
            {
                { Blocking: { } f } when workers == 1 => flow.Select(f),
                { Blocking: { } f } => flow.SelectAsyncUnordered(workers, x => Task.Run(() => f(x))),
                _ => flow.SelectAsyncUnordered(workers, work.Async!),
            };
        return flow.RunAggregate(0L, (acc, x) => acc + x, materializer);
    }

    /// <summary>Pyper's C# facade: a fluent pipeline consumed with await foreach.</summary>
    public static Pyper.Pipeline<int, int> CSharpPipeline(int stages, int workers, int capacity, Work work)
    {
        var p = Pyper.Pipeline.Start<int>();
        for (var s = 0; s < stages; s++)
            p = work.Blocking is { } f ? p.Map(f, workers: workers, capacity: capacity) : p.Map(work.Async!, workers: workers, capacity: capacity);
        return p;
    }

    public static async Task<long> RunCSharp(Pyper.Pipeline<int, int> pipeline, int[] source)
    {
        long sum = 0;
        await foreach (var x in pipeline.RunEach(source)) sum += x;
        return sum;
    }

    /// <summary>Pyper's F# API (Stage.map / mapTask, >=>), consumed as a blocking sequence.</summary>
    public static Pyper.FSharp.Pipeline<int, int> FSharpPipeline(int stages, int workers, int capacity, Work work)
    {
        var some = FSharpOption<int>.Some;
        var p = Pyper.FSharp.Pipeline.id<int>();
        for (var s = 0; s < stages; s++)
        {
            var stage = work.Blocking is { } f
                ? Pyper.FSharp.Stage.map(FuncConvert.FromFunc(f), some(workers), some(capacity), null, null, null, null, null, null, null)
                : Pyper.FSharp.Stage.mapTask(FuncConvert.FromFunc(work.Async!), some(workers), some(capacity), null, null, null, null, null, null);
            p = Pyper.FSharp.Pipeline.compose(p, stage);
        }
        return p;
    }

    public static long RunFSharp(Pyper.FSharp.Pipeline<int, int> pipeline, int[] source)
    {
        long sum = 0;
        foreach (var x in Pyper.FSharp.Pipeline.toSeqFrom(source, pipeline)) sum += x;
        return sum;
    }
}
