// The host of Pyper's process executor. The parent starts it as `dotnet exec Pyper.Worker.dll
// --socket PATH --parent PID`; it loads Pyper.Core from its own folder and runs the worker loop
// there. Items travel over the socket; stdout and stderr stay free for the user's function.
// With `--nats URL --assemblies DIR` it is a worker of distributed stages instead: it loads
// Pyper.Distributed (and the NATS client) from its own folder or from DIR, and serves until stopped.
using System;
using System.IO;
using System.Reflection;
using System.Runtime.Loader;

var folder = AppContext.BaseDirectory;
var nats = Array.IndexOf(args, "--nats") >= 0;
var assembliesAt = Array.IndexOf(args, "--assemblies");
string[] folders = nats && assembliesAt >= 0 && assembliesAt + 1 < args.Length
    ? [folder, Path.GetFullPath(args[assembliesAt + 1])]
    : [folder];

string? Find(string file)
{
    foreach (var dir in folders)
    {
        var path = Path.Combine(dir, file);
        if (File.Exists(path)) return path;
    }
    return null;
}

AssemblyLoadContext.Default.Resolving += (context, name) =>
{
    var path = Find(name.Name + ".dll");
    return path is null ? null : context.LoadFromAssemblyPath(path);
};

var (assembly, type) = nats ? ("Pyper.Distributed.dll", "Pyper.Distributed.WorkerHost") : ("Pyper.Core.dll", "Pyper.ProcessHost");
var file = Find(assembly);
if (file is null)
{
    Console.Error.WriteLine($"Pyper worker: {assembly} is neither next to the worker host nor in the --assemblies folder.");
    return 2;
}

var core = AssemblyLoadContext.Default.LoadFromAssemblyPath(file);
var host = core.GetType(type, throwOnError: true)!;
var run = host.GetMethod("run", BindingFlags.Static | BindingFlags.Public | BindingFlags.NonPublic)!;
return (int)run.Invoke(null, [args])!;
