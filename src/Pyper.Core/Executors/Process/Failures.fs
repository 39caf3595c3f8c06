namespace Pyper

open System
open System.Reflection
open System.Runtime.CompilerServices
open System.Text.Json
open System.Threading
open Microsoft.FSharp.Reflection

/// A value of a failure (a Data entry, an ActualValue, an F# exception's field) as JSON of its own type.
type internal RemoteValue = { Type: string; Json: string }

/// A `Data` entry of a failure.
type internal RemoteEntry = { Key: string; Value: RemoteValue }

module internal FailuresNative =
    /// Lowers a thread's priority (Linux: per thread).
    [<System.Runtime.InteropServices.DllImport("libc", EntryPoint = "setpriority")>]
    extern int setpriority(int which, int who, int prio)

/// What a worker sends back when the function throws: enough to rebuild the exception in the parent.
type internal RemoteFailure =
    {
        /// Assembly-qualified.
        Type: string
        Message: string
        StackTrace: string
        ParamName: string option
        ObjectName: string option
        ActualValue: RemoteValue option
        HResult: int
        Data: RemoteEntry list
        /// An F# exception's fields, in order.
        Fields: RemoteValue list option
        Inner: RemoteFailure option
        /// True when the function succeeded but its results could not be serialized.
        Results: bool
    }

/// Thrown in a worker when a batch's results cannot be serialized.
type internal ResultsNotSerializableException(inner: exn) =
    inherit Exception("The results cannot be serialized.", inner)

