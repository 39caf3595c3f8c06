namespace Pyper.Distributed

open System
open System.Reflection
open System.Text.Json
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
        let invoke (m: MethodInfo) (target: obj) (args: obj[]) =
            m.Invoke(target, BindingFlags.DoNotWrapExceptions, null, args, null)

        let initArgs: obj[] =
            if initM.GetParameters().Length = 1 then
                [| null |]
            else
                [||]

        let bind: 's -> Func<'a, 'b> =
            if fM.GetParameters().Length = 1 then
                let d =
                    fM.CreateDelegate(typeof<Func<'s, FSharpFunc<'a, 'b>>>, fT) :?> Func<'s, FSharpFunc<'a, 'b>>

                fun s ->
                    let h = d.Invoke s
                    Func<'a, 'b>(fun x -> h x)
            else
                let d = fM.CreateDelegate(typeof<Func<'s, 'a, 'b>>, fT) :?> Func<'s, 'a, 'b>
                fun s -> Func<'a, 'b>(fun x -> d.Invoke(s, x))

        let dispose =
            if isNull disposeM then
                None
            else
                Some(fun (s: 's) -> invoke disposeM disposeT [| box s |] |> ignore)

        SlotState<'s, 'a, 'b>((fun () -> unbox<'s>(invoke initM initT initArgs)), bind, dispose) :> ISlotRunner

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

            let items = JsonSerializer.Deserialize<'a[]>(ReadOnlySpan payload, Wire.options)
            let clock = Diagnostics.Stopwatch.StartNew()
            let results = Array.map g.Invoke items
            let cost = clock.Elapsed.Ticks

            let json =
                try
                    JsonSerializer.SerializeToUtf8Bytes(results, Wire.options)
                with e ->
                    raise (ResultsNotSerializableException e)

            let reply = Array.zeroCreate<byte>(8 + json.Length)
            Buffers.Binary.BinaryPrimitives.WriteInt64LittleEndian(Span(reply, 0, 8), cost)
            Array.blit json 0 reply 8 json.Length
            reply

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

        let ps = fM.GetParameters()

        let s, a, b =
            if ps.Length = 1 then
                let inner = fM.ReturnType.GetGenericArguments()
                ps[0].ParameterType, inner[0], inner[1]
            else
                ps[0].ParameterType, ps[1].ParameterType, fM.ReturnType

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
