namespace Pyper

open System
open System.Collections.Generic
open System.Buffers
open System.Diagnostics
open System.IO
open System.Threading

/// What a process stage's function does with its items, sent to the worker with the function.
type internal Shape =
    /// One result per item.
    | Map = 0uy
    /// A sequence of results per item.
    | Branch = 1uy
    /// The whole input stream in, one result out.
    | Join = 2uy
    /// The whole input stream in, a sequence of results out.
    | JoinMany = 3uy

/// Thrown in a worker when its parent has closed the connection (the run stopped): the worker ends.
[<Sealed>]
type internal ParentGoneException(inner: exn) =
    inherit Exception("The parent closed the connection.", inner)

/// The worker's side of the frames: the reader of the parent's frames and a buffer for replies.
[<Sealed>]
type internal WorkerLink(stream: Stream) =
    let frame = FrameBuffer()
    member val Reader = FrameReader(stream)

    /// Starts a reply.
    member _.Begin() = frame.Begin()
    member _.Frame = frame

    /// Sends the reply being built as a frame of `kind`.
    member _.Send(kind: byte) =
        let m = frame.Seal kind

        try
            stream.Write m.Span
            stream.Flush()
        with :? IOException as e ->
            raise (ParentGoneException e)

    /// Sends a failure: its brief frame first (type and message: the parent stops the run on it),
    /// then the full one, whose first encoding costs a cold process tens of milliseconds.
    member this.SendFailure(e: exn) =
        this.Begin()
        frame.Writer.Write(ReadOnlySpan(RemoteFailures.brief e))
        this.Send Wire.BriefFailure
        this.Begin()
        frame.Writer.Write(ReadOnlySpan(RemoteFailures.encode e))
        this.Send Wire.Failure

    /// The next frame of the parent; throws ParentGoneException when it has gone.
    member this.Next() =
        let ok =
            try
                this.Reader.Read()
            with :? IOException as e ->
                raise (ParentGoneException e)

        if not ok then
            raise (ParentGoneException null)

/// Serves a process stage in the worker: map and branch stages batch by batch, a join stage its
/// whole input stream at once.
type internal IStageRunner =
    abstract Shape: Shape
    /// Answers one Batch frame's payload (map, branch): Chunk frames if any, then Results.
    abstract Batch: payload: ReadOnlySpan<byte> * link: WorkerLink -> unit
    /// Reads Batch frames up to End and answers (join): Chunk frames if any, then Results.
    abstract Join: link: WorkerLink -> unit

