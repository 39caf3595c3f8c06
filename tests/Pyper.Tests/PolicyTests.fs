/// Failure policies and timeouts (issue #17) on thread and async map stages.
module Pyper.Tests.PolicyTests

open System
open System.Collections.Concurrent
open System.Threading
open System.Threading.Tasks
open Expecto
open FsCheck
open Pyper
open Pyper.FSharp
open Pyper.Tests.Helpers

/// How a test builds its map stage: a blocking one, or each async form.
type Form =
    | Threads
    | Tasks
    | TasksWithToken
    | FSharpAsync

let private forms = [ Threads; Tasks; TasksWithToken; FSharpAsync ]

/// A map stage of `form` calling `f`, with the given policy options.
let private stage form (f: int -> int) workers ordered (onError: OnError<int>) (counts: FailureCounts) =
    match form with
    | Threads -> Stage.map (f, workers = workers, ordered = ordered, onError = onError, counts = counts, name = "p")
    | Tasks ->
        Stage.mapTask (
            (fun x -> task { return f x }),
            workers = workers,
            ordered = ordered,
            onError = onError,
            counts = counts,
            name = "p"
        )
    | TasksWithToken ->
        Stage.mapTask (
            (fun x (_: CancellationToken) -> task { return f x }),
            workers = workers,
            ordered = ordered,
            onError = onError,
            counts = counts,
            name = "p"
        )
    | FSharpAsync ->
        Stage.mapAsync (
            (fun x -> async { return f x }),
            workers = workers,
            ordered = ordered,
            onError = onError,
            counts = counts,
            name = "p"
        )

/// A tiny backoff: retries are exercised without slowing the suite.
let private tiny = TimeSpan.FromTicks 10L

exception Planned of int

/// A function failing item x its first `fails x` calls (calls are counted per item).
let private failing (fails: int -> int) =
    let calls = ConcurrentDictionary<int, int>()

    fun (x: int) ->
        let k = calls.AddOrUpdate(x, 1, (fun _ c -> c + 1))

        if k <= fails x then raise (Planned x) else x * 10

let private always = fun (_: exn) -> true

