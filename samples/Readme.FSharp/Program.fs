/// Runs Pyper's README example (Example.fs) as a compiled program: `dotnet fsi build.fsx demo`.
module Readme.Program

[<EntryPoint>]
let main _ =
    Readme.Example.run ()
    0