/// Exceptions across the process boundary, in the worker: captured as data and written as a
/// failure frame (see `RemoteExceptions` for the parent's side).
module internal RemoteFailures =
    let internal safe (f: unit -> 'T) (fallback: 'T) =
        try
            f ()
        with _ ->
            fallback

    /// Values that cross as failure details: plain ones, that the parent rebuilds without
    /// creating any object graph because of the wire.
    let internal isPlain (t: Type) =
        t.IsPrimitive
        || t.IsEnum
        || t = typeof<string>
        || t = typeof<decimal>
        || t = typeof<Guid>
        || t = typeof<DateTime>
        || t = typeof<DateTimeOffset>
        || t = typeof<TimeSpan>

    /// `v` as JSON of `t` (its declared type for an F# exception's field, else its own and plain).
    [<MethodImpl(MethodImplOptions.NoInlining)>]
    let internal value (t: Type) (v: obj) : RemoteValue option =
        match v with
        | null -> None
        | v ->
            safe
                (fun () ->
                    Some
                        {
                            Type = t.AssemblyQualifiedName
                            Json = JsonSerializer.Serialize(v, t, Wire.options)
                        })
                None

    let private plainValue (v: obj) =
        match v with
        | null -> None
        | v when isPlain (v.GetType()) -> value (v.GetType()) v
        | _ -> None

    /// An F# `exception` declaration (checked by its attribute: F# reflection costs a cold worker a lot).
    let private isFSharpException (t: Type) =
        t.GetCustomAttributes(typeof<CompilationMappingAttribute>, false)
        |> Array.exists (fun a ->
            (a :?> CompilationMappingAttribute).SourceConstructFlags
            &&& SourceConstructFlags.KindMask
                =
                SourceConstructFlags.Exception)

    /// An F# exception's fields (JSON: apart from `capture`, so that compiling `capture` does not
    /// load the serializer, which cost a cold worker process tens of milliseconds at its first failure).
    [<MethodImpl(MethodImplOptions.NoInlining)>]
    let private fsharpFields (t: Type) (e: exn) : RemoteValue list option =
        let types = FSharpType.GetExceptionFields(t, true)
        let values = FSharpValue.GetExceptionFields(e, true)

        let json =
            Array.map2
                (fun (p: PropertyInfo) (v: obj) ->
                    {
                        Type = p.PropertyType.AssemblyQualifiedName
                        Json = JsonSerializer.Serialize(v, p.PropertyType, Wire.options)
                    })
                types
                values

        Some(List.ofArray json)

    /// The plain `Data` entries of `e` (apart from `capture`, like `fsharpFields`).
    [<MethodImpl(MethodImplOptions.NoInlining)>]
    let private dataEntries (e: exn) : RemoteEntry list =
        [
            for k in e.Data.Keys do
                match k, plainValue e.Data[k] with
                | (:? string as k), Some v -> { Key = k; Value = v }
                | _ -> ()
        ]

    let rec private capture (depth: int) (e: exn) : RemoteFailure =
        let t = e.GetType()

        let message =
            safe (fun () -> e.Message) $"(the exception's Message threw) {t.FullName}"
        // Without file names and line numbers: reading a cold worker's symbol files would
        // delay the failure by 50-150 ms, while the other workers' results flow on.
        let stackTrace =
            safe (fun () -> Diagnostics.StackTrace(e, false).ToString().TrimEnd()) ""

        let fields =
            safe (fun () -> if isFSharpException t then fsharpFields t e else None) None

        let data = safe (fun () -> if e.Data.Count = 0 then [] else dataEntries e) []

        {
            Type = t.AssemblyQualifiedName
            Message = message
            StackTrace = stackTrace
            ParamName =
                match e with
                | :? ArgumentException as a -> safe (fun () -> Option.ofObj a.ParamName) None
                | _ -> None
            ObjectName =
                match e with
                | :? ObjectDisposedException as o -> safe (fun () -> Option.ofObj o.ObjectName) None
                | _ -> None
            ActualValue =
                match e with
                | :? ArgumentOutOfRangeException as a -> safe (fun () -> plainValue a.ActualValue) None
                | _ -> None
            HResult = e.HResult
            Data = data
            Fields = fields
            Inner =
                match e.InnerException with
                | null -> None
                | _ when depth >= 8 -> None
                | inner -> Some(capture (depth + 1) inner)
            Results = false
        }

    // Written and read by hand, in a binary layout (`BinaryWriter`: length-prefixed UTF-8
    // strings, little-endian numbers): a serializer contract for these records would cost a cold
    // worker (and the parent) the better part of a second at the first failure, and even JSON
    // written by hand cost a cold worker process 90-100 ms of a loaded machine (loading and
    // compiling the JSON writer), while the run's consumer waited for these details.
    let private writeString (w: IO.BinaryWriter) (s: string) =
        w.Write(not (isNull s))

        if not (isNull s) then
            w.Write s

    let private writeValue (w: IO.BinaryWriter) (v: RemoteValue) =
        writeString w v.Type
        writeString w v.Json

    let private writeOption (w: IO.BinaryWriter) (write: 'T -> unit) (v: 'T option) =
        w.Write v.IsSome
        Option.iter write v

    let rec private write (w: IO.BinaryWriter) (f: RemoteFailure) =
        writeString w f.Type
        writeString w f.Message
        writeString w f.StackTrace
        writeOption w (writeString w) f.ParamName
        writeOption w (writeString w) f.ObjectName
        writeOption w (writeValue w) f.ActualValue
        w.Write f.HResult
        w.Write f.Data.Length

        for d in f.Data do
            writeString w d.Key
            writeValue w d.Value

        writeOption
            w
            (fun (fields: RemoteValue list) ->
                w.Write fields.Length
                List.iter (writeValue w) fields)
            f.Fields

        writeOption w (write w) f.Inner
        w.Write f.Results

    /// A captured failure as the full failure frame's payload (binary; `read` reads it back).
    let internal toBytes (f: RemoteFailure) =
        use buffer = new IO.MemoryStream()
        use w = new IO.BinaryWriter(buffer, Text.Encoding.UTF8)
        write w f
        w.Flush()
        buffer.ToArray()

    let private readString (r: IO.BinaryReader) =
        if r.ReadBoolean() then r.ReadString() else null

    let private readValue (r: IO.BinaryReader) =
        let t = readString r
        { Type = t; Json = readString r }

    let private readOption (r: IO.BinaryReader) (read: unit -> 'T) =
        if r.ReadBoolean() then Some(read ()) else None

    /// A failure from `encode`'s payload.
    let rec internal read (r: IO.BinaryReader) : RemoteFailure =
        let t = readString r
        let message = readString r
        let stackTrace = readString r
        let paramName = readOption r (fun () -> readString r)
        let objectName = readOption r (fun () -> readString r)
        let actualValue = readOption r (fun () -> readValue r)
        let hResult = r.ReadInt32()

        let data =
            List.init (r.ReadInt32()) (fun _ ->
                let key = readString r
                { Key = key; Value = readValue r })

        let fields =
            readOption r (fun () -> List.init (r.ReadInt32()) (fun _ -> readValue r))

        let inner = readOption r (fun () -> read r)

        {
            Type = t
            Message = message
            StackTrace = if isNull stackTrace then "" else stackTrace
            ParamName = paramName
            ObjectName = objectName
            ActualValue = actualValue
            HResult = hResult
            Data = data
            Fields = fields
            Inner = inner
            Results = r.ReadBoolean()
        }

    /// The exception to describe, and whether it is about the results (not the function).
    let private unwrap (e: exn) =
        match e with
        | :? ResultsNotSerializableException as r when not (isNull r.InnerException) -> r.InnerException, true
        | e -> e, false

    /// The brief failure frame's payload for `e`: a flag (1 when the results could not be sent),
    /// the HResult (4 bytes), then the type's assembly-qualified name and the message in UTF-8,
    /// after a newline. No reflection and no serializer: a cold worker process takes tens of milliseconds
    /// to `encode` its first exception, while the other workers' results would flow on. Never throws.
    let brief (e: exn) : byte[] =
        let e, results = unwrap e
        let typeName = safe (fun () -> e.GetType().AssemblyQualifiedName) "System.Exception"

        let message =
            safe (fun () -> e.Message) $"(the exception's Message threw) {safe (fun () -> e.GetType().FullName) null}"

        let text = Text.Encoding.UTF8.GetBytes(typeName + "\n" + message)
        let payload = Array.zeroCreate<byte>(5 + text.Length)
        payload[0] <- if results then 1uy else 0uy
        Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(Span(payload, 1, 4), e.HResult)
        Array.blit text 0 payload 5 text.Length
        payload

    /// What a brief failure frame says (no stack trace, data or fields).
    let readBrief (payload: byte[]) : RemoteFailure =
        let text = Text.Encoding.UTF8.GetString(payload, 5, payload.Length - 5)
        let newline = text.IndexOf '\n'

        {
            Type = text.Substring(0, newline)
            Message = text.Substring(newline + 1)
            StackTrace = ""
            ParamName = None
            ObjectName = None
            ActualValue = None
            HResult = Buffers.Binary.BinaryPrimitives.ReadInt32LittleEndian(ReadOnlySpan(payload, 1, 4))
            Data = []
            Fields = None
            Inner = None
            Results = payload[0] = 1uy
        }

    /// The failure frame's payload for `e` (never throws: a worker must survive any exception).
    let encode (e: exn) : byte[] =
        let e, results = unwrap e

        try
            toBytes { capture 0 e with Results = results }
        with _ ->
            toBytes
                {
                    Type = safe (fun () -> e.GetType().AssemblyQualifiedName) "System.Exception"
                    Message = "(the exception could not be serialized)"
                    StackTrace = ""
                    ParamName = None
                    ObjectName = None
                    ActualValue = None
                    HResult = 0
                    Data = []
                    Fields = None
                    Inner = None
                    Results = results
                }

    /// Compiles the capture and encoding path once per process, on a pool thread (cold, encoding
    /// one exception costs tens of milliseconds: the runtime's stack-trace formatting reads
    /// metadata and attributes the first time). The parent's side (`RemoteExceptions.warmUp`)
    /// uses it once; worker processes use `warmUpInBackground`.
    let warmUp =
        let once =
            lazy
                (ThreadPool.UnsafeQueueUserWorkItem(
                    (fun _ ->
                        try
                            raise (InvalidOperationException "warm-up")
                        with e ->
                            encode e |> ignore),
                    null
                 )
                 |> ignore)

        fun () -> once.Force()

    /// A worker process's warm-up: encodes one exception (brief and full frames) on a background
    /// thread at the lowest priority (nice 19 on Linux), so that the first real failure is sent in
    /// well under a millisecond instead of 10-40 ms, while the warm-up takes only CPU time that
    /// nothing else wants: twenty workers warming up at normal priority made the README example
    /// about 0.3 s slower.
    let warmUpInBackground () =
        let warm () =
            try
                if OperatingSystem.IsLinux() then
                    // PRIO_PROCESS with who = 0 is the calling thread on Linux.
                    FailuresNative.setpriority (0, 0, 19) |> ignore
                elif OperatingSystem.IsWindows() then
                    Thread.CurrentThread.Priority <- ThreadPriority.Lowest

                try
                    raise (InvalidOperationException "warm-up")
                with e ->
                    brief e |> ignore
                    encode e |> ignore
            with _ ->
                () // a warm-up that fails costs the first failure its speed, nothing else

        Thread(warm, IsBackground = true, Name = "Pyper/warm-up").Start()
