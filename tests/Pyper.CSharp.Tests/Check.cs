using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Threading;
using System.Threading.Tasks;
using Expecto;

namespace Pyper.CSharp.Tests;

/// <summary>Small assertions and the leak check, for C# tests run by Expecto.</summary>
internal static class Check
{
    internal static readonly TimeSpan HangGuard = TimeSpan.FromSeconds(20);

    internal static void Equal<T>(T actual, T expected, string what)
    {
        if (!EqualityComparer<T>.Default.Equals(actual, expected))
            throw new AssertException($"{what}: expected {expected}, got {actual}");
    }

    internal static void Sequence<T>(IEnumerable<T> actual, IEnumerable<T> expected, string what)
    {
        var a = actual.ToList();
        var e = expected.ToList();
        if (!a.SequenceEqual(e))
            throw new AssertException($"{what}: expected [{string.Join(", ", e)}], got [{string.Join(", ", a)}]");
    }

    internal static void True(bool condition, string what)
    {
        if (!condition) throw new AssertException(what);
    }

    /// <summary>Runs <paramref name="body"/> and returns the exception it throws.</summary>
    internal static async Task<Exception> Throws(Func<Task> body)
    {
        try
        {
            await body().WaitAsync(HangGuard);
        }
        catch (TimeoutException)
        {
            throw new AssertException("hang: the run did not finish within the hang guard");
        }
        catch (Exception e)
        {
            return e;
        }

        throw new AssertException("expected an exception");
    }

    /// <summary>No worker thread or task of any run is alive; no Pyper OS thread is left (polled, with a hang guard).</summary>
    internal static void NoLeaks()
    {
        Equal(Live.threadCount(), 0, "live worker threads");
        Equal(Live.taskCount(), 0, "live async workers");
        Equal(Live.processCount(), 0, "live worker processes");
        foreach (var name in PyperOsThreads())
            Equal(name, DedicatedThreads.IdleName, "every Pyper thread left has parked");
        DedicatedThreads.retireIdle();
        WorkerPool.retireIdle();
        var gone = SpinWait.SpinUntil(() => PyperOsThreads().Length == 0, HangGuard);
        True(gone, $"Pyper OS threads left: {string.Join(", ", PyperOsThreads())}");
    }

    /// <summary>The names of this process's OS threads named "Pyper/…". Without Linux's /proc the
    /// leak check would see no thread and pass whatever leaked: it fails instead.</summary>
    private static string[] PyperOsThreads() =>
        Directory.Exists("/proc/self/task")
            ? Directory.GetDirectories("/proc/self/task")
                .Select(d => { try { return File.ReadAllText(Path.Combine(d, "comm")).Trim(); } catch (IOException) { return ""; } })
                .Where(n => n.StartsWith("Pyper/", StringComparison.Ordinal))
                .ToArray()
            : throw new AssertException("/proc/self/task is missing: the leak check needs Linux's /proc to see threads");

    /// <summary>A test case that checks for leaks after its (async) body.</summary>
    internal static Test Case(string name, Func<Task> body) =>
        Expecto.CSharp.Runner.TestCase(name, async () =>
        {
            await body().WaitAsync(HangGuard);
            NoLeaks();
        });

    /// <summary>A test case that checks for leaks after its (blocking) body.</summary>
    internal static Test Case(string name, Action body) =>
        Case(name, () => Task.Run(body));
}
