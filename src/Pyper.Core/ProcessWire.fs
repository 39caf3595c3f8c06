namespace Pyper

open System
open System.Diagnostics
open System.IO
open System.Net.Sockets
open System.Reflection
open System.Runtime.InteropServices
open System.Runtime.Loader
open System.Text.Json
open System.Text.Json.Serialization
open System.Threading
open System.Threading.Tasks

/// Where a process stage's function lives, so that a worker process can re-create it:
/// a method of a type in a compiled assembly, called on a fresh instance of the type
/// (a closure or lambda class that captures nothing) or statically.
type internal FunctionRef =
    {
        Assembly: string
        TypeToken: int
        MethodToken: int
        Instance: bool
    }

    /// As sent to a worker: plain text, so a worker's start-up needs no serializer set-up.
    member r.Encode() =
        Text.Encoding.UTF8.GetBytes $"{r.TypeToken}|{r.MethodToken}|{r.Instance}|{r.Assembly}"

    static member Decode(payload: byte[]) =
        let parts = Text.Encoding.UTF8.GetString(payload).Split('|', 4)

        {
            TypeToken = int parts[0]
            MethodToken = int parts[1]
            Instance = bool.Parse parts[2]
            Assembly = parts[3]
        }

/// Frames between the parent and a worker process: a 4-byte length, a kind byte, a payload.
/// Items travel as JSON arrays of the function's own parameter and result types.
module internal Wire =
    [<Literal>]
    let Init = 1uy

    [<Literal>]
    let Batch = 2uy

    [<Literal>]
    let Results = 3uy

    [<Literal>]
    let Failure = 4uy

    /// FSharp.SystemTextJson for F# types only: asking it about every other type (int, arrays)
    /// would load F# reflection into each fresh worker process for nothing.
    [<Sealed>]
    type private FSharpTypesOnly() =
        inherit JsonConverterFactory()
        let inner = JsonFSharpConverter()

        static let isFSharp (t: Type) =
            t.IsDefined(typeof<CompilationMappingAttribute>, false)
            || (t.IsGenericType && t.FullName.StartsWith "System.Tuple`")

        override _.CanConvert t = isFSharp t && inner.CanConvert t
        override _.CreateConverter(t, o) = inner.CreateConverter(t, o)

    /// One serializer setup on both sides: System.Text.Json with F# records, unions, options and tuples.
    let options =
        let o = JsonSerializerOptions(JsonSerializerDefaults.General)
        o.Converters.Add(FSharpTypesOnly())
        o

    /// What a worker sends back when the function throws.
    type RemoteFailure =
        {
            Type: string
            Message: string
            StackTrace: string
        }

    let private header (kind: byte) (length: int) =
        let h = Array.zeroCreate<byte> 5
        Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(Span h, length)
        h[4] <- kind
        h

    let write (s: Stream) (kind: byte) (payload: byte[]) (ct: CancellationToken) : Task =
        task {
            do! s.WriteAsync(header kind payload.Length, ct)
            do! s.WriteAsync(payload, ct)
            do! s.FlushAsync ct
        }

    let writeSync (s: Stream) (kind: byte) (payload: byte[]) =
        s.Write(header kind payload.Length)
        s.Write payload
        s.Flush()

    /// Reads exactly `buf.Length` bytes; false at the end of the stream.
    let private fill (s: Stream) (buf: byte[]) (ct: CancellationToken) : Task<bool> =
        task {
            let mutable off = 0
            let mutable eof = false

            while not eof && off < buf.Length do
                let! n = s.ReadAsync(buf.AsMemory(off), ct)
                if n = 0 then eof <- true else off <- off + n

            return not eof
        }

    /// The next frame, blocking (the worker's side); None when the other side has gone.
    let readSync (s: Stream) : (byte * byte[]) option =
        let h = Array.zeroCreate<byte> 5

        if s.ReadAtLeast(Span h, 5, false) < 5 then
            None
        else
            let payload =
                Array.zeroCreate<byte>(Buffers.Binary.BinaryPrimitives.ReadInt32LittleEndian(ReadOnlySpan h))

            if s.ReadAtLeast(Span payload, payload.Length, false) < payload.Length then
                None
            else
                Some(h[4], payload)

    /// The next frame, or None when the other side has gone.
    let read (s: Stream) (ct: CancellationToken) : Task<(byte * byte[]) option> =
        task {
            let h = Array.zeroCreate<byte> 5
            let! ok = fill s h ct

            if not ok then
                return None
            else
                let payload =
                    Array.zeroCreate<byte>(Buffers.Binary.BinaryPrimitives.ReadInt32LittleEndian(ReadOnlySpan h))

                let! ok = fill s payload ct
                return if ok then Some(h[4], payload) else None
        }

