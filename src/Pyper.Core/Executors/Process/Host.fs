namespace Pyper

open System
open System.Buffers
open System.Diagnostics
open System.IO
open System.Net.Sockets
open System.Reflection
open System.Runtime.InteropServices
open System.Runtime.Loader
open System.Text.Json
open System.Threading

/// Runs one batch of items through the function in a worker process.
type internal IBatchRunner =
    abstract Run: payload: byte[] -> byte[]

[<Sealed>]
type internal BatchRunner<'a, 'b>(f: Func<'a, 'b>) =
    // Warm up while the worker starts, not when the first items arrive: the serializer's
    // metadata for both types, and the function's machine code.
    do
        WireWarmUp.arrays<'a, 'b>()

        try
            Runtime.CompilerServices.RuntimeHelpers.PrepareMethod f.Method.MethodHandle
        with _ ->
            () // generic or dynamic methods compile on first call instead

    /// Runs `f` over a batch's items (`payload`): the results, after the function's own time for
    /// the batch (TimeSpan ticks, 8 bytes). Distributed stages' slots with state use it too.
    static member Reply(f: Func<'a, 'b>, payload: byte[]) : byte[] =
        let items = JsonSerializer.Deserialize<'a[]>(ReadOnlySpan payload, Wire.options)
        let clock = Diagnostics.Stopwatch.StartNew()
        let results = Array.map f.Invoke items
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

    interface IBatchRunner with
        member _.Run payload = BatchRunner<'a, 'b>.Reply(f, payload)

/// A function of a bound argument and an item, closed over the argument once per worker process
/// (a map stage's runner).
[<AbstractClass; Sealed>]
type internal Bound<'c, 'a, 'b> =
    /// An F# function `'c -> 'a -> 'b` (its one-argument Invoke): applied to the argument once.
    static member OfFSharp(f: obj, arg: obj) : IStageRunner =
        let g = (f :?> Func<'c, FSharpFunc<'a, 'b>>).Invoke(unbox<'c> arg)
        Runners.make<'a, 'b> Shape.Map (Func<'a, 'b>(fun x -> g x))

    /// A delegate `Func<'c, 'a, 'b>`: called with the argument and each item.
    static member OfDelegate(f: obj, arg: obj) : IStageRunner =
        let d = f :?> Func<'c, 'a, 'b>
        let arg = unbox<'c> arg
        Runners.make<'a, 'b> Shape.Map (Func<'a, 'b>(fun x -> d.Invoke(arg, x)))

    /// `OfFSharp` as a batch runner (a distributed stage's worker).
    static member BatchOfFSharp(f: obj, arg: obj) : IBatchRunner =
        let g = (f :?> Func<'c, FSharpFunc<'a, 'b>>).Invoke(unbox<'c> arg)
        BatchRunner<'a, 'b>(Func<'a, 'b>(fun x -> g x))

    /// `OfDelegate` as a batch runner (a distributed stage's worker).
    static member BatchOfDelegate(f: obj, arg: obj) : IBatchRunner =
        let d = f :?> Func<'c, 'a, 'b>
        let arg = unbox<'c> arg
        BatchRunner<'a, 'b>(Func<'a, 'b>(fun x -> d.Invoke(arg, x)))

