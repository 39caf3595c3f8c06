// Pyper's README example as an F# script. Build first (dotnet fsi build.fsx build), then:
//   dotnet fsi samples/readme.fsx
#r "../src/Pyper.Core/bin/Release/net10.0/Pyper.Core.dll"
// The stages' rateLimit option names a type of this package: FSI wants it referenced too (a
// script that takes the library with #r "nuget: Pyper" gets it with the package).
#r "../src/Pyper.Core/bin/Release/net10.0/System.Threading.RateLimiting.dll"
// The CPU-heavy step runs in worker processes, which cannot load code defined in FSI: it comes
// from a compiled assembly.
#r "Readme.Steps/bin/Release/net10.0/Readme.Steps.dll"
// The example itself is the compiled program's source, loaded as a script.
#load "Readme.FSharp/Example.fs"

Readme.Example.run ()
