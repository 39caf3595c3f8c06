// The host of Pyper's process executor. The parent starts it as `dotnet exec Pyper.Worker.dll
// --socket PATH --parent PID`; it loads Pyper.Core from its own folder and runs the worker loop
// there. Items travel over the socket; stdout and stderr stay free for the user's function.
using System;
using System.IO;
using System.Reflection;
using System.Runtime.Loader;

var folder = AppContext.BaseDirectory;
AssemblyLoadContext.Default.Resolving += (context, name) =>
{
    var path = Path.Combine(folder, name.Name + ".dll");
    return File.Exists(path) ? context.LoadFromAssemblyPath(path) : null;
};

var core = AssemblyLoadContext.Default.LoadFromAssemblyPath(Path.Combine(folder, "Pyper.Core.dll"));
var host = core.GetType("Pyper.ProcessHost", throwOnError: true)!;
var run = host.GetMethod("run", BindingFlags.Static | BindingFlags.Public | BindingFlags.NonPublic)!;
return (int)run.Invoke(null, [args])!;
