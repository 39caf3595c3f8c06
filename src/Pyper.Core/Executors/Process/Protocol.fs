namespace Pyper

open System
open System.IO
open System.Text.Json
open System.Text.Json.Serialization
open System.Threading
open System.Threading.Tasks

/// Frames between the parent and a worker process: a 4-byte length, a kind byte, a payload.
/// Items travel as the function's own parameter and result types, encoded by `Codecs` (raw bytes for
/// byte arrays, strings and primitive numbers; JSON arrays for the rest).
module internal Wire =
    [<Literal>]
    let Init = 1uy

    [<Literal>]
    let Batch = 2uy

    [<Literal>]
    let Results = 3uy

    [<Literal>]
    let Failure = 4uy

    /// Some of a branch's or join's results, before the batch's (or the join's) final Results.
    [<Literal>]
    let Chunk = 5uy

    /// The end of a join stage's input (the parent's last frame of a join).
    [<Literal>]
    let End = 6uy

    /// Like `Init`, with a bound argument: the function's encoding's length (4 bytes), the
    /// encoding, then the argument as JSON.
    [<Literal>]
    let InitBound = 7uy

    /// A failure's first word, sent before its `Failure` frame: the exception's type and message
    /// only, so that the parent stops the run before the worker has encoded the rest.
    [<Literal>]
    let BriefFailure = 8uy

    /// Like `Init`, for a map stage with per-worker state: `recycleAfter` (4 bytes; 0: never),
    /// then the encodings of `init`, `f` and `dispose`, each after its length (4 bytes; a
    /// `dispose` of length 0: none). The worker makes its state at once; a failure of `init`
    /// answers the next Batch or Release (as `StateFailure`).
    [<Literal>]
    let InitState = 9uy

    /// The parent's last frame to a worker with per-worker state whose stage ended cleanly (no
    /// payload): the worker disposes its state and answers Results (no items) or `StateFailure`;
    /// only then may the worker process park and serve another stage.
    [<Literal>]
    let Release = 10uy

    /// A worker's `init` or `dispose` failed (the failure's full encoding): the run fails with it,
    /// whatever the stage's `onError` says.
    [<Literal>]
    let StateFailure = 11uy

    /// FSharp.SystemTextJson for F# types only: asking it about every other type (int, arrays)
    /// would load F# reflection into each fresh worker process for nothing.
    [<Sealed>]
    type private FSharpTypesOnly() =
        inherit JsonConverterFactory()
        let inner = JsonFSharpConverter()

        static let isFSharp (t: Type) =
            t.IsDefined(typeof<CompilationMappingAttribute>, false)
            || (t.IsGenericType
                && (t.FullName.StartsWith "System.Tuple`"
                    || t.GetGenericTypeDefinition() = typedefof<Map<int, int>>
                    || t.GetGenericTypeDefinition() = typedefof<Set<int>>))

        override _.CanConvert t = isFSharp t && inner.CanConvert t
        override _.CreateConverter(t, o) = inner.CreateConverter(t, o)

    /// True for the types FSharp.SystemTextJson converts (F# records, unions, options, lists,
    /// maps, sets and tuples).
    let isFSharpConverted: Type -> bool =
        let c = FSharpTypesOnly()
        fun t -> c.CanConvert t

    /// One serializer setup on both sides: System.Text.Json with F# records, unions, options and
    /// tuples, public fields (value tuples, C# structs with fields) and NaN/infinity.
    let options =
        let o = JsonSerializerOptions(JsonSerializerDefaults.General)
        o.IncludeFields <- true
        o.NumberHandling <- JsonNumberHandling.AllowNamedFloatingPointLiterals
        o.Converters.Add(FSharpTypesOnly())
        // Read-only with the default resolver now: the stage builder asks it for contracts.
        o.MakeReadOnly(populateMissingResolver = true)
        o

    /// A batch's JSON stops growing at about this many bytes; the rest of the items go in the
    /// next frame (an item larger than this goes alone).
    [<Literal>]
    let BatchBytes = 4_194_304

    /// Writes `items[start..]` as one JSON array into `buffer` (cleared first), stopping once it
    /// holds `BatchBytes` or `count` items; answers how many items it wrote (at least one).
    let serializeBatch (items: 'a[]) (start: int) (count: int) (buffer: Buffers.ArrayBufferWriter<byte>) =
        buffer.ResetWrittenCount()
        use w = new Utf8JsonWriter(buffer)
        w.WriteStartArray()
        let mutable n = 0

        while n < count && (n = 0 || int w.BytesCommitted + w.BytesPending < BatchBytes) do
            JsonSerializer.Serialize(w, items[start + n], options)
            n <- n + 1

        w.WriteEndArray()
        w.Flush()
        n

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

    /// Like `write`, for a payload in a buffer.
    let writeMemory (s: Stream) (kind: byte) (payload: ReadOnlyMemory<byte>) (ct: CancellationToken) : Task =
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


/// Serializer warm-up: builds the metadata for arrays of 'a and 'b before the first batch.
module internal WireWarmUp =
    let arrays<'a, 'b> () =
        JsonSerializer.SerializeToUtf8Bytes(JsonSerializer.Deserialize<'a[]>("[]", Wire.options), Wire.options)
        |> ignore

        JsonSerializer.SerializeToUtf8Bytes(JsonSerializer.Deserialize<'b[]>("[]", Wire.options), Wire.options)
        |> ignore
