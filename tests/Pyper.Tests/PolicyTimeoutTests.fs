/// Per-item timeouts and per-worker state (issue #17) on thread and async map stages.
module Pyper.Tests.PolicyTimeoutTests

open System
open System.Collections.Concurrent
open System.Threading
open System.Threading.Tasks
open Expecto
open Pyper
open Pyper.FSharp
open Pyper.Tests.Helpers

/// A tiny backoff: retries are exercised without slowing the suite.
let private tiny = TimeSpan.FromTicks 10L

/// Live helper threads of thread stages with a timeout (named ".../call").
let private callThreads () =
    pyperOsThreads () |> Array.filter (fun n -> n.EndsWith "/call")

/// A generous timeout for calls that should finish at once (a loaded 2-core machine).
let private patience = TimeSpan.FromMilliseconds 500.0

/// Checks a timeout's exception: a TimeoutException naming the stage and the item's position.
let private isTimeout (position: int) (e: exn) =
    match e with
    | :? TimeoutException as t ->
        Expect.stringContains t.Message "Stage 'p' (map)" "names the stage"
        Expect.stringContains t.Message $"input position {position}" "names the item's position"
        Expect.equal (PipelineError.stage e) (Some "p") "the stage is tagged"
    | e -> failtestf "expected a TimeoutException, got %O" e

let private timeouts =
    [
        leakTest "async: a call past the timeout has its token cancelled; Skip goes on" (fun () ->
            let counts = FailureCounts()
            let cancelled = ref 0

            let f (x: int) (ct: CancellationToken) =
                task {
                    if x = 5 then
                        try
                            do! Task.Delay(Timeout.Infinite, ct)
                        with :? OperationCanceledException ->
                            Interlocked.Increment &cancelled.contents |> ignore
                            raise (OperationCanceledException ct)

                    return x
                }

            let p =
                Stage.mapTask (f, timeout = patience, onError = OnError.Skip, counts = counts, name = "p")

            let results = collect (Pipeline.toSeqFrom [ 1..10 ] p)
            Expect.equal (sorted results) [ 1; 2; 3; 4; 6; 7; 8; 9; 10 ] "the others delivered"
            Expect.equal counts.TimedOut 1L "one time-out"
            Expect.equal counts.Skipped 1L "skipped"
            // The stage stops waiting for the call when its time is up; the call sees its token
            // cancelled on its own schedule, possibly after the run has ended.
            waitUntil "the function to see its token cancelled" (fun () -> Volatile.Read &cancelled.contents = 1))

        leakTest "async: a call past the timeout fails the run by default, naming stage and position" (fun () ->
            let f (x: int) (ct: CancellationToken) =
                task {
                    if x = 5 then
                        do! Task.Delay(Timeout.Infinite, ct)

                    return x
                }

            let p = Stage.mapTask (f, timeout = patience, name = "p", workers = 3)
            isTimeout 4 (catchExn (fun () -> collect (Pipeline.toSeqFrom [ 1..10 ] p) |> ignore)))

        leakTest "async: a function ignoring its token is no longer waited for" (fun () ->
            let never =
                TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously)

            let counts = FailureCounts()

            let f (x: int) =
                if x = 2 then never.Task else Task.FromResult x

            let p =
                Stage.mapTask (f, timeout = patience, onError = OnError.Skip, counts = counts, name = "p")

            let results = collect (Pipeline.toSeqFrom [ 1..4 ] p)
            never.SetResult 0
            Expect.equal (sorted results) [ 1; 3; 4 ] "the others delivered"
            Expect.equal counts.TimedOut 1L "one time-out")

        leakTest "async: a late call that fails after its timeout leaves no unobserved exception" (fun () ->
            let late =
                TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously)

            let f (x: int) =
                if x = 2 then late.Task else Task.FromResult x

            let p = Stage.mapTask (f, timeout = patience, onError = OnError.Skip, name = "p")

            Expect.equal (sorted (collect (Pipeline.toSeqFrom [ 1..3 ] p))) [ 1; 3 ] "the others delivered"
            late.SetException(InvalidOperationException "late failure"))

        leakTest "threads: a stuck call is abandoned and counted; the worker goes on on a fresh thread" (fun () ->
            use gate = new ManualResetEventSlim(false)
            let counts = FailureCounts()

            let f (x: int) =
                if x = 3 then
                    gate.Wait()

                x

            let p =
                Stage.map (f, timeout = patience, onError = OnError.Skip, counts = counts, name = "p")

            // The gate opens whatever happens, so that a failed check leaves no thread stuck.
            try
                let results = collect (Pipeline.toSeqFrom [ 1..10 ] p)
                Expect.equal (sorted results) [ 1; 2; 4; 5; 6; 7; 8; 9; 10 ] "the others delivered"
                Expect.equal counts.TimedOut 1L "one time-out"
                Expect.equal counts.AbandonedThreads 1L "one thread abandoned"
                // The fresh thread has been joined, but an exited thread may linger in /proc for
                // an instant: wait until only the stuck one is there.
                waitUntil "only the stuck thread to be left in its call" (fun () -> (callThreads ()).Length = 1)
            finally
                gate.Set()

            waitUntil "the abandoned thread to end once its call returns" (fun () -> Array.isEmpty (callThreads ())))

        leakTest "threads: a stuck call fails the run by default, naming stage and position" (fun () ->
            use gate = new ManualResetEventSlim(false)

            let f (x: int) =
                if x = 7 then
                    gate.Wait()

                x

            let p = Stage.map (f, timeout = patience, name = "p", workers = 2)

            let e =
                try
                    catchExn (fun () -> collect (Pipeline.toSeqFrom [ 1..10 ] p) |> ignore)
                finally
                    gate.Set()

            isTimeout 6 e
            waitUntil "the abandoned thread to end" (fun () -> Array.isEmpty (callThreads ())))

        for threads in [ true; false ] do
            leakTest $"""{(if threads then "threads" else "async")}: a timed-out item is retried""" (fun () ->
                use gate = new ManualResetEventSlim(false)
                let counts = FailureCounts()
                let mutable first = 1

                let stuck x =
                    x = 3 && Interlocked.Exchange(&first, 0) = 1

                let policy = OnError.Retry(2, tiny, (fun e -> e :? TimeoutException), OnError.Fail)

                let p =
                    if threads then
                        Stage.map (
                            (fun x ->
                                if stuck x then
                                    gate.Wait()

                                x),
                            timeout = patience,
                            onError = policy,
                            counts = counts,
                            name = "p"
                        )
                    else
                        Stage.mapTask (
                            (fun x (ct: CancellationToken) ->
                                task {
                                    if stuck x then
                                        do! Task.Delay(Timeout.Infinite, ct)

                                    return x
                                }),
                            timeout = patience,
                            onError = policy,
                            counts = counts,
                            name = "p"
                        )

                let results =
                    try
                        collect (Pipeline.toSeqFrom [ 1..5 ] p)
                    finally
                        gate.Set()

                Expect.equal (sorted results) [ 1..5 ] "all delivered"
                Expect.equal counts.TimedOut 1L "one time-out"
                Expect.equal counts.Retries 1L "one retry"
                waitUntil "the abandoned thread to end" (fun () -> Array.isEmpty (callThreads ())))
    ]


