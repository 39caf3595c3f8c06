using System;
using System.Collections.Generic;
using System.Linq;
using System.Threading.Tasks;
using Expecto;
using static Pyper.CSharp.Tests.Check;

namespace Pyper.CSharp.Tests;

/// <summary>A class with a public field: it must reach the worker with its value.</summary>
public sealed class FieldItem
{
    /// <summary>The value.</summary>
    public int X;
}

/// <summary>A get-only property with no constructor parameter: its value could not come back.</summary>
public sealed class Frozen
{
    /// <summary>Set once, never by a deserializer.</summary>
    public int Id { get; } = 5;
}

/// <summary>Process stages from C#: value tuples, fields, generic methods and lambdas in generic methods.</summary>
public static class ProcessHardeningTests
{
    private static async Task<List<T>> Collect<T>(IAsyncEnumerable<T> results)
    {
        var list = new List<T>();
        await foreach (var x in results) list.Add(x);
        return list;
    }

    private static int Sum((int A, int B) p) => p.A + p.B;

    private static (int, int) Swap((int A, int B) p) => (p.B, p.A);

    private static FieldItem Bump(FieldItem f) => new() { X = f.X + 1 };

    private static T Same<T>(T x) => x;

    private static int Id(Frozen f) => f.Id;

    private static Pipeline<int, string> Describe<T>() =>
        Stage.Map((int x) => typeof(T).Name + x, multiprocess: true);

    /// <summary>All tests of process stages built from C#.</summary>
    [Tests]
    public static Test All => Expecto.CSharp.Runner.TestList("C# process hardening", new[]
    {
        Case("value tuples cross both ways", async () =>
        {
            Sequence(await Collect(Stage.Map<(int, int), int>(Sum, multiprocess: true).Run((1, 2))), new[] { 3 }, "1 + 2");
            Sequence(await Collect(Stage.Map<(int, int), (int, int)>(Swap, multiprocess: true).Run((1, 2))), new[] { (2, 1) }, "swapped");
        }),

        Case("public fields cross both ways", async () =>
        {
            var back = await Collect(Stage.Map<FieldItem, FieldItem>(Bump, multiprocess: true).Run(new FieldItem { X = 41 }));
            Equal(back.Single().X, 42, "X");
        }),

        Case("a generic method is closed over the stage's types", async () =>
        {
            Sequence(await Collect(Stage.Map<int, int>(Same, multiprocess: true).RunEach(new[] { 1, 2, 3 })), new[] { 1, 2, 3 }, "ints");
            Sequence(await Collect(Stage.Map<string, string>(Same, multiprocess: true).Run("a")), new[] { "a" }, "strings");
        }),

        Case("a lambda in a generic method runs in a worker", async () =>
        {
            Sequence(await Collect(Describe<Guid>().Run(7)), new[] { "Guid7" }, "closed over Guid");
        }),

        Case("a type whose value could not come back is refused when built", () =>
        {
            try
            {
                Stage.Map<Frozen, int>(Id, multiprocess: true, name: "frozen");
                throw new AssertException("expected an ArgumentException");
            }
            catch (ArgumentException e)
            {
                Equal(e.ParamName, "f", "names the function");
                True(e.Message.Contains("Stage 'frozen'") && e.Message.Contains("Frozen") && e.Message.Contains("Id"), e.Message);
            }
        }),
    });
}
