namespace Pyper

open System

/// A live per-stage display of every Pyper run in this process, drawn in the terminal with
/// Spectre.Console from Pyper's metrics (the `Pyper` meter): for each stage, the items taken and
/// handed on, the rate, the results waiting in its output queue, its busy workers and its failures.
///
/// ```fsharp
/// use _ = PipelineProgress.Show()      // F#, also in FSI
/// ```
/// ```csharp
/// using var progress = PipelineProgress.Show();   // C#
/// ```
///
/// While it is on, what the program writes to `Console.Out` shows above the table (its last
/// lines); disposing it writes all of it out, then the last table, and stops. When the terminal
/// is not interactive (output redirected, CI), it shows nothing and takes nothing.
[<Sealed>]
type PipelineProgress =
    interface IDisposable

    /// Starts the display, refreshed four times a second; dispose the result to stop it.
    static member Show: unit -> PipelineProgress

    /// Starts the display, refreshed every `refreshMilliseconds` (10 to 60,000); dispose the result to stop it.
    static member Show: refreshMilliseconds: int -> PipelineProgress

    /// False when the terminal is not interactive and nothing is shown.
    member IsShown: bool
