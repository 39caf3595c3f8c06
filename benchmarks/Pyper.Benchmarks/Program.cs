// Pyper's benchmarks, side by side with the peers a .NET user would pick instead.
//   dotnet fsi build.fsx bench [BenchmarkDotNet arguments]   the full run (all scenarios)
//   ... -- --quick                                              a smoke run: tiny sizes, one iteration
//   dotnet fsi build.fsx bench --filter '*Distributed*'       only the distributed executor's rows (and the
//                                                              process executor's beside them; needs nats-server)
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Exporters.Csv;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using Pyper.Benchmarks;

// One scenario in a loop (dotnet fsi build.fsx profile runs the first under dotnet-trace):
//   --loop <F#|C#|Dataflow|Channels|ChannelsChunked> <workers> <seconds>   3 trivial stages over 1,000,000 ints
//   --loop-cpu <threads|processes|Channels> <items> <workers> <seconds>   scenario 4's CPU stage
//   --loop-proc <records|ints> <items> <seconds>   scenario 5: items/s and the parent's CPU per item
//   --loop-first <threads|async|Channels> <seconds>   the first result of a one-item, 3-stage run
//   --loop-fail <runs>   how soon a worker's failure reaches the consumer: processes and threads
//   --loop-first distributed <seconds>   the first result of a one-item run through one distributed stage
if (args is ["--loop-fail", var failRuns])
    return Fail.Loop(int.Parse(failRuns));
if (args is ["--loop-first", var firstWho, var firstSeconds])
    return Loop.First(firstWho, TimeSpan.FromSeconds(int.Parse(firstSeconds)));
if (args is ["--loop", var who, var workers, var seconds])
    return Loop.Overhead(who, int.Parse(workers), TimeSpan.FromSeconds(int.Parse(seconds)));
if (args is ["--loop-proc", var what, var procItems, var procSeconds])
    return Loop.Processes(what, int.Parse(procItems), TimeSpan.FromSeconds(int.Parse(procSeconds)));
if (args is ["--loop-cpu", var system, var items, var cpuWorkers, var cpuSeconds])
    return Loop.Cpu(system, int.Parse(items), int.Parse(cpuWorkers), TimeSpan.FromSeconds(int.Parse(cpuSeconds)));

var quick = args.Contains("--quick");
Size.Quick = quick;
var rest = args.Where(a => a != "--quick").ToArray();

// In-process: the benchmark project restores through Paket, which BenchmarkDotNet's generated
// projects would not. Each class names its own job (counts set on this global job would override
// the classes' own); the global job only adds the toolchain.
var job = quick
    ? Job.Dry.WithToolchain(InProcessEmitToolchain.Instance)
    : Job.Default.WithToolchain(InProcessEmitToolchain.Instance);

var config = DefaultConfig.Instance
    .AddJob(job.AsDefault())
    .AddExporter(new CsvExporter(CsvSeparator.Semicolon)) // numbers contain commas; build.fsx charts this
    .WithOptions(ConfigOptions.DisableOptimizationsValidator);

// The smoke run ignores the classes' own jobs: one tiny iteration each, nothing more.
if (quick)
    config = config.WithUnionRule(ConfigUnionRule.AlwaysUseGlobal);

var summaries = BenchmarkSwitcher.FromAssembly(typeof(Overhead).Assembly)
    .Run(rest.Length == 0 ? ["--filter", "*"] : rest, config);

var failed = summaries.Any(s => s.HasCriticalValidationErrors || s.Reports.Any(r => !r.Success));
Console.WriteLine(failed ? "bench: some benchmarks failed" : "bench: all benchmarks ran");
return failed ? 1 : 0;
