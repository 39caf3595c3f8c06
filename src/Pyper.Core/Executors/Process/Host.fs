namespace Pyper

open System
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

    interface IBatchRunner with
        /// The results, after the function's own time for the batch (TimeSpan ticks, 8 bytes).
        member _.Run payload =
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

/// A function of a bound argument and an item, closed over the argument once per worker process.
[<AbstractClass; Sealed>]
type internal Bound<'c, 'a, 'b> =
    /// An F# function `'c -> 'a -> 'b` (its one-argument Invoke): applied to the argument once.
    static member OfFSharp(f: obj, arg: obj) : IBatchRunner =
        let g = (f :?> Func<'c, FSharpFunc<'a, 'b>>).Invoke(unbox<'c> arg)
        BatchRunner<'a, 'b>(Func<'a, 'b>(fun x -> g x))

    /// A delegate `Func<'c, 'a, 'b>`: called with the argument and each item.
    static member OfDelegate(f: obj, arg: obj) : IBatchRunner =
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

    /// Exits the worker when its parent process is gone, even while the function is busy.
    let internal watchParent (parent: int) =
        if not (OperatingSystem.IsWindows()) then
            let watch () =
                while getppid () = parent do
                    Thread.Sleep 100 // polling the parent: a hang guard, not a synchronisation

                Environment.Exit 3

            Thread(watch, IsBackground = true, Name = "Pyper/watchdog").Start()

    let internal runner (r: FunctionRef) : IBatchRunner =
        let assembly = AssemblyLoadContext.Default.LoadFromAssemblyPath r.Assembly
        resolveIn (Path.GetDirectoryName r.Assembly)
        let t, m = r.Resolve assembly

        let target =
            if r.Instance then
                Activator.CreateInstance(t, true)
            else
                null

        let a = (m.GetParameters()[0]).ParameterType
        let b = m.ReturnType
        let f = m.CreateDelegate(typedefof<Func<_, _>>.MakeGenericType(a, b), target)
        Activator.CreateInstance(typedefof<BatchRunner<_, _>>.MakeGenericType(a, b), f) :?> IBatchRunner

    /// The runner of a function with a bound argument (`Wire.InitBound`'s payload): an F# function
    /// value `'c -> 'a -> 'b` (a closure's one-argument Invoke) or a two-parameter method.
    let internal boundRunner (payload: byte[]) : IBatchRunner =
        let n =
            Buffers.Binary.BinaryPrimitives.ReadInt32LittleEndian(ReadOnlySpan(payload, 0, 4))

        let r = FunctionRef.Decode(payload[4 .. 3 + n])
        let assembly = AssemblyLoadContext.Default.LoadFromAssemblyPath r.Assembly
        resolveIn (Path.GetDirectoryName r.Assembly)
        let t, m = r.Resolve assembly

        let target =
            if r.Instance then
                Activator.CreateInstance(t, true)
            else
                null

        let ps = m.GetParameters()

        let make (c: Type) (a: Type) (b: Type) (how: string) (f: obj) =
            let arg =
                JsonSerializer.Deserialize(ReadOnlySpan(payload, 4 + n, payload.Length - 4 - n), c, Wire.options)

            typedefof<Bound<_, _, _>>
                .MakeGenericType(c, a, b)
                .GetMethod(how, BindingFlags.Static ||| BindingFlags.Public ||| BindingFlags.NonPublic)
                .Invoke(null, [| f; arg |])
            :?> IBatchRunner

        if ps.Length = 1 then
            let c, inner = ps[0].ParameterType, m.ReturnType.GetGenericArguments()

            let f =
                m.CreateDelegate(typedefof<Func<_, _>>.MakeGenericType(c, m.ReturnType), target)

            make c inner[0] inner[1] "OfFSharp" f
        else
            let c, a, b = ps[0].ParameterType, ps[1].ParameterType, m.ReturnType
            let f = m.CreateDelegate(typedefof<Func<_, _, _>>.MakeGenericType(c, a, b), target)
            make c a b "OfDelegate" f

    /// The worker's main loop: connect, learn the function, then answer batches until the parent closes.
    let run (args: string[]) : int =
        let arg name =
            args |> Array.findIndex ((=) name) |> fun i -> args[i + 1]

        watchParent (int (arg "--parent"))
        // User code in workers prints freely: set the console up now, while the worker starts.
        Console.Out.Flush()
        resolveIn AppContext.BaseDirectory

        use stream = new NetworkStream(WorkerChannel.connect (arg "--socket"), true)
        let mutable run = Unchecked.defaultof<IBatchRunner>
        let mutable go = true

        while go do
            let frame =
                try
                    Wire.readSync stream
                with :? IOException ->
                    None // the parent reset the connection: as good as closed

            match frame with
            | None -> go <- false
            | Some(kind, payload) when kind = Wire.Init -> run <- runner (FunctionRef.Decode payload)
            | Some(kind, payload) when kind = Wire.InitBound -> run <- boundRunner payload
            | Some(_, payload) ->
                let reply =
                    try
                        Ok(run.Run payload)
                    with e ->
                        Error e

                // The parent may stop the run (and close the connection) while this batch ran.
                try
                    match reply with
                    | Ok results -> Wire.writeSync stream Wire.Results results
                    | Error e ->
                        // The brief frame at once (the parent stops the run on it), then the
                        // full one, whose first encoding costs a cold process 50-150 ms.
                        Wire.writeSync stream Wire.BriefFailure (RemoteFailures.brief e)
                        Wire.writeSync stream Wire.Failure (RemoteFailures.encode e)
                with :? IOException ->
                    go <- false

        0