/// The worker process's side: `Pyper.Worker` calls `run` with its command line.
module internal ProcessHost =
    [<DllImport("libc", EntryPoint = "getppid")>]
    extern int private getppid()

    /// Folders already searched for dependencies (a worker serves many functions in its life).
    let private folders = Collections.Generic.HashSet<string>()

    let internal resolveIn (dir: string) =
        if folders.Add dir then
            AssemblyLoadContext.Default.add_Resolving (fun ctx name ->
                let path = Path.Combine(dir, name.Name + ".dll")

                if File.Exists path then
                    ctx.LoadFromAssemblyPath path
                else
                    null)

    /// The method `r` names and the instance to call it on (null for a static method), its
    /// assembly loaded and the assembly's folder searched for its dependencies.
    let internal locate (r: FunctionRef) : MethodInfo * obj =
        let assembly = AssemblyLoadContext.Default.LoadFromAssemblyPath r.Assembly
        resolveIn (Path.GetDirectoryName r.Assembly)
        let t, m = r.Resolve assembly

        m,
        (if r.Instance then
             Activator.CreateInstance(t, true)
         else
             null)

    /// How long a worker whose parent is gone waits for its loop to end (and dispose the stage's
    /// per-worker state) before it exits: the grace a stopped run gives its worker processes.
    let private orphanGraceMilliseconds = 2000

    /// Set when the worker loop has ended, its per-worker state disposed.
    let private loopEnded = new ManualResetEventSlim(false)

    /// 1 while the worker makes or holds a per-worker state not yet disposed: only then does the
    /// watchdog give the loop its grace (a worker without state exits at once).
    let private holding = ref 0

    /// Exits the worker when its parent process is gone, even while the function is busy. The
    /// parent's end of the channel closed with it: the loop ends after the batch in hand and
    /// disposes the per-worker state; a worker holding one gets the grace of a stopped run for
    /// that, then exits whatever it is doing.
    let internal watchParent (parent: int) =
        if not (OperatingSystem.IsWindows()) then
            let watch () =
                while getppid () = parent do
                    Thread.Sleep 100 // polling the parent: a hang guard, not a synchronisation

                if Volatile.Read &holding.contents = 1 then
                    loopEnded.Wait orphanGraceMilliseconds |> ignore

                Environment.Exit 3

            Thread(watch, IsBackground = true, Name = "Pyper/watchdog").Start()

    let internal runner (r: FunctionRef) : IBatchRunner =
        let m, target = locate r

        let a = (m.GetParameters()[0]).ParameterType
        let b = m.ReturnType
        let f = m.CreateDelegate(typedefof<Func<_, _>>.MakeGenericType(a, b), target)
        Activator.CreateInstance(typedefof<BatchRunner<_, _>>.MakeGenericType(a, b), f) :?> IBatchRunner

    /// The process executor's runner of a stage (`Shape` and function, as the parent sent them).
    let internal stageRunner (shape: Shape) (r: FunctionRef) : IStageRunner =
        let m, target = locate r

        let seqOf (e: Type) =
            typedefof<Collections.Generic.IEnumerable<int>>.MakeGenericType e

        let a, b = Runners.itemTypes shape m

        let fp, fr =
            match shape with
            | Shape.Map -> a, b
            | Shape.Branch -> a, seqOf b
            | Shape.Join -> seqOf a, b
            | _ -> seqOf a, seqOf b

        let f = m.CreateDelegate(typedefof<Func<_, _>>.MakeGenericType(fp, fr), target)

        try
            Runtime.CompilerServices.RuntimeHelpers.PrepareMethod m.MethodHandle
        with _ ->
            () // generic or dynamic methods compile on first call instead

        let make =
            typeof<IStageRunner>
                .Assembly.GetType("Pyper.Runners", true)
                .GetMethod("make", BindingFlags.Static ||| BindingFlags.Public ||| BindingFlags.NonPublic)
                .MakeGenericMethod(a, b)

        make.Invoke(null, [| box shape; box f |]) :?> IStageRunner

    /// The function `r` (an F# function value `'c -> 'a -> 'b`, a closure's one-argument Invoke, or
    /// a two-parameter method) closed over its argument (JSON), by `Bound`'s `{prefix}FSharp` or
    /// `{prefix}Delegate`.
    let private bound (prefix: string) (r: FunctionRef) (json: byte[]) : obj =
        let m, target = locate r

        let ps = m.GetParameters()

        let make (c: Type) (a: Type) (b: Type) (how: string) (f: obj) =
            let arg = JsonSerializer.Deserialize(ReadOnlySpan json, c, Wire.options)

            typedefof<Bound<_, _, _>>
                .MakeGenericType(c, a, b)
                .GetMethod(prefix + how, BindingFlags.Static ||| BindingFlags.Public ||| BindingFlags.NonPublic)
                .Invoke(null, [| f; arg |])

        if ps.Length = 1 then
            let c, inner = ps[0].ParameterType, m.ReturnType.GetGenericArguments()

            let f =
                m.CreateDelegate(typedefof<Func<_, _>>.MakeGenericType(c, m.ReturnType), target)

            make c inner[0] inner[1] "FSharp" f
        else
            let c, a, b = ps[0].ParameterType, ps[1].ParameterType, m.ReturnType
            let f = m.CreateDelegate(typedefof<Func<_, _, _>>.MakeGenericType(c, a, b), target)
            make c a b "Delegate" f

    /// The runner of a map stage's function with a bound argument (`Wire.InitBound`'s payload: the
    /// shape, the function's encoding's length (4 bytes), the encoding, the argument as JSON).
    let internal boundRunner (payload: ReadOnlySpan<byte>) : IStageRunner =
        let n = Buffers.Binary.BinaryPrimitives.ReadInt32LittleEndian(payload.Slice(1, 4))
        let r = FunctionRef.Decode(payload.Slice(5, n).ToArray())
        bound "Of" r (payload.Slice(5 + n).ToArray()) :?> IStageRunner

    /// A distributed stage's batch runner of a function with a bound argument (its JSON).
    let internal boundBatchRunner (r: FunctionRef) (json: byte[]) : IBatchRunner =
        bound "BatchOf" r json :?> IBatchRunner

    /// A function of a stage with per-worker state (an InitState frame's encoding), as this
    /// process re-creates it: its method and target; nulls for an empty encoding (no `dispose`).
    let private load (encoding: byte[]) : MethodInfo * obj =
        if encoding.Length = 0 then
            null, null
        else
            locate (FunctionRef.Decode encoding)

    /// Answers a failure (unless the parent has gone: then false); a failure of the per-worker
    /// state goes as `Wire.StateFailure`, which fails the run whatever the stage's policy.
    let private answerFailure (link: WorkerLink) (e: exn) =
        match e with
        | :? ParentGoneException -> false
        | :? StateFailureException as s ->
            try
                link.Begin()
                link.Frame.Writer.Write(ReadOnlySpan(RemoteFailures.encode s.InnerException))
                link.Send Wire.StateFailure
                true
            with :? ParentGoneException ->
                false
        | e ->
            try
                link.SendFailure e
                true
            with :? ParentGoneException ->
                false

    /// The worker's main loop: connect, learn the function, then answer batches until the parent closes.
    let run (args: string[]) : int =
        let arg name =
            args |> Array.findIndex ((=) name) |> fun i -> args[i + 1]

        watchParent (Int32.Parse(arg "--parent", Globalization.CultureInfo.InvariantCulture))
        // User code in workers prints freely: set the console up now, while the worker starts.
        Console.Out.Flush()
        resolveIn AppContext.BaseDirectory

        use stream = new NetworkStream(WorkerChannel.connect (arg "--socket"), true)
        RemoteFailures.warmUpInBackground ()
        let link = WorkerLink(stream)
        let mutable run = Unchecked.defaultof<IStageRunner>
        // The per-worker state of the stage served, if any: disposed before this process serves
        // another stage (the parent releases it first) and when this process ends.
        let state: IStateRunner option ref = ref None

        let dropState () =
            match state.Value with
            | None -> ()
            | Some s ->
                state.Value <- None

                try
                    s.Drop()
                finally
                    Volatile.Write(&holding.contents, 0)

        let mutable go = true

        try
            while go do
                let frame =
                    try
                        link.Reader.Read()
                    with :? IOException ->
                        false // the parent reset the connection: as good as closed

                if not frame then
                    go <- false
                elif link.Reader.Kind = Wire.InitState then
                    dropState ()
                    Volatile.Write(&holding.contents, 1)
                    let s = StateRunners.make load link.Reader.Payload
                    state.Value <- Some s
                    run <- s
                elif link.Reader.Kind = Wire.Release then
                    let s = state.Value
                    state.Value <- None

                    try
                        s
                        |> Option.iter (fun s ->
                            try
                                s.Release()
                            finally
                                Volatile.Write(&holding.contents, 0))

                        link.Begin()
                        link.Frame.Writer.Write(ReadOnlySpan(Array.zeroCreate<byte> 8)) // no cost, no items
                        link.Send Wire.Results
                    with e ->
                        go <- answerFailure link e
                elif link.Reader.Kind = Wire.Init then
                    dropState ()
                    let payload = link.Reader.Payload

                    run <-
                        stageRunner
                            (LanguagePrimitives.EnumOfValue<byte, Shape> payload[0])
                            (FunctionRef.Decode(payload.Slice(1).ToArray()))

                    if run.Shape = Shape.Join || run.Shape = Shape.JoinMany then
                        // The parent may stop the run (and close the connection) meanwhile.
                        try
                            run.Join link
                        with :? ParentGoneException ->
                            go <- false
                elif link.Reader.Kind = Wire.InitBound then
                    dropState ()
                    run <- boundRunner link.Reader.Payload
                elif link.Reader.Kind = Wire.Batch then
                    // The parent may stop the run (and close the connection) while this batch runs.
                    try
                        run.Batch(link.Reader.Payload, link)
                    with e ->
                        go <- answerFailure link e
        finally
            // The stage stopped or failed, or the parent is gone (its connection closed): dispose here.
            try
                dropState ()
            finally
                loopEnded.Set()

        0
