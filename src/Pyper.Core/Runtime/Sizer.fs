namespace Pyper

open System
open System.Diagnostics
open System.Threading

/// Adapts a stage's batch size to its function's cost: cheap functions move up to
/// `MaxBatch` items at once, slow ones one at a time (so many workers share the work
/// and results flow out at once). It starts at one item, knowing nothing.
[<Sealed>]
type internal Sizer(quantum: float) =
    let mutable costPerItem = -1.0

    /// In-process stages: 100 µs of work per batch, far above a hand-off's cost (about 1 µs).
    static member InProcessQuantum = float Stopwatch.Frequency / 10_000.0

    /// Process stages: 2 ms of work per batch. A round trip costs the parent about 150 µs of CPU
    /// (measured: 2 ms batches cut the parent's CPU by a third for 0.8 ms items).
    static member RemoteQuantum = float Stopwatch.Frequency / 500.0

    /// A sizer for an in-process stage's worker.
    static member InProcess() = Sizer(Sizer.InProcessQuantum)

    /// A sizer for a process stage's worker.
    static member Remote() = Sizer(Sizer.RemoteQuantum)

    member _.Limit =
        let c = costPerItem

        if c < 0.0 then
            1
        elif c * float Tuning.MaxBatch <= quantum then
            Tuning.MaxBatch
        else
            max 1 (int (quantum / c))

    member this.Record(items: int, start: int64) =
        this.RecordCost(items, Stopwatch.GetTimestamp() - start)

    /// Records what `items` items cost, in Stopwatch ticks (for a process stage: the function's own
    /// time in the worker, without the round trip, which batching is there to amortize).
    member _.RecordCost(items: int, ticks: int64) =
        let sample = float ticks / float items
        let c = costPerItem
        costPerItem <- if c < 0.0 then sample else (3.0 * c + sample) / 4.0
