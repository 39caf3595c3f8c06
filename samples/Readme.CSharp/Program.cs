// Pyper's README example in C#: 20 items through an async stage (1 s, 20 workers), a blocking
// stage (1 s, 20 workers) and a CPU-heavy stage (20 worker processes) in about 2 s.
using System.Diagnostics;
using Pyper;

var pipeline = Pipeline.Start<int>()
    .Branch(GetData)
    .Map(Step1, workers: 20)
    .Map(Step2, workers: 20)
    .Map(Step3, workers: 20, multiprocess: true);

var clock = Stopwatch.StartNew();
var total = 0;
await foreach (var output in pipeline.Run(20))
    total += output;

Console.WriteLine($"Total: {total}");
Console.WriteLine($"Elapsed: {clock.Elapsed.TotalSeconds:F2} s");

static IEnumerable<int> GetData(int limit)
{
    for (var i = 0; i < limit; i++)
        yield return i;
}

static async Task<int> Step1(int data)
{
    await Task.Delay(1000);
    Console.WriteLine($"Finished async wait {data}");
    return data;
}

static int Step2(int data)
{
    Thread.Sleep(1000);
    Console.WriteLine($"Finished sync wait {data}");
    return data;
}

// Heavy computation whose result is used, so the JIT cannot drop the loop. It runs in worker
// processes: a static method of a compiled assembly, which a new process can load.
static int Step3(int data)
{
    long acc = 0;
    for (long i = 0; i < 10_000_000; i++)
        acc += i * i;
    Console.WriteLine($"Finished heavy computation {data} (checksum {acc % 1000})");
    return data;
}
