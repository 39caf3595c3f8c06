/// The turnstile of ordered stages and the emitter that hands a worker's results on: one
/// contract each, run with blocking waits (`Wait.turn`, `Emit`) and awaiting ones
/// (`Wait.turnWith`, `EmitAsync`).
module Pyper.Tests.Primitives.OrderTests

open System
open System.Collections.Concurrent
open System.Threading.Tasks
open Expecto
open Pyper
open Pyper.Tests.Helpers
open Pyper.Tests.Primitives.QueueTests

/// How a worker waits for its turn and hands its buffer on.
type internal Waits =
    {
        Name: string
        Turn: Turnstile -> int64 -> Task
        Emit: Emitter<int> -> Task
    }

let private blockingWaits =
    {
        Name = "blocking"
        Turn = fun t ticket -> onThread (fun () -> Wait.turn t ticket) :> Task
        Emit = fun em -> onThread (fun () -> em.Emit()) :> Task
    }

let private awaitingWaits =
    {
        Name = "awaiting"
        Turn = fun t ticket -> task { do! Wait.turnWith (AsyncWaiter()) t ticket }
        Emit = fun em -> em.EmitAsync()
    }

let private finish (what: string) (t: Task) =
    withinGuard what (fun () -> (task { do! t }: Task<unit>))

let private turnstile (waits: Waits) =
    testList
        "turnstile"
        [
            testCase "tickets pass in order, whatever order they arrive in" (fun () ->
                let t = Turnstile()
                let passed = ConcurrentQueue<int64>()
                let arrival = [ 7L; 3L; 9L; 0L; 5L; 1L; 8L; 2L; 6L; 4L ]

                let all =
                    [
                        for ticket in arrival ->
                            task {
                                do! waits.Turn t ticket
                                passed.Enqueue ticket
                                t.Advance()
                            }
                            :> Task
                    ]

                finish "every ticket" (Task.WhenAll all)
                Expect.equal (List.ofSeq passed) [ 0L .. 9L ] "in ticket order")

            testCase "a later ticket waits until the earlier ones have advanced" (fun () ->
                let t = Turnstile()
                Expect.isTrue (t.IsTurn 0L) "ticket 0's turn at once"
                let second = waits.Turn t 1L
                Expect.isFalse second.IsCompleted "ticket 1 waits for ticket 0"
                t.Advance()
                finish "ticket 1, after ticket 0 advanced" second)

            testCase "Abort wakes a waiting ticket with RunAbortedException" (fun () ->
                let t = Turnstile()
                let waiting = waits.Turn t 3L
                (t :> IAbortable).Abort()
                let e = catchExn (fun () -> finish "the waiting ticket" waiting)
                Expect.isTrue (e :? RunAbortedException) $"RunAbortedException, got {e.GetType().Name}")
        ]

/// Two threads take turns through 10,000 tickets: each waits for the other's advance every time.
let private turnsWithoutAllocating =
    testCase "blocking waits for the turn allocate nothing" (fun () ->
        let t = Turnstile()
        let tickets = 10_000L

        let takeTurns (first: int64) () =
            BlockingWaiter.ForThisThread |> ignore
            let before = GC.GetAllocatedBytesForCurrentThread()

            for ticket in first .. 2L .. tickets - 1L do
                Wait.turn t ticket
                t.Advance()

            GC.GetAllocatedBytesForCurrentThread() - before

        let even, odd = onThread (takeTurns 0L), onThread (takeTurns 1L)
        let bytes = withinGuard "both threads" (fun () -> Task.WhenAll(even, odd))
        Expect.isLessThan (Array.max bytes) 1000L $"bytes allocated by each thread for {tickets / 2L} turns")

let private emitter (waits: Waits) =
    testList
        "emitter"
        [
            testCase "Add asks for a hand-on when the buffer is full" (fun () ->
                let q = BatchQueue<int>(0)
                let em = Emitter<int>(q, null)
                em.Begin 0L

                let asks = [ for i in 1 .. Tuning.MaxBatch -> em.Add(i, false) ]
                Expect.equal (List.filter id asks).Length 1 "once"
                Expect.isTrue (List.last asks) "at the last place"
                finish "the hand-on" (waits.Emit em)
                Expect.equal em.Count 0 "the buffer is empty again"
                q.Complete()
                Expect.equal (drain awaiting q) [ 1 .. Tuning.MaxBatch ] "every item, in order")

            testCase "Add asks for a hand-on at once when the next stage waits, or when eager" (fun () ->
                let q = BatchQueue<int>(0)
                let em = Emitter<int>(q, null)
                em.Begin 0L
                Expect.isFalse (em.Add(1, false)) "nobody waits: keep collecting"
                Expect.isTrue (em.Add(2, true)) "eager: hand on now"
                finish "the hand-on" (waits.Emit em)
                let reader = awaiting.Take q 16 true
                Expect.equal (fst (withinGuard "the reader" (fun () -> reader))) [| 1; 2 |] "both"
                let waiting = awaiting.Take q 16 true
                waitUntil "the reader to wait" (fun () -> q.HasWaitingReader)
                Expect.isTrue (em.Add(3, false)) "a reader waits: hand on now"
                finish "the hand-on" (waits.Emit em)
                Expect.equal (fst (withinGuard "the reader" (fun () -> waiting))) [| 3 |] "the item")

            testCase "ordered emitters hand on in ticket order" (fun () ->
                let q = BatchQueue<int>(0)
                let t = Turnstile()
                let early, late = Emitter<int>(q, t), Emitter<int>(q, t)
                late.Begin 1L
                early.Begin 0L
                late.Add(2, false) |> ignore
                Expect.isFalse late.CanFlushNow "ticket 1 may not go before ticket 0"
                let lateEmit = waits.Emit late
                early.Add(1, false) |> ignore
                Expect.isTrue early.CanFlushNow "ticket 0 may go"
                finish "ticket 0's hand-on" (waits.Emit early)
                early.End()
                finish "ticket 1's hand-on" lateEmit
                late.End()
                q.Complete()
                Expect.equal (drain awaiting q) [ 1; 2 ] "in ticket order")
        ]

let tests =
    testList
        "ordering primitives"
        [
            for waits in [ blockingWaits; awaitingWaits ] do
                testList waits.Name [ turnstile waits; emitter waits ]
            turnsWithoutAllocating
        ]
