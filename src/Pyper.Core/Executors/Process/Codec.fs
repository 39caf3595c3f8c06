namespace Pyper

open System
open System.Buffers
open System.Buffers.Binary
open System.Runtime.InteropServices
open System.Text.Json
open System.Text.Json.Serialization.Metadata

/// How a process stage's items of one type travel in a frame's payload: byte arrays, byte memory
/// and strings as their own bytes (no base64, no JSON escaping), primitive numbers as their raw
/// bytes, every other type as a JSON array (System.Text.Json, `Wire.options`).
[<AbstractClass>]
type internal Codec<'T>() =
    /// Appends `items[start..]` to `buffer`, stopping once `limit` bytes have been appended or
    /// `count` items written; answers how many items it wrote (at least one when `count` > 0).
    abstract Write: items: 'T[] * start: int * count: int * limit: int * buffer: ArrayBufferWriter<byte> -> int
    /// Reads every item of `payload` into `output` from `offset`; answers how many.
    abstract Read: payload: ReadOnlySpan<byte> * output: 'T[] * offset: int -> int

/// Items as one JSON array, serialized in one call (one call per item costs about five times as
/// much for small items); only a slice whose JSON passes `limit` goes item by item instead.
[<Sealed>]
type internal JsonCodec<'T>() =
    inherit Codec<'T>()
    let info = Wire.options.GetTypeInfo typeof<'T> :?> JsonTypeInfo<'T>

    let slices =
        Wire.options.GetTypeInfo typeof<ReadOnlyMemory<'T>> :?> JsonTypeInfo<ReadOnlyMemory<'T>>

    let arrays = Wire.options.GetTypeInfo typeof<'T[]> :?> JsonTypeInfo<'T[]>

    /// One scratch buffer per thread: stage workers share a type's codec.
    let scratch =
        new Threading.ThreadLocal<ArrayBufferWriter<byte>>(fun () -> ArrayBufferWriter<byte>())

    /// Item by item, stopping once `limit` bytes are written.
    member private _.OneByOne(items: 'T[], start, count, limit, buffer: ArrayBufferWriter<byte>) =
        use w = new Utf8JsonWriter(buffer)
        w.WriteStartArray()
        let mutable n = 0

        while n < count && (n = 0 || int w.BytesCommitted + w.BytesPending < limit) do
            JsonSerializer.Serialize(w, items[start + n], info)
            n <- n + 1

        w.WriteEndArray()
        w.Flush()
        n

    override this.Write(items, start, count, limit, buffer) =
        if count <= 1 then
            this.OneByOne(items, start, count, limit, buffer)
        else
            let json = scratch.Value
            json.ResetWrittenCount()

            do
                use w = new Utf8JsonWriter(json)
                JsonSerializer.Serialize(w, ReadOnlyMemory(items, start, count), slices)

            if json.WrittenCount <= limit then
                buffer.Write json.WrittenSpan

                if json.Capacity > Wire.BatchBytes then
                    scratch.Value <- ArrayBufferWriter<byte>() // keep no big buffer around

                count
            else
                this.OneByOne(items, start, count, limit, buffer)

    override _.Read(payload, output, offset) =
        if payload.IsEmpty then
            0 // no items (a branch's final frame after its chunks)
        else
            let items = JsonSerializer.Deserialize(payload, arrays)
            Array.Copy(items, 0, output, offset, items.Length)
            items.Length

/// Primitive numbers (and bool, char): their bytes as in memory (both sides are this machine).
[<Sealed>]
type internal RawCodec<'T when 'T: unmanaged and 'T: struct and 'T: (new: unit -> 'T) and 'T :> ValueType>() =
    inherit Codec<'T>()

    override _.Write(items, start, count, limit, buffer) =
        let size = sizeof<'T>
        let n = max 1 (min count (limit / size))
        let bytes = MemoryMarshal.AsBytes(ReadOnlySpan<'T>(items, start, n))
        buffer.Write bytes
        n

    override _.Read(payload, output, offset) =
        let src = MemoryMarshal.Cast<byte, 'T>(payload)
        src.CopyTo(Span<'T>(output, offset, src.Length))
        src.Length

/// Length-prefixed blobs: a 4-byte length (-1 for null) and the bytes.
module internal Blobs =
    let inline writeBlob (buffer: ArrayBufferWriter<byte>) (bytes: ReadOnlySpan<byte>) =
        let span = buffer.GetSpan(4 + bytes.Length)
        BinaryPrimitives.WriteInt32LittleEndian(span, bytes.Length)
        bytes.CopyTo(span.Slice 4)
        buffer.Advance(4 + bytes.Length)

    let inline writeNull (buffer: ArrayBufferWriter<byte>) =
        BinaryPrimitives.WriteInt32LittleEndian(buffer.GetSpan 4, -1)
        buffer.Advance 4

    /// The length of the blob at `pos` (-1 for null), moving `pos` to its bytes.
    let inline next (payload: ReadOnlySpan<byte>) (pos: byref<int>) =
        let length = BinaryPrimitives.ReadInt32LittleEndian(payload.Slice pos)
        pos <- pos + 4
        length

/// byte[]: the bytes themselves.
[<Sealed>]
type internal BytesCodec() =
    inherit Codec<byte[]>()

    override _.Write(items, start, count, limit, buffer) =
        let before = buffer.WrittenCount
        let mutable n = 0

        while n < count && (n = 0 || buffer.WrittenCount - before < limit) do
            match items[start + n] with
            | null -> Blobs.writeNull buffer
            | b -> Blobs.writeBlob buffer (ReadOnlySpan b)

            n <- n + 1

        n

    override _.Read(payload, output, offset) =
        let mutable pos = 0
        let mutable n = 0

        while pos < payload.Length do
            let length = Blobs.next payload &pos

            if length < 0 then
                output[offset + n] <- null
            else
                output[offset + n] <- payload.Slice(pos, length).ToArray()
                pos <- pos + length

            n <- n + 1

        n

/// ReadOnlyMemory<byte>: the bytes of each item's span.
[<Sealed>]
type internal MemoryCodec() =
    inherit Codec<ReadOnlyMemory<byte>>()

    override _.Write(items, start, count, limit, buffer) =
        let before = buffer.WrittenCount
        let mutable n = 0

        while n < count && (n = 0 || buffer.WrittenCount - before < limit) do
            Blobs.writeBlob buffer items[start + n].Span
            n <- n + 1

        n

    override _.Read(payload, output, offset) =
        let mutable pos = 0
        let mutable n = 0

        while pos < payload.Length do
            let length = Blobs.next payload &pos
            output[offset + n] <- ReadOnlyMemory(payload.Slice(pos, length).ToArray())
            pos <- pos + length
            n <- n + 1

        n

/// Strings: a tag byte (0 null, 1 UTF-8, 2 UTF-16), a 4-byte length and the bytes. A string that is
/// not well-formed UTF-16 (a lone surrogate) cannot be UTF-8: it goes as its UTF-16 code units, exactly.
[<Sealed>]
type internal StringCodec() =
    inherit Codec<string>()

    override _.Write(items, start, count, limit, buffer) =
        let before = buffer.WrittenCount
        let mutable n = 0

        while n < count && (n = 0 || buffer.WrittenCount - before < limit) do
            match items[start + n] with
            | null ->
                buffer.GetSpan(1)[0] <- 0uy
                buffer.Advance 1
            | s ->
                let span = buffer.GetSpan(5 + s.Length * 3)
                let mutable read = 0
                let mutable written = 0

                let status =
                    Text.Unicode.Utf8.FromUtf16(s.AsSpan(), span.Slice 5, &read, &written, false, true)

                if status = OperationStatus.Done then
                    span[0] <- 1uy
                    BinaryPrimitives.WriteInt32LittleEndian(span.Slice 1, written)
                    buffer.Advance(5 + written)
                else
                    let units = MemoryMarshal.AsBytes(s.AsSpan())
                    let span = buffer.GetSpan(5 + units.Length)
                    span[0] <- 2uy
                    BinaryPrimitives.WriteInt32LittleEndian(span.Slice 1, units.Length)
                    units.CopyTo(span.Slice 5)
                    buffer.Advance(5 + units.Length)

            n <- n + 1

        n

    override _.Read(payload, output, offset) =
        let mutable pos = 0
        let mutable n = 0

        while pos < payload.Length do
            let tag = payload[pos]

            if tag = 0uy then
                output[offset + n] <- null
                pos <- pos + 1
            else
                let length = BinaryPrimitives.ReadInt32LittleEndian(payload.Slice(pos + 1))
                let bytes = payload.Slice(pos + 5, length)

                if tag = 1uy then
                    output[offset + n] <- Text.Encoding.UTF8.GetString bytes
                else
                    output[offset + n] <- String(MemoryMarshal.Cast<byte, char> bytes)

                pos <- pos + 5 + length

            n <- n + 1

        n

/// The codec of each item type, made once.
module internal Codecs =
    /// Type identity without F#'s generic equality, whose first use initializes FSharp.Core's
    /// comparers (about 30 methods compiled in each fresh worker process).
    let private is (t: Type) (u: Type) = Type.op_Equality (t, u)

    let private make (t: Type) : obj =
        if is t typeof<byte[]> then
            BytesCodec()
        elif is t typeof<ReadOnlyMemory<byte>> then
            MemoryCodec()
        elif is t typeof<string> then
            StringCodec()
        elif t.IsPrimitive && not (is t typeof<IntPtr>) && not (is t typeof<UIntPtr>) then
            Activator.CreateInstance(typedefof<RawCodec<int>>.MakeGenericType t)
        else
            Activator.CreateInstance(typedefof<JsonCodec<int>>.MakeGenericType t)

    type private Cache<'T>() =
        static member val Codec = make typeof<'T> :?> Codec<'T>

    /// The codec for items of type 'T.
    let get<'T> () : Codec<'T> = Cache<'T>.Codec
