using System;
using System.Collections.Generic;
using System.Linq;
using System.Threading.RateLimiting;
using System.Threading.Tasks;
using Pyper.Distributed;
using static Pyper.CSharp.Tests.Check;

namespace Pyper.CSharp.Tests;

/// <summary>
/// Distributed stages from C#: <c>DistributedStage.Map</c> (with <see cref="Flow"/>'s <c>|</c>) and the
/// fluent <c>MapDistributed</c>. The F# distributed tests call <see cref="Check(NatsServer)"/> with a
/// server they started and workers serving it, and check that nothing is left behind.
/// </summary>
public static class DistributedFacadeTests
{
    private static async Task<List<T>> Collect<T>(IAsyncEnumerable<T> results)
    {
        var list = new List<T>();
        await foreach (var x in results) list.Add(x);
        return list;
    }

    private static IEnumerable<int> Upto(int n) => Enumerable.Range(0, n);

    private static int Square(int x) => x * x;

    private static int FailAtThree(int x) => x == 3 ? throw new InvalidOperationException("three") : x;

    /// <summary>Every C# check, against <paramref name="server"/>.</summary>
    public static async Task Check(NatsServer server)
    {
        // Fluent: the input type flows from the left, so the method group needs no type arguments.
        var fluent = Pipeline.Start<int>().Branch(Upto).MapDistributed(Square, server, workers: 2, ordered: true, name: "squares");
        Sequence(await Collect(fluent.Run(30)), Enumerable.Range(0, 30).Select(x => x * x), "fluent, ordered");
        Equal(fluent.Stages.Last().Executor, Executor.Distributed, "executor");
        Equal(fluent.Stages.Last().Name, "squares", "name");

        // A one-stage pipeline anchored on a flow with |, then a local stage.
        var piped = Flow.From(Enumerable.Range(1, 40)) | DistributedStage.Map<int, int>(Square, server, workers: 3) | Stage.Map((int x) => x + 1);
        Sequence((await Collect(piped)).OrderBy(x => x), Enumerable.Range(1, 40).Select(x => x * x + 1), "piped");

        // The first failure surfaces with its original type and the stage's name.
        var failing = Pipeline.Start<int>().MapDistributed(FailAtThree, server, name: "picky");
        var e = await Throws(() => Collect(failing.RunEach(Enumerable.Range(0, 10))));
        True(e is InvalidOperationException, $"InvalidOperationException, got {e}");
        Equal(e.Message, "three", "message");
        Equal(e.PipelineStage(), "picky", "stage");

        // Bad options are refused when the stage is built, naming the option.
        var bad = await Throws(() => Task.FromResult(DistributedStage.Map<int, int>(Square, server, workers: 0)));
        True(bad is ArgumentException, $"ArgumentException, got {bad}");
        var noServer = await Throws(() => Task.FromResult(Pipeline.Start<int>().MapDistributed(Square, null!)));
        True(noServer is ArgumentNullException, $"ArgumentNullException, got {noServer}");
    }

    private static int Scale(int k, int x) => k * x;

    private static int ScaleUnlessSeven(int k, int x) => x % 7 == 0 ? throw new InvalidOperationException("seven") : k * x;

    private static int UseMaker(Func<int> make, int x) => make() + x;

    private static int FailOnSevens(int x) => x % 7 == 0 ? throw new InvalidOperationException($"seven at {x}") : x * 2;

