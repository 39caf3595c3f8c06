namespace Pyper

open System
open System.Reflection

/// A stage runner holding per-worker state in a worker process.
type internal IStateRunner =
    inherit IStageRunner

    /// Disposes the state now (the stage's clean end); throws a StateFailureException when the
    /// state's `init` or `dispose` failed.
    abstract Release: unit -> unit

    /// Disposes the state if it is still alive, ignoring a failure (the worker is ending, or
    /// serves another stage: the parent no longer listens).
    abstract Drop: unit -> unit

/// A stage's per-worker state functions as a worker re-created them: `init` (none or one, unit,
/// parameter), `f` (an F# function value `'s -> 'a -> 'b`, its one-argument Invoke, or a delegate
/// method of the state and the item) and `dispose` (null: none), made callable. Process stages
/// (`StateRunner`) and distributed ones (their serving slots) share it.
module internal StateFunctions =
    /// The state, item and result types of a re-created `f`: an F# function value `'s -> 'a -> 'b`
    /// (one parameter, returning `FSharpFunc<'a, 'b>`) or a method of the state and the item.
    let types (fM: MethodInfo) =
        let ps = fM.GetParameters()

        if ps.Length = 1 then
            let inner = fM.ReturnType.GetGenericArguments()
            ps[0].ParameterType, inner[0], inner[1]
        else
            ps[0].ParameterType, ps[1].ParameterType, fM.ReturnType

    let ofMethods<'s, 'a, 'b>
        (initM: MethodInfo, initT: obj, fM: MethodInfo, fT: obj, disposeM: MethodInfo, disposeT: obj)
        : (unit -> 's) * ('s -> Func<'a, 'b>) * ('s -> unit) option =
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

        (fun () -> unbox<'s>(invoke initM initT initArgs)), bind, dispose

/// A map stage's runner with per-worker state, in a worker process. The state is made when the
/// stage's frame comes (`init`'s failure is kept, and answers the next call or Release); `bind`
/// applies the function to it once per state (an F# function may do its set-up there), and the
/// result is called with each item. A failure of `init`, `dispose` or `bind` is a
/// StateFailureException: the parent fails the run with it.
[<Sealed>]
type internal StateRunner<'s, 'a, 'b>
    (init: unit -> 's, bind: 's -> Func<'a, 'b>, dispose: ('s -> unit) option, recycleAfter: int) =
    let cell = StateCell<'s>(init, dispose, recycleAfter)
    let mutable failed: exn = null
    let mutable g: Func<'a, 'b> = null

    do
        try
            cell.Open()
            g <- bind cell.State
        with e ->
            failed <- e

    let call (x: 'a) =
        if isNull failed then
            try
                if cell.Tick() then
                    g <- bind cell.State
            with e ->
                failed <-
                    match e with
                    | :? StateFailureException as s -> s.InnerException
                    | e -> e

        if not (isNull failed) then
            raise (StateFailureException failed)

        g.Invoke x

    let items =
        ItemRunner<'a, 'b, 'b>(Shape.Map, Func<'a, 'b>(call), (fun (y: 'b) (p: Pending<'b>) -> p.Add y)) :> IStageRunner

    /// The runner of `f` (an F# function value `'s -> 'a -> 'b`, its one-argument Invoke, or a
    /// delegate method of the state and the item), `init` (none or one, unit, parameter) and
    /// `dispose` (null: none) as a worker process re-created them; `recycleAfter` 0: never.
    static member Of
        (initM: MethodInfo, initT: obj, fM: MethodInfo, fT: obj, disposeM: MethodInfo, disposeT: obj, recycleAfter: int)
        : IStateRunner =
        let init, bind, dispose =
            StateFunctions.ofMethods<'s, 'a, 'b>(initM, initT, fM, fT, disposeM, disposeT)

        StateRunner<'s, 'a, 'b>(init, bind, dispose, recycleAfter)

    interface IStateRunner with
        member _.Shape = Shape.Map
        member _.Batch(payload, link) = items.Batch(payload, link)
        member _.Join link = items.Join link

        member _.Release() =
            if not (isNull failed) then
                raise (StateFailureException failed)

            try
                cell.Close()
            with e ->
                raise (StateFailureException e)

        member _.Drop() =
            try
                cell.Close()
            with _ ->
                ()

/// Decoding a `Wire.InitState` frame into its runner (in the worker process).
module internal StateRunners =
    /// The parts of an InitState payload: `recycleAfter`, then the encodings of init, f and
    /// dispose (empty: none).
    let parts (payload: ReadOnlySpan<byte>) : int * byte[] * byte[] * byte[] =
        let recycle =
            Buffers.Binary.BinaryPrimitives.ReadInt32LittleEndian(payload.Slice(0, 4))

        let mutable at = 4
        let found = Array.zeroCreate<byte[]> 3

        for i in 0..2 do
            let n = Buffers.Binary.BinaryPrimitives.ReadInt32LittleEndian(payload.Slice(at, 4))
            found[i] <- payload.Slice(at + 4, n).ToArray()
            at <- at + 4 + n

        recycle, found[0], found[1], found[2]

    /// The payload of an InitState frame (see `parts`).
    let payload (recycleAfter: int) (init: byte[]) (f: byte[]) (dispose: byte[]) : byte[] =
        let out = Array.zeroCreate<byte>(16 + init.Length + f.Length + dispose.Length)

        let write (at: int) (v: int) =
            Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(Span(out, at, 4), v)

        write 0 recycleAfter
        let mutable at = 4

        for part in [ init; f; dispose ] do
            write at part.Length
            Array.blit part 0 out (at + 4) part.Length
            at <- at + 4 + part.Length

        out

    /// The runner for re-created functions (`load` gives a method and its target, or nulls for an
    /// empty encoding).
    let make (load: byte[] -> MethodInfo * obj) (payload: ReadOnlySpan<byte>) : IStateRunner =
        let recycle, init, f, dispose = parts payload
        let initM, initT = load init
        let fM, fT = load f
        let disposeM, disposeT = load dispose
        let s, a, b = StateFunctions.types fM

        typedefof<StateRunner<_, _, _>>
            .MakeGenericType(s, a, b)
            .GetMethod("Of", BindingFlags.Static ||| BindingFlags.Public ||| BindingFlags.NonPublic)
            .Invoke(
                null,
                BindingFlags.DoNotWrapExceptions,
                null,
                [| box initM; initT; box fM; fT; box disposeM; disposeT; box recycle |],
                null
            )
        :?> IStateRunner
