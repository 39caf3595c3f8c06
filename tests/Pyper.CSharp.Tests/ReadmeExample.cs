using System.Collections.Generic;
using System.Linq;
using System.Threading;
using System.Threading.Tasks;

namespace Pyper.CSharp.Tests;

/// <summary>
/// The README example's shape, compiled: method groups and no type arguments on any stage.
/// (The sleeps are left out; the README sample itself runs in samples/Readme.CSharp.)
/// </summary>
internal static class ReadmeExample
{
    internal static IEnumerable<int> GetData(int limit) => Enumerable.Range(0, limit);

    internal static async Task<int> Step1(int data)
    {
        await Task.Yield();
        return data;
    }

    internal static int Step2(int data) => data;

    internal static int Step3(int data)
    {
        long acc = 0;
        for (long i = 0; i < 1000; i++) acc += i * i;
        return acc >= 0 ? data : -data;
    }

    internal static readonly Pipeline<int, int> Pipeline =
        Pyper.Pipeline.Start<int>()
            .Branch(GetData)
            .Map(Step1, workers: 20)
            .Map(Step2, workers: 20)
            .Map(Step3, workers: 20);
}