    /// <summary>The policy options (issue #17) from C#, against <paramref name="server"/>.</summary>
    public static async Task CheckPolicies(NatsServer server)
    {
        // Skip, counted; ordered keeps order past the skipped items.
        var counts = new FailureCounts();
        var skipping = Pipeline.Start<int>().MapDistributed(FailOnSevens, server, workers: 2, ordered: true, onError: ErrorPolicy.Skip, counts: counts);
        Sequence(await Collect(skipping.RunEach(Enumerable.Range(1, 30))), Enumerable.Range(1, 30).Where(x => x % 7 != 0).Select(x => x * 2), "skipped sevens, in order");
        Equal(counts.Skipped, 4L, "four skipped");

        // Retry then DeadLetter, with a rate limiter taken once per attempt.
        var dead = new List<(int, Exception, int)>();
        using var limiter = new ConcurrencyLimiter(new ConcurrencyLimiterOptions { PermitLimit = 1, QueueLimit = 100 });
        var policy = ErrorPolicy.Retry(1, TimeSpan.Zero, otherwise: ErrorPolicy.DeadLetter<int>((x, e, n) => { lock (dead) dead.Add((x, e, n)); }));
        var lettered = Flow.From(Enumerable.Range(1, 15)) | DistributedStage.Map<int, int>(FailOnSevens, server, workers: 2, onError: policy, rateLimit: limiter);
        Sequence((await Collect(lettered)).OrderBy(x => x), Enumerable.Range(1, 15).Where(x => x % 7 != 0).Select(x => x * 2), "the rest");
        Sequence(dead.Select(d => d.Item1).OrderBy(x => x), new[] { 7, 14 }, "dead-lettered");
        True(dead.All(d => d.Item2 is InvalidOperationException && d.Item3 == 2), "the rebuilt exception, two attempts");
        Equal(limiter.GetStatistics()!.TotalSuccessfulLeases, 17L, "a permit per attempt");

        // A bound argument, sent with the stage: static method, and the fluent form with a policy.
        var scaled = Flow.From(Enumerable.Range(1, 10)) | DistributedStage.MapBound<int, int, int>(Scale, 3, server, workers: 2);
        Sequence((await Collect(scaled)).OrderBy(x => x), Enumerable.Range(1, 10).Select(x => 3 * x), "bound");
        var boundSkipping = Pipeline.Start<int>().MapBoundDistributed<int, int, int, int>(ScaleUnlessSeven, 2, server, ordered: true, onError: ErrorPolicy.Skip);
        Sequence(await Collect(boundSkipping.RunEach(Enumerable.Range(1, 9))), new[] { 2, 4, 6, 8, 10, 12, 16, 18 }, "bound, sevens skipped");
        var badArg = await Throws(() => Task.FromResult(DistributedStage.MapBound<Func<int>, int, int>(UseMaker, () => 1, server)));
        True(badArg is ArgumentException { ParamName: "arg" }, $"an argument that cannot cross is refused, got {badArg}");

        // Bad policy options are refused when the stage is built, naming the stage and option.
        var badTimeout = await Throws(() => Task.FromResult(DistributedStage.Map<int, int>(FailOnSevens, server, name: "s", timeout: TimeSpan.Zero)));
        True(badTimeout is ArgumentOutOfRangeException { ParamName: "timeout" }, $"timeout refused, got {badTimeout}");
        True(badTimeout.Message.Contains("Stage 's' (map): timeout must be positive"), badTimeout.Message);
        var badSink = await Throws(() => Task.FromResult(Pipeline.Start<int>().MapDistributed(FailOnSevens, server, onError: ErrorPolicy.DeadLetter<string>((_, _, _) => { }))));
        True(badSink is ArgumentException { ParamName: "onError" }, $"a sink of another type refused, got {badSink}");
    }

    private static int[] MakeSlotState() => new int[1];

    private static int CountInSlot(int[] state, int x) => ++state[0] > 0 ? x * 3 : 0;

    private static void ForgetSlotState(int[] state) => state[0] = 0;

    /// DistributedStage.MapWithState: static methods run; a capturing init is refused, named.
    public static async Task CheckState(NatsServer server)
    {
        var tripled = Flow.From(Enumerable.Range(1, 20)) | DistributedStage.MapWithState<int[], int, int>(MakeSlotState, CountInSlot, server, ForgetSlotState, workers: 2);
        Sequence((await Collect(tripled)).OrderBy(x => x), Enumerable.Range(1, 20).Select(x => 3 * x), "with state");
        var size = 2;
        var capturing = await Throws(() => Task.FromResult(DistributedStage.MapWithState<int[], int, int>(() => new int[size], CountInSlot, server, name: "c")));
        True(capturing is ArgumentException { ParamName: "init" } && capturing.Message.Contains("Stage 'c' (map)"), $"a capturing init is refused, got {capturing}");
    }
}
