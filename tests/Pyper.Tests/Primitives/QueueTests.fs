/// The batch queue between stages: one contract, run with blocking access (dedicated threads,
/// `Wait.write` / `Wait.take`) and awaiting access (`Wait.writeWith` / `Wait.takeWith`), on a
/// bounded and an unbounded queue; and async workers reusing one `AsyncWaiter` for every wait.
module Pyper.Tests.Primitives.QueueTests

open System
open System.Threading
open System.Threading.Tasks
open Expecto
open Pyper
open Pyper.Tests.Helpers

/// How a worker reaches the queue.
type internal Access =
    {
        Name: string
        /// Writes all the items, waiting while the queue is full.
        Write: BatchQueue<int> -> int[] -> Task
        /// Takes a batch of at most `max` items (releasing them at once with `release`), waiting
        /// while the queue is empty: the items and the ticket; no items at the end.
        Take: BatchQueue<int> -> int -> bool -> Task<int[] * int64>
    }

/// Runs `f` on a thread of its own, as a dedicated worker would.
let onThread (f: unit -> 'T) : Task<'T> =
    Task.Factory.StartNew(f, TaskCreationOptions.LongRunning)

let internal blocking =
    {
        Name = "blocking"
        Write = fun q xs -> onThread (fun () -> Wait.write q xs xs.Length) :> Task
        Take =
            fun q max release ->
                onThread (fun () ->
                    let buf = Array.zeroCreate max
                    let struct (n, ticket) = Wait.take q buf max release
                    Array.sub buf 0 n, ticket)
    }

let internal awaiting =
    {
        Name = "awaiting"
        Write = fun q xs -> task { do! Wait.writeWith (AsyncWaiter()) q xs xs.Length }
        Take =
            fun q max release ->
                task {
                    let buf = Array.zeroCreate max
                    let! struct (n, ticket) = Wait.takeWith (AsyncWaiter()) q buf max release
                    return Array.sub buf 0 n, ticket
                }
    }

let private await (what: string) (t: Task<'T>) = withinGuard what (fun () -> t)

let private awaitUnit (what: string) (t: Task) =
    withinGuard what (fun () -> (task { do! t }: Task<unit>))

/// Takes (releasing) until the end.
let internal drain (access: Access) (q: BatchQueue<int>) =
    let rec go acc =
        match await "a take" (access.Take q 1024 true) with
        | [||], _ -> List.rev acc
        | xs, _ -> go (List.rev (List.ofArray xs) @ acc)

    go []

let private throwsFrom<'E when 'E :> exn> (what: string) (t: Task) =
    let e = catchExn (fun () -> awaitUnit what t)
    Expect.isTrue (e :? 'E) $"{what}: {typeof<'E>.Name}, got {e.GetType().Name}"

let internal contract (access: Access) (capacity: int) =
    let bounded = capacity > 0
    let name = if bounded then $"capacity {capacity}" else "unbounded"

    testList
        $"{access.Name}, {name}"
        [
            testCase "items leave in the order written, then the end" (fun () ->
                let q = BatchQueue<int>(capacity)
                let writer = access.Write q [| 1..100 |]
                let reader = Task.Run(fun () -> drain access q)
                awaitUnit "the writer" writer
                q.Complete()
                Expect.equal (await "the reader" reader) [ 1..100 ] "in order")

            testCase "a reader waiting on an empty queue is woken by a write" (fun () ->
                let q = BatchQueue<int>(capacity)
                let take = access.Take q 16 true
                waitUntil "the reader to wait" (fun () -> q.HasWaitingReader)
                awaitUnit "the write" (access.Write q [| 7 |])
                Expect.equal (fst (await "the waiting reader" take)) [| 7 |] "the item")

            testCase "after Complete, readers drain what is left, then see the end" (fun () ->
                let q = BatchQueue<int>(capacity)
                awaitUnit "the write" (access.Write q [| 1; 2 |])
                q.Complete()
                Expect.equal (fst (await "a take" (access.Take q 16 true))) [| 1; 2 |] "what is left first"
                Expect.equal (fst (await "a take" (access.Take q 16 true))) [||] "then the end")

            testCase "Complete wakes a waiting reader with the end" (fun () ->
                let q = BatchQueue<int>(capacity)
                let waiting = access.Take q 16 true
                waitUntil "the reader to wait" (fun () -> q.HasWaitingReader)
                q.Complete()
                Expect.equal (fst (await "the waiting reader" waiting)) [||] "the end")

            testCase "tickets follow the taking order" (fun () ->
                let q = BatchQueue<int>(capacity)
                awaitUnit "the write" (access.Write q [| 1..3 |])

                let tickets = [ for _ in 1..3 -> snd (await "a take" (access.Take q 1 true)) ]

                Expect.equal tickets [ 0L; 1L; 2L ] "0, 1, 2")

            testCase "Abort wakes a waiting reader with RunAbortedException" (fun () ->
                let q = BatchQueue<int>(capacity)
                let take = access.Take q 16 true
                waitUntil "the reader to wait" (fun () -> q.HasWaitingReader)
                (q :> IAbortable).Abort()
                throwsFrom<RunAbortedException> "the waiting reader" take
                throwsFrom<RunAbortedException> "a later write" (access.Write q [| 1 |]))

            if bounded then
                testCase "writers wait at the bound until taken items are released" (fun () ->
                    let q = BatchQueue<int>(capacity)
                    let writer = access.Write q [| 1 .. capacity + 2 |]
                    // Taken without release, the items still occupy the queue.
                    let first, _ = await "a take" (access.Take q 100 false)
                    Expect.isLessThanOrEqual first.Length capacity "no more than the bound at once"
                    let rest = ResizeArray(first)

                    while rest.Count < capacity do
                        rest.AddRange(fst (await "a take" (access.Take q 100 false)))

                    Expect.equal q.Free 0 "no room while the taken items are held"
                    Expect.isFalse writer.IsCompleted "the writer still has items to write"
                    q.Release rest.Count
                    awaitUnit "the writer, after the release" writer
                    q.Complete()
                    Expect.equal (List.ofSeq rest @ drain access q) [ 1 .. capacity + 2 ] "every item, in order")

                testCase "a reader's release makes room at once" (fun () ->
                    let q = BatchQueue<int>(capacity)
                    let writer = access.Write q [| 1 .. 3 * capacity |]
                    let reader = Task.Run(fun () -> drain access q)
                    awaitUnit "the writer" writer
                    q.Complete()
                    Expect.equal (await "the reader" reader) [ 1 .. 3 * capacity ] "all")

                testCase "AddReaders makes room for each reader's items" (fun () ->
                    let q = BatchQueue<int>(capacity)
                    q.AddReaders 2
                    Expect.equal q.Free (capacity + 2) "two more"
                    awaitUnit "filling the queue" (access.Write q [| 1 .. capacity + 2 |])
                    Expect.equal q.Free 0 "full")

                testCase "Abort wakes a waiting writer with RunAbortedException" (fun () ->
                    let q = BatchQueue<int>(capacity)
                    let writer = access.Write q [| 1 .. capacity + 1 |]
                    waitUntil "the queue to fill" (fun () -> q.Free = 0)
                    (q :> IAbortable).Abort()
                    throwsFrom<RunAbortedException> "the waiting writer" writer)

                testCase "CloseReaders stops waiting and later writers with ReadersGoneException" (fun () ->
                    let q = BatchQueue<int>(capacity)
                    let writer = access.Write q [| 1 .. capacity + 1 |]
                    waitUntil "the queue to fill" (fun () -> q.Free = 0)
                    q.CloseReaders()
                    throwsFrom<ReadersGoneException> "the waiting writer" writer
                    throwsFrom<ReadersGoneException> "a later writer" (access.Write q [| 1 |]))
            else
                testCase "an unbounded queue never holds a writer" (fun () ->
                    let q = BatchQueue<int>(capacity)
                    awaitUnit "a large write with no reader" (access.Write q [| 1..100_000 |])
                    q.Complete()
                    Expect.equal (drain access q).Length 100_000 "all there")
        ]

/// An async reader that reuses one waiter for all its takes, as a stage's worker does: the items
/// it read (releasing each batch), until the end.
let private readAll (q: BatchQueue<int>) (max: int) : Task<ResizeArray<int>> =
    task {
        let waiter = AsyncWaiter()
        let buf = Array.zeroCreate max
        let seen = ResizeArray<int>()
        let mutable go = true

        while go do
            let! struct (n, _) = Wait.takeWith waiter q buf max true

            if n = 0 then
                go <- false
            else
                for i in 0 .. n - 1 do
                    seen.Add buf[i]

        return seen
    }

/// An async writer that reuses one waiter for all its writes, `batch` items at a time.
let private writeAll (q: BatchQueue<int>) (items: int) (batch: int) : Task =
    task {
        let waiter = AsyncWaiter()
        let buf = Array.zeroCreate batch
        let mutable next = 0

        while next < items do
            let n = min batch (items - next)

            for i in 0 .. n - 1 do
                buf[i] <- next + i

            do! Wait.writeWith waiter q buf n
            next <- next + n

        q.Complete()
    }

let private reused =
    testList
        "one waiter reused for every wait"
        [
            // Every item waits on a full or an empty queue: hundreds of thousands of waits each
            // side, racing their signals with the resets of the next wait.
            for writerBatch, readerBatch in [ 1, 1; 3, 2 ] do
                testCase $"async writer and reader, capacity 1, batches of {writerBatch} and {readerBatch}" (fun () ->
                    let items = 200_000
                    let q = BatchQueue<int>(1)
                    q.AddReaders 1

                    let reader =
                        Task.Run<ResizeArray<int>>(Func<Task<ResizeArray<int>>>(fun () -> readAll q readerBatch))

                    let writer = Task.Run(Func<Task>(fun () -> writeAll q items writerBatch))
                    awaitUnit "the writer" writer
                    let seen = await "the reader" reader
                    Expect.sequenceEqual seen [ 0 .. items - 1 ] "every item, once, in order")

            testCase "a blocking writer and an async reader, capacity 1" (fun () ->
                let items = 30_000
                let q = BatchQueue<int>(1)
                q.AddReaders 1

                let reader =
                    Task.Run<ResizeArray<int>>(Func<Task<ResizeArray<int>>>(fun () -> readAll q 1))

                let writer =
                    onThread (fun () ->
                        for i in 0 .. items - 1 do
                            Wait.write q [| i |] 1

                        q.Complete())

                awaitUnit "the writer" writer
                let seen = await "the reader" reader
                Expect.sequenceEqual seen [ 0 .. items - 1 ] "every item, once, in order")

            testCase "a waiting reader's reused waiter hears the abort" (fun () ->
                let q = BatchQueue<int>(1)
                let reader = readAll q 1
                Expect.isFalse reader.IsCompleted "waiting on the empty queue"
                (q :> IAbortable).Abort()
                throwsFrom<RunAbortedException> "the reader" reader)
        ]

let tests =
    testList
        "batch queue"
        [
            for access in [ blocking; awaiting ] do
                for capacity in [ 3; 0 ] do
                    contract access capacity

            reused
        ]
