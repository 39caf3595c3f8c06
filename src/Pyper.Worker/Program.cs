// The host of Pyper's process executor. The parent starts it as `dotnet exec Pyper.Worker.dll
// --socket PATH --parent PID [--probe DIR]...`; it loads Pyper.Core from its own folder or, when
// it is not there (the host in a NuGet package's tools folder, started from a script), from the
// folders the parent loaded Pyper.Core and its dependencies from (`--probe`), and runs the worker
// loop there. Items travel over the socket; stdout and stderr stay free for the user's function.
// With `--nats URL --assemblies DIR` it is a worker of distributed stages instead: it loads
// Pyper.Distributed (and the NATS client) from its own folder or from DIR, and serves until stopped.
using System;
using System.Collections.Generic;
using System.IO;
using System.Reflection;
using System.Runtime.Loader;

var folders = new List<string> { AppContext.BaseDirectory };
var nats = Array.IndexOf(args, "--nats") >= 0;
for (var i = 0; i + 1 < args.Length; i++)
    if (args[i] == "--probe" || (nats && args[i] == "--assemblies"))
        folders.Add(Path.GetFullPath(args[i + 1]));

string? Find(string file)
{
    foreach (var folder in folders)
    {
        var path = Path.Combine(folder, file);
        if (File.Exists(path))
            return path;
    }
    return null;
}

AssemblyLoadContext.Default.Resolving += (context, name) =>
    Find(name.Name + ".dll") is { } path ? context.LoadFromAssemblyPath(path) : null;

var (assembly, type) = nats ? ("Pyper.Distributed.dll", "Pyper.Distributed.WorkerHost") : ("Pyper.Core.dll", "Pyper.ProcessHost");
var file = Find(assembly);
if (file is null)
{
    Console.Error.WriteLine($"Pyper.Worker: {assembly} is in none of {string.Join(", ", folders)}.");
    return 2;
}

var loaded = AssemblyLoadContext.Default.LoadFromAssemblyPath(file);
var host = loaded.GetType(type, throwOnError: true)!;
var run = host.GetMethod("run", BindingFlags.Static | BindingFlags.Public | BindingFlags.NonPublic)!;
return (int)run.Invoke(null, [args])!;