/// The cases run for every form.
let private perForm form =
    let name s = $"{form}: {s}"

    [
        leakTest (name "Skip drops failing items and counts them") (fun () ->
            let counts = FailureCounts()
            let f = failing (fun x -> if x % 3 = 0 then Int32.MaxValue else 0)

            let results =
                collect (Pipeline.toSeqFrom [ 1..100 ] (stage form f 4 false OnError.Skip counts))

            let expected =
                [
                    for x in 1..100 do
                        if x % 3 <> 0 then
                            x * 10
                ]

            Expect.equal (sorted results) expected "every other item delivered"
            Expect.equal counts.Skipped 33L "33 skipped"
            Expect.equal counts.DeadLettered 0L "none dead-lettered")

        leakTest (name "Retry calls again until the call succeeds") (fun () ->
            let counts = FailureCounts()
            let f = failing (fun x -> x % 3)

            let results =
                collect (
                    Pipeline.toSeqFrom
                        [ 1..60 ]
                        (stage form f 3 false (OnError.Retry(2, tiny, always, OnError.Fail)) counts)
                )

            Expect.equal (sorted results) [ for x in 1..60 -> x * 10 ] "all delivered"
            Expect.equal counts.Retries (int64 (List.sumBy (fun x -> x % 3) [ 1..60 ])) "one retry per failed call")

        leakTest (name "Retry used up, then DeadLetter gets item, exception and attempts") (fun () ->
            let counts = FailureCounts()
            let dead = ConcurrentBag<int * exn * int>()
            let f = failing (fun x -> if x = 7 then Int32.MaxValue else 0)

            let policy =
                OnError.Retry(3, tiny, always, OnError.DeadLetter(fun x e n -> dead.Add(x, e, n)))

            let results =
                collect (Pipeline.toSeqFrom [ 1..20 ] (stage form f 2 false policy counts))

            Expect.equal (List.length results) 19 "the others delivered"

            match List.ofSeq dead with
            | [ (7, Planned 7, 4) ] -> ()
            | other -> failtestf "expected item 7 after 4 attempts, got %A" other

            Expect.equal counts.DeadLettered 1L "counted"
            Expect.equal counts.Retries 3L "3 retries")

        leakTest (name "retryOn refusing the exception settles the item at once") (fun () ->
            let counts = FailureCounts()
            let f = failing (fun x -> if x = 5 then Int32.MaxValue else 0)
            let policy = OnError.Retry(5, tiny, (fun e -> e :? TimeoutException), OnError.Skip)

            let results =
                collect (Pipeline.toSeqFrom [ 1..10 ] (stage form f 1 false policy counts))

            Expect.equal (List.length results) 9 "others delivered"
            Expect.equal counts.Retries 0L "no retry"
            Expect.equal counts.Skipped 1L "skipped")

        leakTest (name "Retry used up, then Fail fails the run with the item's exception") (fun () ->
            let f = failing (fun x -> if x = 5 then Int32.MaxValue else 0)

            let p =
                stage form f 2 false (OnError.Retry(2, tiny, always, OnError.Fail)) (FailureCounts())

            match catchExn (fun () -> collect (Pipeline.toSeqFrom [ 1..10 ] p) |> ignore) with
            | Planned 5 as e -> Expect.equal (PipelineError.stage e) (Some "p") "names the stage"
            | e -> failtestf "expected Planned 5, got %O" e)

        leakTest (name "a failing dead-letter sink fails the run") (fun () ->
            let f = failing (fun x -> if x = 5 then Int32.MaxValue else 0)
            let sink = OnError.DeadLetter(fun _ _ _ -> invalidOp "sink broke")
            let p = stage form f 2 false sink (FailureCounts())

            match catchExn (fun () -> collect (Pipeline.toSeqFrom [ 1..10 ] p) |> ignore) with
            | :? InvalidOperationException as e -> Expect.equal e.Message "sink broke" "the sink's own exception"
            | e -> failtestf "expected the sink's exception, got %O" e)

        leakTest (name "ordered stages keep order through retries and skips") (fun () ->
            let counts = FailureCounts()
            let f = failing (fun x -> if x % 7 = 0 then Int32.MaxValue else x % 2)
            let policy = OnError.Retry(1, tiny, (fun e -> e :? Planned), OnError.Skip)

            let results =
                collect (Pipeline.toSeqFrom [ 1..300 ] (stage form f 4 true policy counts))

            Expect.equal
                results
                [
                    for x in 1..300 do
                        if x % 7 <> 0 then
                            x * 10
                ]
                "input order, skipped left out"

            Expect.equal counts.Skipped 42L "42 skipped")

        for ordered in [ false; true ] do
            leakTest (name $"a backoff does not hold the results made before it (ordered = {ordered})") (fun () ->
                let failAt = 1500
                let f = failing (fun x -> if x = failAt then 1 else 0)
                // A backoff of at least 30 minutes: only the results made before it can arrive in
                // time; taking them stops the run (which ends the backoff).
                let policy = OnError.Retry(1, TimeSpan.FromHours 1.0, always, OnError.Fail)
                // One worker: its results come in input order, and an ordered stage's batch always
                // has its turn (with more workers it has when the batches before it have left).
                let p = stage form f 1 ordered policy (FailureCounts())

                let before =
                    withinGuard "the results before the backoff" (fun () ->
                        Task.Run(fun () -> Pipeline.toSeqFrom [ 1..3000 ] p |> Seq.take (failAt - 1) |> List.ofSeq))

                Expect.equal before [ for x in 1 .. failAt - 1 -> x * 10 ] "every result before the failing item")

        leakTest (name "cancellation ends a backoff wait at once") (fun () ->
            use failed = new ManualResetEventSlim(false)

            let f x =
                if x = 1 then
                    failed.Set()
                    failwith "once"

                x

            // A backoff of at least 30 minutes: only cancellation can end the run in time.
            let policy = OnError.Retry(1, TimeSpan.FromHours 1.0, always, OnError.Fail)
            let p = stage form f 1 false policy (FailureCounts())
            use cts = new CancellationTokenSource()

            let run =
                Task.Run(fun () ->
                    Pipeline.toBlockingSeq cts.Token (Pipeline.streamFromSeq [ 1; 2 ] p)
                    |> List.ofSeq)

            Expect.isTrue (failed.Wait hangGuard) "the item failed"
            cts.Cancel()
            Expect.isTrue (endsWithin hangGuard run) "the run ended during the backoff"
            Expect.isTrue run.IsFaulted "cancelled"

            match run.Exception.InnerException with
            | :? OperationCanceledException -> ()
            | e -> failtestf "expected a cancellation, got %O" e)

        leakTest (name "an early stop ends a backoff wait at once") (fun () ->
            let f x =
                if x = 2 then failwith "slow to retry" else x

            let policy = OnError.Retry(1, TimeSpan.FromHours 1.0, always, OnError.Fail)
            let p = stage form f 1 false policy (FailureCounts())
            // Item 1 comes out; item 2 waits its backoff; taking one result stops the run.
            let first =
                withinGuard "the early stop" (fun () -> Task.Run(fun () -> Pipeline.toSeqFrom [ 1..3 ] p |> Seq.head))

            Expect.equal first 1 "the first result")
    ]