/// Per-worker state: init once per worker (on its thread for blocking stages), dispose at the end.
let private state =
    testList
        "per-worker state"
        [
            leakTest "threads: init once per worker, on its thread; f gets it; dispose at the end" (fun () ->
                let inits = ConcurrentBag<int>()
                let disposed = ConcurrentBag<int>()

                let init () =
                    let id = Thread.CurrentThread.ManagedThreadId
                    inits.Add id
                    id

                let p =
                    Stage.mapWithState (
                        init,
                        (fun (s: int) (_: int) -> s, s = Thread.CurrentThread.ManagedThreadId),
                        dispose = (fun s -> disposed.Add s),
                        workers = 3
                    )

                let results = collect (Pipeline.toSeqFrom [ 1..300 ] p)
                Expect.equal results.Length 300 "all delivered"
                Expect.isTrue (results |> List.forall snd) "f runs on the thread that made the state"
                Expect.equal inits.Count 3 "init once per worker"
                Expect.isTrue (results |> List.forall (fun (s, _) -> Seq.contains s inits)) "each state is a worker's"
                Expect.equal (sorted (List.ofSeq disposed)) (sorted (List.ofSeq inits)) "each state disposed once")

            leakTest "async: init once per worker; dispose also when the run fails" (fun () ->
                let inits = ref 0
                let disposed = ref 0

                let f (s: int ref) (x: int) (_: CancellationToken) =
                    task {
                        s.Value <- s.Value + 1

                        if x = 500 then
                            failwith "boom"

                        return x
                    }

                let p =
                    Stage.mapTaskWithState (
                        (fun () ->
                            Interlocked.Increment inits |> ignore
                            ref 0),
                        f,
                        dispose = (fun _ -> Interlocked.Increment disposed |> ignore),
                        workers = 4
                    )

                let ok = collect (Pipeline.toSeqFrom [ 1..100 ] p)
                Expect.equal (sorted ok) [ 1..100 ] "all delivered"
                Expect.equal inits.Value 4 "init once per worker"
                Expect.equal disposed.Value 4 "disposed once per worker"

                catchExn (fun () -> collect (Pipeline.toSeqFrom [ 1..1000 ] p) |> ignore)
                |> ignore

                Expect.equal inits.Value 8 "init once per worker of the second run"
                Expect.equal disposed.Value 8 "disposed after the failed run too")

            leakTest "state and a policy together" (fun () ->
                let counts = FailureCounts()

                let p =
                    Stage.mapWithState (
                        (fun () -> 10),
                        (fun s x -> if x % 2 = 0 then failwith "even" else s * x),
                        onError = OnError.Skip,
                        counts = counts
                    )

                Expect.equal (collect (Pipeline.toSeqFrom [ 1..10 ] p)) [ 10; 30; 50; 70; 90 ] "odd items"
                Expect.equal counts.Skipped 5L "evens skipped")

            testCase "a null init is refused" (fun () ->
                match
                    Expect.throwsC
                        (fun () ->
                            Stage.mapWithState (Unchecked.defaultof<unit -> int>, (fun s x -> s + x))
                            |> ignore)
                        id
                with
                | :? ArgumentNullException as e -> Expect.equal e.ParamName "init" "names init"
                | e -> failtestf "expected ArgumentNullException, got %O" e)
        ]


let tests = testList "timeouts and state" [ yield! timeouts; state ]
