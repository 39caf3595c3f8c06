/// Issue #11, the run-level points: extreme option values, sources that block, abandoned
/// enumerators, null results and the enumerator's edges.
module Pyper.Tests.HardeningTests

open System
open System.Collections.Concurrent
open System.Collections.Generic
open System.Diagnostics
open System.Runtime.CompilerServices
open System.Threading
open System.Threading.Tasks
open Expecto
open Pyper
open Pyper.FSharp
open Pyper.Tests.Helpers

let private throwsRange (paramName: string) (fragment: string) (build: unit -> obj) =
    match Expect.throwsC (build >> ignore) id with
    | :? ArgumentOutOfRangeException as a ->
        Expect.equal a.ParamName paramName "names the option"
        Expect.stringContains a.Message fragment "names the stage and the allowed range"
    | e -> failtestf "expected an ArgumentOutOfRangeException, got %O" e

/// A source blocked in MoveNext (a consuming BlockingCollection) until `Release`; records its disposal.
type private BlockedSource(first: int list) =
    let items = new BlockingCollection<int>()
    let mutable disposed = 0

    do
        for x in first do
            items.Add x

    member _.Items =
        seq {
            try
                for x in items.GetConsumingEnumerable() do
                    yield x
            finally
                Volatile.Write(&disposed, 1)
        }

    /// Ends the source: its MoveNext returns false.
    member _.Release() =
        if not items.IsAddingCompleted then
            items.CompleteAdding()

    member _.Disposed = Volatile.Read &disposed = 1

/// An async source whose MoveNextAsync ignores the token: it waits for `Release`.
type private DeafSource() =
    let release =
        TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously)

    let mutable disposed = 0
    let mutable state = 0
    member _.Release() = release.TrySetResult false |> ignore
    member _.Disposed = Volatile.Read &disposed = 1

    interface IAsyncEnumerable<int> with
        member _.GetAsyncEnumerator _ =
            { new IAsyncEnumerator<int> with
                member _.Current = 1

                member _.MoveNextAsync() =
                    state <- state + 1

                    if state = 1 then
                        ValueTask<bool>(true)
                    else
                        ValueTask<bool>(release.Task)
              interface IAsyncDisposable with
                  member _.DisposeAsync() =
                      Volatile.Write(&disposed, 1)
                      ValueTask()
            }

/// Waits, with a hang guard, until every worker of every run (also a detached source) is gone.
let private allWorkersGone () =
    waitUntil "the run's threads and tasks end" runWorkersGone

/// Starts a run, takes one result and drops the enumerator without disposing it.
[<MethodImpl(MethodImplOptions.NoInlining)>]
let private abandonBlocking (source: CountingSource) =
    let e =
        (Pipeline.toSeqFrom source.Items (Stage.map id >=> Stage.map id)).GetEnumerator()

    Expect.isTrue (e.MoveNext()) "one result"

[<MethodImpl(MethodImplOptions.NoInlining)>]
let private abandonAsync (source: CountingSource) =
    let stages = Stage.mapTask (fun (x: int) -> Task.FromResult x) >=> Stage.map id
    let e = (Pipeline.streamFromSeq source.Items stages).GetAsyncEnumerator()
    Expect.isTrue (e.MoveNextAsync().AsTask().Wait hangGuard && e.Current > 0) "one result"

/// `abandonAsync` with a function that registers, on its first call, a callback on the run's
/// token that sets `entered` and blocks until `gate` is set.
[<MethodImpl(MethodImplOptions.NoInlining)>]
let private abandonWithBlockingCallback
    (entered: ManualResetEventSlim)
    (gate: ManualResetEventSlim)
    (source: CountingSource)
    =
    let f (x: int) (token: CancellationToken) =
        if x = 1 then
            token.Register(fun () ->
                entered.Set()
                gate.Wait())
            |> ignore

        Task.FromResult x

    let e = (Pipeline.streamFromSeq source.Items (Stage.mapTask f)).GetAsyncEnumerator()
    Expect.isTrue (e.MoveNextAsync().AsTask().Wait hangGuard && e.Current > 0) "one result"