/// Finds, in the parent, how a worker process can re-create a function; explains why not when it cannot.
module internal FunctionRefs =
    let private instanceFields =
        BindingFlags.Instance ||| BindingFlags.Public ||| BindingFlags.NonPublic

    let private loadable (a: Assembly) =
        not a.IsDynamic && not (String.IsNullOrEmpty a.Location)

    let private advice =
        "make it a module function or static method in a compiled assembly (in FSI: #r the assembly) that gets everything it needs from its input, or run the stage on threads (without multiprocess)"

    /// The static method a closure's Invoke only forwards to (`ldarg.1; [tail.] call m; ret`), if any.
    let private forwardee (closure: Type) : MethodInfo option =
        let invoke =
            closure.GetMethods(BindingFlags.Instance ||| BindingFlags.Public)
            |> Array.tryFind (fun m -> m.Name = "Invoke" && m.GetParameters().Length = 1)

        let il =
            try
                invoke
                |> Option.bind (fun m -> Option.ofObj (m.GetMethodBody()))
                |> Option.map (fun b -> b.GetILAsByteArray())
            with _ ->
                None

        let token =
            match il with
            | Some [| 0x03uy; 0x28uy; a; b; c; d; 0x2Auy |]
            | Some [| 0x03uy; 0xFEuy; 0x14uy; 0x28uy; a; b; c; d; 0x2Auy |] ->
                Some(BitConverter.ToInt32([| a; b; c; d |], 0))
            | _ -> None

        token
        |> Option.bind (fun t ->
            try
                match closure.Module.ResolveMethod t with
                | :? MethodInfo as m when m.IsStatic && not m.ContainsGenericParameters && loadable m.Module.Assembly ->
                    Some m
                | _ -> None
            with _ ->
                None)

    let private ofMethod (m: MethodInfo) =
        {
            Assembly = m.Module.Assembly.Location
            TypeToken = m.DeclaringType.MetadataToken
            MethodToken = m.MetadataToken
            Instance = false
        }

    /// How a worker re-creates an F# function value.
    let ofFunction (f: obj) : Result<FunctionRef, string> =
        let t = f.GetType()
        let fields = t.GetFields instanceFields

        if fields.Length = 0 && loadable t.Assembly && not t.ContainsGenericParameters then
            Ok
                {
                    Assembly = t.Assembly.Location
                    TypeToken = t.MetadataToken
                    MethodToken = 0
                    Instance = true
                }
        else
            match forwardee t with
            | Some m -> Ok(ofMethod m)
            | None when not (loadable t.Assembly) ->
                Error
                    $"the function value was made in an FSI session (or another dynamic assembly), which a worker process cannot load; a small compiled function may have been inlined into it, which [<MethodImpl(MethodImplOptions.NoInlining)>] on that function prevents: {advice}"
            | None ->
                let captured = fields |> Array.map (fun f -> f.Name) |> String.concat ", "

                Error
                    $"the function is a closure that captures values ({captured}), which a worker process cannot re-create: {advice}"

    /// How a worker re-creates a delegate (the C# facade's functions).
    let ofDelegate (d: Delegate) : Result<FunctionRef, string> =
        let m = d.Method

        match d.Target with
        | null when loadable m.Module.Assembly -> Ok(ofMethod m)
        | null -> Error $"the method is in a dynamic assembly, which a worker process cannot load: {advice}"
        | target when
            (target.GetType().GetFields instanceFields).Length = 0
            && loadable m.Module.Assembly
            ->
            Ok
                {
                    Assembly = m.Module.Assembly.Location
                    TypeToken = target.GetType().MetadataToken
                    MethodToken = m.MetadataToken
                    Instance = true
                }
        | _ -> Error $"the lambda captures variables, which a worker process cannot re-create: {advice}"

