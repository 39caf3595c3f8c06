using System;
using System.Collections.Generic;
using System.Linq;
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
}
