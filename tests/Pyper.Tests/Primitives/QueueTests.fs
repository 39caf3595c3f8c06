/// The batch queue between stages: one contract, run with blocking access (dedicated threads,
/// `Wait.write` / `Wait.take`) and awaiting access (`Wait.writeAsync` / `Wait.takeAsync`), on a
/// bounded and an unbounded queue.
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
        Write = fun q xs -> task { do! Wait.writeAsync q xs xs.Length }
        Take =
            fun q max release ->
                task {
                    let buf = Array.zeroCreate max
                    let! struct (n, ticket) = Wait.takeAsync q buf max release
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

let tests =
    testList
        "batch queue"
        [
            for access in [ blocking; awaiting ] do
                for capacity in [ 3; 0 ] do
                    contract access capacity
        ]