/// Serializer warm-up: builds the metadata for arrays of 'a and 'b before the first batch.
module internal WireWarmUp =
    let arrays<'a, 'b> () =
        JsonSerializer.SerializeToUtf8Bytes(JsonSerializer.Deserialize<'a[]>("[]", Wire.options), Wire.options)
        |> ignore

        JsonSerializer.SerializeToUtf8Bytes(JsonSerializer.Deserialize<'b[]>("[]", Wire.options), Wire.options)
        |> ignore

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
            let json = JsonSerializer.SerializeToUtf8Bytes(results, Wire.options)
            let reply = Array.zeroCreate<byte>(8 + json.Length)
            Buffers.Binary.BinaryPrimitives.WriteInt64LittleEndian(Span(reply, 0, 8), cost)
            Array.blit json 0 reply 8 json.Length
            reply

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
        let t = assembly.ManifestModule.ResolveType r.TypeToken

        let target, m =
            if r.MethodToken = 0 then
                let invoke =
                    t.GetMethods()
                    |> Array.find (fun m -> m.Name = "Invoke" && m.GetParameters().Length = 1)

                Activator.CreateInstance(t, true), invoke
            else
                let m = assembly.ManifestModule.ResolveMethod r.MethodToken :?> MethodInfo

                (if r.Instance then
                     Activator.CreateInstance(t, true)
                 else
                     null),
                m

        let a = (m.GetParameters()[0]).ParameterType
        let b = m.ReturnType
        let f = m.CreateDelegate(typedefof<Func<_, _>>.MakeGenericType(a, b), target)
        Activator.CreateInstance(typedefof<BatchRunner<_, _>>.MakeGenericType(a, b), f) :?> IBatchRunner

    let internal failure (e: exn) =
        JsonSerializer.SerializeToUtf8Bytes(
            {
                Wire.RemoteFailure.Type = e.GetType().AssemblyQualifiedName
                Wire.RemoteFailure.Message = e.Message
                Wire.RemoteFailure.StackTrace = e.StackTrace
            },
            Wire.options
        )

    /// The worker's main loop: connect, learn the function, then answer batches until the parent closes.
    let run (args: string[]) : int =
        let arg name =
            args |> Array.findIndex ((=) name) |> fun i -> args[i + 1]

        watchParent (int (arg "--parent"))
        // User code in workers prints freely: set the console up now, while the worker starts.
        Console.Out.Flush()
        resolveIn AppContext.BaseDirectory

        use socket =
            new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified)

        socket.Connect(UnixDomainSocketEndPoint(arg "--socket"))
        use stream = new NetworkStream(socket, true)
        let mutable run = Unchecked.defaultof<IBatchRunner>
        let mutable go = true

        while go do
            match Wire.readSync stream with
            | None -> go <- false
            | Some(kind, payload) when kind = Wire.Init -> run <- runner (FunctionRef.Decode payload)
            | Some(_, payload) ->
                let reply =
                    try
                        Wire.Results, run.Run payload
                    with e ->
                        Wire.Failure, failure e

                Wire.writeSync stream (fst reply) (snd reply)

        0

/// Starting worker processes, in the parent.
module internal WorkerProcesses =
    let private dotnetHost =
        lazy
            (match Environment.GetEnvironmentVariable "DOTNET_HOST_PATH" with
             | null
             | "" ->
                 let exe =
                     if OperatingSystem.IsWindows() then
                         "dotnet.exe"
                     else
                         "dotnet"

                 let root =
                     Path.GetFullPath(Path.Combine(RuntimeEnvironment.GetRuntimeDirectory(), "..", "..", ".."))

                 let candidate = Path.Combine(root, exe)
                 if File.Exists candidate then candidate else exe
             | path -> path)

    /// The worker host, shipped next to this assembly.
    let workerPath =
        lazy (Path.Combine(Path.GetDirectoryName(typeof<FunctionRef>.Assembly.Location), "Pyper.Worker.dll"))

    let start (socketPath: string) =
        let psi = ProcessStartInfo(dotnetHost.Value, UseShellExecute = false)

        for a in
            [
                "exec"
                workerPath.Value
                "--socket"
                socketPath
                "--parent"
                string Environment.ProcessId
            ] do
            psi.ArgumentList.Add a

        // Workers exist for CPU-heavy work and start often: methods with loops are compiled
        // optimized at once (no tier-0 code with on-stack replacement), and no time goes to
        // instrumenting code for profile-guided recompilation.
        psi.Environment["DOTNET_TC_QuickJitForLoops"] <- "0"
        psi.Environment["DOTNET_TieredPGO"] <- "0"
        Process.Start psi