/// Results waiting to leave a worker: sent as a Chunk frame when MaxBatch items or about
/// Wire.BatchBytes are waiting, the rest with the final Results frame.
[<Sealed>]
type internal Pending<'b>(link: WorkerLink) =
    let codec = Codecs.get<'b>()
    let items = Array.zeroCreate<'b> Tuning.MaxBatch
    let mutable k = 0

    /// Writes items into the frame being built; with `all`, every waiting item, else one chunk's worth.
    member private _.Put(all: bool) =
        let n =
            try
                codec.Write(items, 0, k, (if all then Int32.MaxValue else Wire.BatchBytes), link.Frame.Writer)
            with e ->
                raise (ResultsNotSerializableException e)

        Array.Copy(items, n, items, 0, k - n)
        Array.Clear(items, k - n, n)
        k <- k - n

    /// Sends what waits as Chunk frames (after the function's item, or before reading more input).
    member this.Flush() =
        while k > 0 do
            link.Begin()
            this.Put false
            link.Send Wire.Chunk

    member this.Add(x: 'b) =
        items[k] <- x
        k <- k + 1

        if k = items.Length then
            this.Flush()

    /// The final Results frame: the function's time (TimeSpan ticks, 8 bytes), then what waits.
    member this.Finish(cost: int64) =
        link.Begin()
        let span = link.Frame.Writer.GetSpan 8
        Buffers.Binary.BinaryPrimitives.WriteInt64LittleEndian(span, cost)
        link.Frame.Writer.Advance 8

        while k > 0 do
            this.Put true

        link.Send Wire.Results

/// Map and branch stages: one Batch frame in, its results out.
[<Sealed>]
type internal ItemRunner<'a, 'b, 'r>(shape: Shape, f: Func<'a, 'r>, pour: 'r -> Pending<'b> -> unit) =
    let input = Codecs.get<'a>()
    let items = Array.zeroCreate<'a> Tuning.MaxBatch
    let mutable pending: Pending<'b> = Unchecked.defaultof<_>

    interface IStageRunner with
        member _.Shape = shape

        member _.Batch(payload, link) =
            if isNull (box pending) then
                pending <- Pending<'b>(link)

            let n = input.Read(payload, items, 0)
            let clock = Stopwatch.StartNew()

            try
                for i in 0 .. n - 1 do
                    pour (f.Invoke items[i]) pending
            finally
                Array.Clear(items, 0, n)

            pending.Finish clock.Elapsed.Ticks

        member _.Join _ =
            raise (InvalidOperationException "not a join stage")

/// Join stages: the Batch frames up to End are the function's input stream.
[<Sealed>]
type internal JoinRunner<'a, 'b, 'r>(shape: Shape, f: Func<IEnumerable<'a>, 'r>, pour: 'r -> Pending<'b> -> unit) =
    let input = Codecs.get<'a>()

    /// The input stream: reads the next frame when it needs more items, sending the results that
    /// wait first (a join that yields as it reads is not held back by its input).
    let stream (link: WorkerLink) (pending: Pending<'b>) (ended: bool ref) =
        let buf = Array.zeroCreate<'a> Tuning.MaxBatch
        let mutable claimed = false

        { new IEnumerable<'a> with
            member _.GetEnumerator() : IEnumerator<'a> =
                if claimed then
                    raise (InvalidOperationException "A join stage's input stream can be enumerated only once.")

                claimed <- true

                (seq {
                    while not ended.Value do
                        pending.Flush()

                        link.Next()

                        if link.Reader.Kind = Wire.End then
                            ended.Value <- true
                        else
                            let n = input.Read(link.Reader.Payload, buf, 0)

                            for i in 0 .. n - 1 do
                                let x = buf[i]
                                buf[i] <- Unchecked.defaultof<'a>
                                yield x
                })
                    .GetEnumerator()
          interface Collections.IEnumerable with
              member this.GetEnumerator() =
                  (this :?> IEnumerable<'a>).GetEnumerator() :> Collections.IEnumerator
        }

    interface IStageRunner with
        member _.Shape = shape

        member _.Batch(_, _) =
            raise (InvalidOperationException "a join stage takes no single batches")

        member _.Join link =
            let pending = Pending<'b>(link)
            let ended = ref false
            let clock = Stopwatch.StartNew()

            let failure =
                try
                    pour (f.Invoke(stream link pending ended)) pending
                    null
                with e ->
                    e

            // The answer first (the parent stops sending once it has it), then the rest of the
            // input, unread by the function: the frame after End belongs to the next stage served.
            match failure with
            | null -> pending.Finish clock.Elapsed.Ticks
            | e -> link.SendFailure e

            while not ended.Value do
                link.Next()

                if link.Reader.Kind = Wire.End then
                    ended.Value <- true

module internal Runners =
    /// The element type of a sequence type (its first IEnumerable<T>), or null.
    let elementOf (t: Type) : Type =
        let isSeq (i: Type) =
            i.IsGenericType
            && Type.op_Equality (i.GetGenericTypeDefinition(), typedefof<IEnumerable<int>>)

        if isSeq t then
            t.GetGenericArguments()[0]
        else
            match t.GetInterfaces() |> Array.tryFind isSeq with
            | Some i -> i.GetGenericArguments()[0]
            | None -> null

    /// The item and result types a worker reads and writes for a method of `shape`: the
    /// parameter's and return type's own, or their elements where the shape takes or gives sequences.
    let itemTypes (shape: Shape) (m: Reflection.MethodInfo) : Type * Type =
        let p = (m.GetParameters()[0]).ParameterType

        match shape with
        | Shape.Map -> p, m.ReturnType
        | Shape.Branch -> p, elementOf m.ReturnType
        | Shape.Join -> elementOf p, m.ReturnType
        | _ -> elementOf p, elementOf m.ReturnType

    let private one (x: 'b) (p: Pending<'b>) = p.Add x

    let private many (xs: IEnumerable<'b>) (p: Pending<'b>) =
        for x in NullResult.sequence xs do
            p.Add x

    /// A runner for `f` (a delegate of the method's own types: 'a -> 'b, 'a -> seq<'b>,
    /// seq<'a> -> 'b or seq<'a> -> seq<'b> by `shape`).
    let make<'a, 'b> (shape: Shape) (f: Delegate) : IStageRunner =
        match shape with
        | Shape.Map -> ItemRunner<'a, 'b, 'b>(shape, f :?> Func<'a, 'b>, one)
        | Shape.Branch -> ItemRunner<'a, 'b, IEnumerable<'b>>(shape, f :?> Func<'a, IEnumerable<'b>>, many)
        | Shape.Join -> JoinRunner<'a, 'b, 'b>(shape, f :?> Func<IEnumerable<'a>, 'b>, one)
        | _ -> JoinRunner<'a, 'b, IEnumerable<'b>>(shape, f :?> Func<IEnumerable<'a>, IEnumerable<'b>>, many)
