namespace Pyper

open System
open System.Buffers
open System.Buffers.Binary
open System.IO
open System.Runtime.InteropServices
open System.Threading
open System.Threading.Tasks

/// One frame being built in a reusable buffer: the 5 header bytes are reserved first, the payload
/// is appended, and `Seal` fills the header in, so that a frame leaves in one write.
[<Sealed>]
type internal FrameBuffer() =
    let mutable buffer = ArrayBufferWriter<byte>()

    /// Starts a frame: clears the buffer and reserves the header.
    member _.Begin() =
        if buffer.Capacity > 2 * Wire.BatchBytes then
            buffer <- ArrayBufferWriter<byte>() // a huge item grew it: let it go

        buffer.ResetWrittenCount()
        buffer.GetSpan(5).Clear()
        buffer.Advance 5

    /// Where the payload goes.
    member _.Writer = buffer

    /// How many payload bytes are written.
    member _.PayloadLength = buffer.WrittenCount - 5

    /// The whole frame, its header filled in with `kind` and the payload's length.
    member _.Seal(kind: byte) : ReadOnlyMemory<byte> =
        let frame = MemoryMarshal.AsMemory buffer.WrittenMemory
        BinaryPrimitives.WriteInt32LittleEndian(frame.Span, frame.Length - 5)
        frame.Span[4] <- kind
        buffer.WrittenMemory

/// Reads frames from a stream through one reusable buffer: a small frame and the header of the
/// next often come in one read. The payload stays valid until the next read.
[<Sealed>]
type internal FrameReader(s: Stream) =
    let mutable buf = Array.zeroCreate<byte> 65536
    let mutable start = 0
    let mutable stop = 0
    let mutable kind = 0uy
    let mutable payload = 0
    let mutable length = 0

    /// Makes room for `n` bytes from `start` (moving what is unread to the front, growing if needed).
    member private _.Room(n: int) =
        if start + n > buf.Length then
            let target =
                if n > buf.Length then
                    Array.zeroCreate<byte>(max n (2 * buf.Length))
                else
                    buf

            Buffer.BlockCopy(buf, start, target, 0, stop - start)
            buf <- target
            stop <- stop - start
            start <- 0

    member private this.Parse() =
        kind <- buf[start + 4]
        length <- BinaryPrimitives.ReadInt32LittleEndian(ReadOnlySpan(buf, start, 4))
        payload <- start + 5
        start <- payload + length

    /// The kind of the frame just read.
    member _.Kind = kind

    /// The payload of the frame just read.
    member _.Payload = ReadOnlySpan(buf, payload, length)

    /// The payload's bytes after the first `skip`.
    member _.PayloadFrom(skip: int) =
        ReadOnlySpan(buf, payload + skip, length - skip)

    /// Reads until `n` bytes from `start` are in the buffer; false at the end of the stream.
    member private this.Fill(n: int, ct: CancellationToken) : ValueTask<bool> =
        if stop - start >= n then
            ValueTask<bool>(true)
        else
            this.Room n

            ValueTask<bool>(
                task {
                    let mutable eof = false

                    while not eof && stop - start < n do
                        let! got = s.ReadAsync(buf.AsMemory(stop), ct)
                        if got = 0 then eof <- true else stop <- stop + got

                    return not eof
                }
            )

    /// The next frame (awaiting); false when the other side has gone.
    member this.ReadAsync(ct: CancellationToken) : Task<bool> =
        task {
            let! ok = this.Fill(5, ct)

            if not ok then
                return false
            else
                let n = BinaryPrimitives.ReadInt32LittleEndian(ReadOnlySpan(buf, start, 4))
                let! ok = this.Fill(5 + n, ct)

                if ok then
                    this.Parse()

                return ok
        }

    member private this.FillSync(n: int) =
        if stop - start >= n then
            true
        else
            this.Room n
            let mutable eof = false

            while not eof && stop - start < n do
                let got = s.Read(buf, stop, buf.Length - stop)
                if got = 0 then eof <- true else stop <- stop + got

            not eof

    /// The next frame (blocking, the worker's side); false when the other side has gone.
    member this.Read() =
        if not (this.FillSync 5) then
            false
        else
            let n = BinaryPrimitives.ReadInt32LittleEndian(ReadOnlySpan(buf, start, 4))

            if this.FillSync(5 + n) then
                this.Parse()
                true
            else
                false
