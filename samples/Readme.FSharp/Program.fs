/// Runs Pyper's README example (Example.fs) as a compiled program: `dotnet fsi build.fsx demo`.
module Readme.Program

open Pyper

[<EntryPoint>]
let main _ =
    // A live per-stage display (Pyper.Progress) when the terminal is interactive; quiet otherwise.
    use _ = PipelineProgress.Show()
    Readme.Example.run ()
    0