/// Random failures: each item fails a random number of times; the books must balance.
let private balance form (plan: (int * bool) list) (retries: byte) (deadLetter: bool) =
    let retries = int retries % 4
    let fails = plan |> List.mapi (fun i (k, _) -> i, abs k % 6) |> Map.ofList
    let counts = FailureCounts()
    let dead = ConcurrentBag<int>()

    let final =
        if deadLetter then
            OnError.DeadLetter(fun x _ _ -> dead.Add x)
        else
            OnError.Skip

    let policy = OnError.Retry(retries, tiny, always, final)
    let f = failing (fun x -> fails[x])
    let items = List.init plan.Length id
    let workers = 1 + (plan.Length % 3)

    let results =
        collect (Pipeline.toSeqFrom items (stage form f workers false policy counts))

    let expectedOut = items |> List.filter (fun x -> fails[x] <= retries)

    int64 results.Length + counts.Skipped + counts.DeadLettered = int64 items.Length
    && sorted results = List.map (fun x -> x * 10) expectedOut
    && int64 dead.Count = counts.DeadLettered
    && (deadLetter || counts.DeadLettered = 0L)


/// Bad policy options fail when the stage is built, naming the stage and the option.
let private validation =
    let throwsArg (paramName: string) (fragment: string) (build: unit -> obj) =
        match Expect.throwsC (build >> ignore) id with
        | :? ArgumentException as a ->
            Expect.equal a.ParamName paramName "names the option"
            Expect.stringContains a.Message fragment "says which stage and what is allowed"
        | e -> failtestf "expected an ArgumentException, got %O" e

    let f (x: int) = x

    testList
        "validation"
        [
            testCase "timeout zero or negative" (fun () ->
                throwsArg "timeout" "Stage 's' (map): timeout must be positive" (fun () ->
                    box (Stage.map (f, timeout = TimeSpan.Zero, name = "s")))

                throwsArg "timeout" "A map stage: timeout must be positive" (fun () ->
                    box (Stage.mapTask ((fun (x: int) -> Task.FromResult x), timeout = TimeSpan.FromSeconds -1.0))))
            testCase "retry count out of range" (fun () ->
                throwsArg "onError" "Stage 's' (map): onError's Retry times must be 0 to 1000" (fun () ->
                    box (Stage.map (f, onError = OnError.Retry(-1, tiny, always, OnError.Fail), name = "s"))))
            testCase "negative backoff" (fun () ->
                throwsArg "onError" "backoff must be 0 to" (fun () ->
                    box (Stage.map (f, onError = OnError.Retry(1, TimeSpan.FromSeconds -1.0, always, OnError.Fail)))))
            testCase "a Retry ending in a Retry" (fun () ->
                throwsArg "onError" "must end in Fail, Skip or DeadLetter" (fun () ->
                    box (
                        Stage.map (
                            f,
                            onError = OnError.Retry(1, tiny, always, OnError.Retry(1, tiny, always, OnError.Fail))
                        )
                    )))
            testCase "null sink, null retryOn" (fun () ->
                throwsArg "onError" "dead-letter sink of onError is null" (fun () ->
                    box (Stage.map (f, onError = OnError.DeadLetter(Unchecked.defaultof<_>))))

                throwsArg "onError" "retryOn is null" (fun () ->
                    box (Stage.map (f, onError = OnError.Retry(1, tiny, Unchecked.defaultof<_>, OnError.Skip)))))
        ]


let private config =
    { FsCheckConfig.defaultConfig with
        maxTest = 30
    }

let tests =
    testList
        "policies"
        [
            yield! forms |> List.collect perForm
            validation
            for form in [ Threads; TasksWithToken ] do
                testPropertyWithConfig config $"{form}: delivered + skipped + dead-lettered = input" (balance form)
        ]
