/// A join's input stream (read as a blocking sequence and as an async stream) and the process
/// framing (written and read blocking and awaiting, in every combination): one contract each.
module Pyper.Tests.Primitives.StreamTests

open System
open System.Collections.Generic
open System.IO
open System.Threading
open System.Threading.Tasks
open Expecto
open Pyper
open Pyper.Tests.Helpers
open Pyper.Tests.Primitives.QueueTests

/// How a join reads its input stream: every item, as a list.
type internal Reader =
    {
        Name: string
        Read: QueueStream<int> -> Task<int list>
    }

let private blockingReader =
    {
        Name = "sequence"
        Read = fun s -> onThread (fun () -> List.ofSeq (s :> seq<int>))
    }

let private asyncReader =
    {
        Name = "async stream"
        Read =
            fun s ->
                task {
                    let e = (s :> IAsyncEnumerable<int>).GetAsyncEnumerator CancellationToken.None
                    let acc = ResizeArray()

                    while! e.MoveNextAsync() do
                        acc.Add e.Current

                    do! e.DisposeAsync()
                    return List.ofSeq acc
                }
    }

let private joinStream (reader: Reader) =
    testList
        reader.Name
        [
            testCase "reads every item in order, across batches, until the queue completes" (fun () ->
                let q = BatchQueue<int>(0)
                let n = 3 * Tuning.MaxBatch + 5
                let read = reader.Read(QueueStream q)
                withinGuard "the writes" (fun () -> (task { do! awaiting.Write q [| 1..n |] }: Task<unit>))
                q.Complete()
                Expect.equal (withinGuard "the reader" (fun () -> read)) [ 1..n ] "in order")

            testCase "items leave the queue as they are read: a small queue lets a long stream through" (fun () ->
                let q = BatchQueue<int>(4)
                let writer = awaiting.Write q [| 1..1000 |]
                let read = reader.Read(QueueStream q)
                withinGuard "the writer" (fun () -> (task { do! writer }: Task<unit>))
                q.Complete()
                Expect.equal (withinGuard "the reader" (fun () -> read)) [ 1..1000 ] "all of them")

            testCase "the stream can be enumerated only once" (fun () ->
                let q = BatchQueue<int>(0)
                q.Complete()
                let s = QueueStream q
                Expect.equal (withinGuard "the first read" (fun () -> reader.Read s)) [] "empty"

                let e =
                    catchExn (fun () -> withinGuard "a second read" (fun () -> reader.Read s) |> ignore)

                Expect.isTrue (e :? InvalidOperationException) $"refused, got {e.GetType().Name}"
                Expect.stringContains e.Message "only once" "says why")

            testCase "an aborted queue stops a waiting reader with RunAbortedException" (fun () ->
                let q = BatchQueue<int>(0)
                let read = reader.Read(QueueStream q)
                waitUntil "the reader to wait" (fun () -> q.HasWaitingReader)
                (q :> IAbortable).Abort()
                let e = catchExn (fun () -> withinGuard "the reader" (fun () -> read) |> ignore)
                Expect.isTrue (e :? RunAbortedException) $"RunAbortedException, got {e.GetType().Name}")
        ]

/// A stream that gives at most 3 bytes per read, as a socket may: frames must be reassembled.
type private Trickle(inner: Stream) =
    inherit Stream()
    override _.CanRead = true
    override _.CanSeek = false
    override _.CanWrite = false
    override _.Length = raise (NotSupportedException())

    override _.Position
        with get () = raise (NotSupportedException())
        and set _ = raise (NotSupportedException())

    override _.Flush() = ()
    override _.Read(buffer: byte[], offset, count) = inner.Read(buffer, offset, min count 3)

    override _.Read(buffer: Span<byte>) =
        inner.Read(buffer.Slice(0, min buffer.Length 3))

    override _.ReadAsync(buffer: Memory<byte>, ct: CancellationToken) =
        inner.ReadAsync(buffer.Slice(0, min buffer.Length 3), ct)

    override _.Seek(_, _) = raise (NotSupportedException())
    override _.SetLength _ = raise (NotSupportedException())
    override _.Write(_, _, _) = raise (NotSupportedException())

/// How one side writes frames and the other reads them.
type Framing =
    {
        Name: string
        Write: Stream -> byte -> byte[] -> unit
        Read: Stream -> (byte * byte[]) option
    }

let private framings =
    let writeSync s kind payload = Wire.writeSync s kind payload

    let writeAsync s kind payload =
        (Wire.write s kind payload CancellationToken.None).GetAwaiter().GetResult()

    let readSync s = Wire.readSync s

    let readAsync s =
        (Wire.read s CancellationToken.None).GetAwaiter().GetResult()

    [
        for wname, write in [ "blocking", writeSync; "awaiting", writeAsync ] do
            for rname, read in [ "blocking", readSync; "awaiting", readAsync ] do
                {
                    Name = $"written {wname}, read {rname}"
                    Write = write
                    Read = read
                }
    ]

let private framing (f: Framing) =
    let written (frames: (byte * byte[]) list) =
        let buffer = new MemoryStream()

        for kind, payload in frames do
            f.Write buffer kind payload

        buffer.ToArray()

    let readAll (bytes: byte[]) =
        let s = new Trickle(new MemoryStream(bytes))
        List.unfold (fun () -> f.Read s |> Option.map (fun frame -> frame, ())) ()

    testList
        f.Name
        [
            testCase "frames arrive whole and in order, whatever the reads' sizes" (fun () ->
                let big = Array.init 200_000 byte

                let frames =
                    [
                        Wire.Init, "init"B
                        Wire.Batch, [||]
                        Wire.Results, big
                        Wire.Failure, "boom"B
                    ]

                let back = readAll (written frames)
                Expect.equal (List.map fst back) (List.map fst frames) "the kinds"
                Expect.isTrue (List.forall2 (fun (_, a) (_, b) -> a = b) back frames) "the payloads")

            testCase "the end of the stream, even mid-frame, reads as the other side gone" (fun () ->
                let bytes = written [ Wire.Batch, "12345"B ]
                Expect.equal (readAll [||]) [] "empty: gone"

                for cut in [ 1; 4; 5; 7; bytes.Length - 1 ] do
                    Expect.equal (readAll (Array.sub bytes 0 cut)) [] $"cut after {cut} bytes: gone"

                Expect.equal (readAll bytes).Length 1 "whole: one frame")
        ]

let tests =
    testList
        "streams"
        [
            testList "join input stream" [ joinStream blockingReader; joinStream asyncReader ]
            testList "process framing" [ for f in framings -> framing f ]
            testCase "a function reference survives its encoding, '|' in the path included" (fun () ->
                let r =
                    {
                        Assembly = "/tmp/a|b/Lib.dll"
                        TypeToken = 0x02000005
                        MethodToken = 0x06000011
                        Instance = true
                        TypeArgs = [| typeof<int>.AssemblyQualifiedName |]
                        MethodArgs =
                            [|
                                typeof<string>.AssemblyQualifiedName
                                typeof<int list>.AssemblyQualifiedName
                            |]
                    }

                Expect.equal (FunctionRef.Decode(r.Encode())) r "the same reference")
        ]