/// Collects garbage until no worker of any run is left (the abandoned run's safety net).
let private collectUntilGone () =
    waitUntil "the abandoned run ends" (fun () ->
        GC.Collect()
        GC.WaitForPendingFinalizers()
        runWorkersGone ())

/// The message of the exception a run raises.
let private failureOf (run: unit -> int list) =
    match catchExn (run >> ignore) with
    | :? InvalidOperationException as e -> e
    | e -> failtestf "expected an InvalidOperationException, got %O" e

let tests =
    testList
        "hardening"
        [
            // 8
            leakTest "a capacity near Int32.MaxValue does not overflow the next stage's bound" (fun () ->
                let p =
                    Stage.map (id, capacity = Int32.MaxValue - 1)
                    >=> Stage.map (id, workers = 2, capacity = Int32.MaxValue)
                    >=> Stage.mapTask ((fun (x: int) -> Task.FromResult x), workers = 3)

                Expect.equal (collect (Pipeline.toSeqFrom [ 1..100 ] p) |> sorted) [ 1..100 ] "all items")

            // 9
            testCase "workers above the maximum are refused when the stage is built" (fun () ->
                throwsRange "workers" "Stage 'wide' (map): workers must be at most 10000" (fun () ->
                    box (Stage.map (id, workers = Int32.MaxValue, name = "wide")))

                throwsRange "workers" "A map stage: workers must be at most 10000" (fun () ->
                    box (Stage.mapTask ((fun (x: int) -> Task.FromResult x), workers = 10_001)))

                throwsRange "workers" "workers must be at most 256" (fun () ->
                    box (Stage.map (id, workers = 257, multiprocess = true)))

                throwsRange "workers" "A batch stage: workers must be at most 10000" (fun () ->
                    box (Stage.batch (2, workers = Int32.MaxValue))))

            leakTest "workers at the maximum run" (fun () ->
                let p =
                    Stage.mapTask ((fun (x: int) -> Task.FromResult x), workers = 10_000)
                    >=> Stage.map (id, workers = 64)

                Expect.equal (collect (Pipeline.toSeqFrom [ 1..1000 ] p) |> sorted) [ 1..1000 ] "all items")

            testCase "a batch size above the largest array is refused when the stage is built" (fun () ->
                throwsRange "size" "Stage 'b' (batch): size must be at most 2147483591" (fun () ->
                    box (Stage.batch (Int32.MaxValue, name = "b"))))

            leakTest "the largest batch size allocates as items come" (fun () ->
                let p = Stage.batch (Array.MaxLength, timeout = TimeSpan.FromMilliseconds 1.0)
                let before = GC.GetTotalAllocatedBytes true
                let groups = collect (Pipeline.toSeqFrom [ 1..3000 ] p)
                let allocated = GC.GetTotalAllocatedBytes true - before
                Expect.isLessThan allocated (64L <<< 20) "no group of Array.MaxLength items allocated up front"
                Expect.equal (Array.concat groups |> List.ofArray) [ 1..3000 ] "every item, in order")

            for days, timeout in [ "60 days", TimeSpan.FromDays 60.0; "TimeSpan.MaxValue", TimeSpan.MaxValue ] do
                leakTest $"a batch timeout of {days} waits (no timer failure, no early flush)" (fun () ->
                    use cts = new CancellationTokenSource()
                    let source = BlockedSource [ 1..4 ]

                    try
                        let p = Stage.batch (3, timeout = timeout)
                        let e = (Pipeline.streamFromSeq source.Items p).GetAsyncEnumerator cts.Token

                        let outcome =
                            withinGuard "the run" (fun () ->
                                task {
                                    try
                                        let! first = e.MoveNextAsync()
                                        Expect.isTrue first "a first group"
                                        Expect.equal e.Current [| 1; 2; 3 |] "the full group"
                                        // [4] waits for its timeout: the run is cancelled before then.
                                        cts.CancelAfter 200
                                        let! second = e.MoveNextAsync()
                                        return $"a second result ({second})"
                                    finally
                                        e.DisposeAsync().AsTask().Wait()
                                })

                        failtestf "expected cancellation, got %s" outcome
                    with
                    | :? OperationCanceledException -> ()
                    | :? AssertException -> reraise ()
                    | e -> failtestf "expected cancellation, got %O" e

                    source.Release()
                    allWorkersGone ())

            // 10
            leakTest "break returns at once while the source blocks in MoveNext" (fun () ->
                let source = BlockedSource [ 1 ]

                try
                    let clock = Stopwatch()

                    withinGuard "break" (fun () ->
                        Task.Run(fun () ->
                            for x in Pipeline.toSeqFrom source.Items (Stage.map id) |> Seq.truncate 1 do
                                Expect.equal x 1 "the first item"
                                clock.Start()

                            0))
                    |> ignore

                    clock.Stop()
                    Expect.isLessThan clock.Elapsed (TimeSpan.FromSeconds 2.0) "the consumer got control back"
                    Expect.isFalse source.Disposed "the source is still inside MoveNext"
                finally
                    source.Release()

                waitUntil "the source's thread disposes the enumerator" (fun () -> source.Disposed)
                allWorkersGone ())

            leakTest "cancellation raises at once while the source blocks in MoveNext" (fun () ->
                let source = BlockedSource [ 1 ]
                use cts = new CancellationTokenSource()

                try
                    let e =
                        catchExn (fun () ->
                            withinGuard "cancellation" (fun () ->
                                task {
                                    let results = Pipeline.streamFromSeq source.Items (Stage.map id)
                                    let en = results.GetAsyncEnumerator cts.Token

                                    try
                                        while true do
                                            let! more = en.MoveNextAsync()
                                            Expect.isTrue more "the run does not end by itself"
                                            cts.Cancel()
                                    finally
                                        en.DisposeAsync().AsTask().Wait()
                                }))

                    Expect.isTrue (e :? OperationCanceledException) $"cancelled, got {e}"
                finally
                    source.Release()

                waitUntil "the source's thread disposes the enumerator" (fun () -> source.Disposed)
                allWorkersGone ())

            leakTest "an awaited source that ignores the token does not hold the consumer" (fun () ->
                let source = DeafSource()
                use cts = new CancellationTokenSource()

                try
                    let e =
                        catchExn (fun () ->
                            withinGuard "cancellation" (fun () ->
                                task {
                                    let en = (Pipeline.streamFrom source (Stage.map id)).GetAsyncEnumerator cts.Token

                                    try
                                        let! more = en.MoveNextAsync()
                                        Expect.isTrue more "the first item"
                                        cts.Cancel()
                                        let! _ = en.MoveNextAsync()
                                        ()
                                    finally
                                        en.DisposeAsync().AsTask().Wait()
                                }))

                    Expect.isTrue (e :? OperationCanceledException) $"cancelled, got {e}"
                finally
                    source.Release()

                waitUntil "the source's task disposes the enumerator" (fun () -> source.Disposed)
                allWorkersGone ())

            // 11
            leakTest "an abandoned blocking enumerator ends its run when collected" (fun () ->
                let source = CountingSource()
                abandonBlocking source
                collectUntilGone ())

            leakTest "an abandoned async enumerator ends its run when collected" (fun () ->
                let source = CountingSource()
                abandonAsync source
                collectUntilGone ())

            leakTest "an abandoned run's stop does not hold up the finalizer thread" (fun () ->
                let source = CountingSource()
                use entered = new ManualResetEventSlim(false)
                use gate = new ManualResetEventSlim(false)

                try
                    abandonWithBlockingCallback entered gate source
                    // The enumerator is collected, its run cancelled: the user's callback runs, and blocks.
                    waitUntil "the abandoned run's token to be cancelled" (fun () ->
                        GC.Collect()
                        entered.IsSet)

                    let finalizers = Task.Run(fun () -> GC.WaitForPendingFinalizers())
                    Expect.isTrue (finalizers.Wait hangGuard) "other finalizers run while the callback blocks"
                finally
                    gate.Set()

                collectUntilGone ())

            // 12
            leakTest "a null Task names the stage" (fun () ->
                let p = Stage.mapTask ((fun (_: int) -> (null: Task<int>)), name = "nulls")
                let e = failureOf (fun () -> collect (Pipeline.toSeq 1 p))
                Expect.stringContains e.Message "Stage 'nulls' (map)" "the stage"
                Expect.stringContains e.Message "null Task" "what was null"
                Expect.equal (PipelineError.stage e) (Some "nulls") "tagged")

            leakTest "a null branch sequence names the stage" (fun () ->
                let p = Stage.map id >=> Stage.branch (fun (_: int) -> (null: seq<int>))
                let e = failureOf (fun () -> collect (Pipeline.toSeq 1 p))
                Expect.stringContains e.Message "Stage 'branch #2' (branch)" "the stage"
                Expect.stringContains e.Message "null sequence" "what was null")

            leakTest "null Async, async stream and join results name the stage" (fun () ->
                let cases: (string * string * Pipeline<int, int>) list =
                    [
                        "Async", "map #1", Stage.mapAsync (fun (_: int) -> Unchecked.defaultof<Async<int>>)
                        "IAsyncEnumerable",
                        "branch #1",
                        Stage.branchStream (fun (_: int) -> (null: IAsyncEnumerable<int>))
                        "sequence", "join #1", Stage.joinMany (fun (_: seq<int>) -> (null: seq<int>))
                        "Task", "join #1", Stage.joinTask (fun (_: IAsyncEnumerable<int>) -> (null: Task<int>))
                        "IAsyncEnumerable",
                        "join #1",
                        Stage.joinStream (fun (_: IAsyncEnumerable<int>) -> (null: IAsyncEnumerable<int>))
                    ]

                for what, stage, p in cases do
                    let e = failureOf (fun () -> collect (Pipeline.toSeq 1 p))
                    Expect.stringContains e.Message $"Stage '{stage}'" "the stage"
                    Expect.stringContains e.Message $"null {what}" "what was null")

            leakTest "MoveNextAsync after DisposeAsync answers false" (fun () ->
                withinGuard "the run" (fun () ->
                    task {
                        let e = (Pipeline.streamFromSeq [ 1..10 ] (Stage.map id)).GetAsyncEnumerator()
                        let! first = e.MoveNextAsync()
                        Expect.isTrue first "a first result"
                        do! e.DisposeAsync()
                        let! again = e.MoveNextAsync()
                        Expect.isFalse again "nothing after disposal"
                        let b = (Pipeline.toSeqFrom [ 1..10 ] (Stage.map id)).GetEnumerator()
                        Expect.isTrue (b.MoveNext()) "a first result"
                        b.Dispose()
                        Expect.isFalse (b.MoveNext()) "nothing after disposal (blocking)"
                    }))

            leakTest "a run cancelled before it starts reads no source item" (fun () ->
                let source = CountingSource()
                use cts = new CancellationTokenSource()
                cts.Cancel()

                let e =
                    catchExn (fun () ->
                        Pipeline.streamFromSeq source.Items (Stage.map id)
                        |> Pipeline.toBlockingSeq cts.Token
                        |> collect
                        |> ignore)

                Expect.isTrue (e :? OperationCanceledException) $"cancelled, got {e}"
                Expect.equal source.Produced 0L "no item read")
        ]
