namespace Pyper

open System

/// A failure of a stage's per-worker `init` or `dispose` (the original exception inside): the
/// worker's failure, not an item's, so it fails the run whatever the stage's `onError` says
/// (`PolicyRules` lets it through; the stage's loop then rethrows the original exception).
[<Sealed>]
type internal StateFailureException(inner: exn) =
    inherit Exception(inner.Message, inner)

/// One worker's state (a stage built with `init`, `dispose` and, optionally, `recycleAfter`):
/// made by `Open`, disposed once by `Close`, and, when `recycleAfter` > 0, disposed and made anew
/// before every call after the first `recycleAfter` calls (`Tick`). Not thread-safe: one worker's.
[<Sealed>]
type internal StateCell<'s>(init: unit -> 's, dispose: ('s -> unit) option, recycleAfter: int) =
    let mutable state = Unchecked.defaultof<'s>
    let mutable alive = false
    let mutable calls = 0

    /// The current state.
    member _.State = state

    /// Makes the state (`init`); its exception propagates as it is.
    member _.Open() =
        state <- init ()
        alive <- true
        calls <- 0

    /// Disposes the state, once (also when `dispose` throws: the state is gone either way).
    member _.Close() =
        if alive then
            alive <- false
            let s = state
            state <- Unchecked.defaultof<'s>
            dispose |> Option.iter (fun d -> d s)

    /// Before each call: true when the state was recycled (disposed, then made anew) for this
    /// call; a failure of either raises a StateFailureException.
    member this.Tick() =
        if recycleAfter > 0 && calls >= recycleAfter then
            try
                this.Close()
                this.Open()
            with e ->
                raise (StateFailureException e)

            calls <- 1
            true
        else
            calls <- calls + 1
            false

/// Checks of the per-worker state options.
module internal WorkerStates =
    /// `recycleAfter` as the cell takes it (0: never), refused below 1 with an
    /// ArgumentOutOfRangeException naming the stage (`stage`) and the option.
    let recycle (stage: string) (recycleAfter: int option) =
        match recycleAfter with
        | None -> 0
        | Some n when n < 1 ->
            raise (
                ArgumentOutOfRangeException(
                    "recycleAfter",
                    n,
                    $"{stage}: recycleAfter must be at least 1 (the calls a worker's state serves before it is disposed and made anew); got {n}."
                )
            )
        | Some n -> n
