namespace Pyper.Distributed

open System
open System.Reflection
open Pyper

/// A serving slot's batch runner; `Close` disposes the slot's per-worker state, if any (its
/// failure propagates).
type internal ISlotRunner =
    inherit IBatchRunner
    abstract Close: unit -> unit

/// A stateless stage's runner, shared by every slot of the worker.
[<Sealed>]
type internal SharedRunner(runner: IBatchRunner) =
    interface ISlotRunner with
        member _.Run payload = runner.Run payload
        member _.Close() = ()

/// One serving slot's runner of a stage with per-worker state: `init` runs before the slot's first
/// batch (on the batch's thread), `bind` applies the function to the state once, and the result is
/// called with each item; `Close` disposes the state once. A failure of `init` or `bind` is kept
/// and answers each of the slot's batches as a StateFailureException (the parent fails the run).
[<Sealed>]
type internal SlotState<'s, 'a, 'b>(init: unit -> 's, bind: 's -> Func<'a, 'b>, dispose: ('s -> unit) option) =
    let cell = StateCell<'s>(init, dispose, 0)
    let mutable opened = false
    let mutable failed: exn = null
    let mutable g: Func<'a, 'b> = null

    /// The runner of `f` (an F# function value `'s -> 'a -> 'b`, its one-argument Invoke, or a
    /// delegate method of the state and the item), `init` and `dispose` (null: none).
    static member Of(initM: MethodInfo, initT: obj, fM: MethodInfo, fT: obj, disposeM: MethodInfo, disposeT: obj) =
        let init, bind, dispose =
            StateFunctions.ofMethods<'s, 'a, 'b>(initM, initT, fM, fT, disposeM, disposeT)

        SlotState<'s, 'a, 'b>(init, bind, dispose) :> ISlotRunner

    interface ISlotRunner with
        /// The results, after the function's own time for the batch (as `BatchRunner`'s).
        member _.Run payload =
            if not opened then
                opened <- true

                try
                    cell.Open()
                    g <- bind cell.State
                with e ->
                    failed <- e

            if not (isNull failed) then
                raise (StateFailureException failed)

            BatchRunner<'a, 'b>.Reply(g, payload)

        member _.Close() = cell.Close()

/// Making the slots' runners of a stage with per-worker state, in a worker process.
module internal SlotStates =
    /// A maker of slot runners: `init`, `f` and (optionally) `dispose` (`state`: init, then dispose
    /// if any), all re-created from `path`, the worker's copy of their assembly.
    let maker (path: string) (f: FunctionRef) (state: FunctionRef[]) : unit -> ISlotRunner =
        let load (r: FunctionRef) =
            ProcessHost.locate { r with Assembly = path }

        let initM, initT = load state[0]
        let fM, fT = load { f with Assembly = path }

        let disposeM, disposeT = if state.Length > 1 then load state[1] else null, null
        let s, a, b = StateFunctions.types fM

        let make =
            typedefof<SlotState<_, _, _>>
                .MakeGenericType(s, a, b)
                .GetMethod("Of", BindingFlags.Static ||| BindingFlags.Public ||| BindingFlags.NonPublic)

        fun () ->
            make.Invoke(
                null,
                BindingFlags.DoNotWrapExceptions,
                null,
                [| box initM; initT; box fM; fT; box disposeM; disposeT |],
                null
            )
            :?> ISlotRunner
