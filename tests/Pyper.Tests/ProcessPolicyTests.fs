/// Failure policies and timeouts (issue #17) on worker-process stages.
module Pyper.Tests.ProcessPolicyTests

open System
open System.Collections.Concurrent
open System.IO
open System.Threading
open Expecto
open Pyper
open Pyper.FSharp
open Pyper.Tests.Helpers

/// A bound argument: a factor, and a key under which a worker process counts its set-ups.
type Scaling = { Factor: int; Key: string }

/// A bound argument that cannot cross to a worker process.
type Unsendable = { Make: Func<int> }

/// Functions that worker processes run: module functions of this compiled assembly.
module Remote =
    let scale (k: int) (x: int) = k * x

    let ignoreArg (_: Unsendable) (x: int) = x

    /// Sets up once per application to its argument, counting its set-ups in this process (in its
    /// AppDomain data, under the argument's key); then tags each result with that count.
    let setUp (s: Scaling) =
        let key = $"pyper-test-setups-{s.Key}"

        let n =
            match AppDomain.CurrentDomain.GetData key with
            | :? int as n -> n + 1
            | _ -> 1

        AppDomain.CurrentDomain.SetData(key, box n)
        fun (x: int) -> n, x * s.Factor

    let failOnSevens (x: int) =
        if x % 7 = 0 then invalidOp $"seven at {x}" else x * 2

    /// Fails each item's first call in this worker process (remembered in the process's AppDomain
    /// data: a module value of a test program is not initialised in a worker process).
    let failOnce (x: int) =
        let key = $"pyper-test-seen-{x}"

        if isNull (AppDomain.CurrentDomain.GetData key) then
            AppDomain.CurrentDomain.SetData(key, box true)
            invalidOp $"first call of {x}"
        else
            x * 2

    /// The worker process exits (a crash, as far as the parent can tell) on item 5.
    let exitAtFive (x: int) =
        if x = 5 then
            exit 42

        x * 2

    /// The worker process exits the first time it sees `marker`: a file that marks the first call.
    let exitOnce (marker: string) =
        if File.Exists marker then
            marker.Length
        else
            File.WriteAllText(marker, "")
            exit 42

    /// Never returns for item 3.
    let stuckAtThree (x: int) =
        if x = 3 then
            Thread.Sleep Timeout.Infinite

        x * 2

let private tiny = TimeSpan.FromTicks 10L

/// Inputs that are not multiples of seven.
let private notSevens (xs: int list) = xs |> List.filter (fun x -> x % 7 <> 0)

let tests =
    testSequenced
    <| testList
        "process policies"
        [
            leakTest "Skip drops the items whose function threw, counted; ordered keeps order" (fun () ->
                let counts = FailureCounts()

                let p =
                    Stage.map (
                        Remote.failOnSevens,
                        workers = 2,
                        ordered = true,
                        multiprocess = true,
                        onError = OnError.Skip,
                        counts = counts
                    )

                let results = collect (Pipeline.toSeqFrom [ 1..50 ] p)
                Expect.equal results (notSevens [ 1..50 ] |> List.map ((*) 2)) "in order, sevens left out"
                Expect.equal counts.Skipped 7L "seven skipped")

            leakTest "DeadLetter gets the item, the rebuilt exception and the attempts" (fun () ->
                let dead = ConcurrentBag<int * exn * int>()

                let p =
                    Stage.map (
                        Remote.failOnSevens,
                        workers = 2,
                        multiprocess = true,
                        onError = OnError.DeadLetter(fun x e n -> dead.Add(x, e, n))
                    )

                let results = collect (Pipeline.toSeqFrom [ 1..30 ] p)
                Expect.equal (sorted results) (notSevens [ 1..30 ] |> List.map ((*) 2)) "the rest"
                let dead = dead |> Seq.sortBy (fun (x, _, _) -> x) |> List.ofSeq
                Expect.equal (dead |> List.map (fun (x, _, _) -> x)) [ 7; 14; 21; 28 ] "dead-lettered items"

                for x, e, n in dead do
                    Expect.equal n 1 "one attempt"

                    match e with
                    | :? InvalidOperationException as e ->
                        Expect.equal e.Message $"seven at {x}" "the worker's exception"
                    | e -> failtestf "expected the rebuilt InvalidOperationException, got %O" e)

            leakTest "Retry calls a failed item again, counted" (fun () ->
                let counts = FailureCounts()

                let p =
                    Stage.map (
                        Remote.failOnce,
                        multiprocess = true,
                        onError = OnError.Retry(2, tiny, (fun e -> e :? InvalidOperationException), OnError.Fail),
                        counts = counts
                    )

                Expect.equal (sorted (collect (Pipeline.toSeqFrom [ 1..20 ] p))) [ 2..2..40 ] "all delivered"
                Expect.equal counts.Retries 20L "one retry per item")

            leakTest
                "a worker process that crashes on an item: Skip, and the run goes on with a fresh worker"
                (fun () ->
                    let counts = FailureCounts()

                    let p =
                        Stage.map (
                            Remote.exitAtFive,
                            workers = 2,
                            multiprocess = true,
                            onError = OnError.Retry(2, tiny, (fun _ -> true), OnError.Skip),
                            counts = counts
                        )

                    let results = collect (Pipeline.toSeqFrom [ 1..20 ] p)
                    Expect.equal (sorted results) ([ 1..20 ] |> List.filter ((<>) 5) |> List.map ((*) 2)) "all but 5"
                    Expect.equal counts.Retries 2L "two retries, each on a fresh worker"
                    Expect.equal counts.Skipped 1L "then skipped")

            leakTest "a crash dead-letters a RemoteStageException with the exit code" (fun () ->
                let dead = ConcurrentBag<int * exn * int>()

                let p =
                    Stage.map (
                        Remote.exitAtFive,
                        multiprocess = true,
                        name = "crashy",
                        onError = OnError.DeadLetter(fun x e n -> dead.Add(x, e, n))
                    )

                Expect.equal (collect (Pipeline.toSeqFrom [ 1..8 ] p)).Length 7 "the rest"

                match List.ofSeq dead with
                | [ 5, (:? RemoteStageException as e), 1 ] ->
                    Expect.equal e.ExitCode (Nullable 42) "the exit code"
                    Expect.stringContains e.Message "Stage 'crashy'" "names the stage"
                | other -> failtestf "expected item 5 with a RemoteStageException, got %A" other)

            leakTest "a retry after a crash runs on a fresh worker process and succeeds" (fun () ->
                let counts = FailureCounts()

                let marker =
                    Path.Combine(Path.GetTempPath(), $"pyper-crash-once-{Guid.NewGuid():N}")

                try
                    let p =
                        Stage.map (
                            Remote.exitOnce,
                            multiprocess = true,
                            onError = OnError.Retry(1, tiny, (fun e -> e :? RemoteStageException), OnError.Fail),
                            counts = counts
                        )

                    Expect.equal (collect (Pipeline.toSeqFrom [ marker ] p)) [ marker.Length ] "delivered"
                    Expect.equal counts.Retries 1L "one retry"
                finally
                    File.Delete marker)

            leakTest "a run that stops early or is cancelled stops its policy workers, none is left" (fun () ->
                withKeepAlive 60_000 (fun () ->
                    let source = CountingSource()

                    let p =
                        Stage.map (
                            Remote.failOnSevens,
                            workers = 2,
                            multiprocess = true,
                            timeout = TimeSpan.FromMinutes 1.0,
                            onError = OnError.Skip
                        )

                    Expect.equal (collect (Pipeline.toSeqFrom source.Items p |> Seq.truncate 5)).Length 5 "five"
                    Expect.equal (WorkerPool.idleCount ()) 0 "workers stopped mid-stream are not kept"))

            leakTest "without a policy a crash still fails the run" (fun () ->
                let p = Stage.map (Remote.exitAtFive, multiprocess = true)

                match catchExn (fun () -> collect (Pipeline.toSeqFrom [ 1..8 ] p) |> ignore) with
                | :? RemoteStageException as e -> Expect.equal e.ExitCode (Nullable 42) "the exit code"
                | e -> failtestf "expected RemoteStageException, got %O" e)

            leakTest "a stuck item: its worker process is killed and replaced, the item fails with a TimeoutException"
            <| fun () ->
                let counts = FailureCounts()
                let dead = ConcurrentBag<int * exn>()

                let p =
                    Stage.map (
                        Remote.stuckAtThree,
                        workers = 2,
                        multiprocess = true,
                        name = "stuck",
                        timeout = TimeSpan.FromSeconds 2.0,
                        onError = OnError.DeadLetter(fun x e _ -> dead.Add(x, e)),
                        counts = counts
                    )

                let results = collect (Pipeline.toSeqFrom [ 0..9 ] p)
                Expect.equal (sorted results) ([ 0..9 ] |> List.filter ((<>) 3) |> List.map ((*) 2)) "the rest"
                Expect.equal counts.TimedOut 1L "one timed out"

                match List.ofSeq dead with
                | [ 3, (:? TimeoutException as e) ] ->
                    Expect.stringContains e.Message "Stage 'stuck' (map)" "names the stage"
                    Expect.stringContains e.Message "input position 3" "and the item's position"
                | other -> failtestf "expected item 3 with a TimeoutException, got %A" other

            leakTest "a stuck item with Skip: the run completes with the rest" (fun () ->
                let counts = FailureCounts()

                let p =
                    Stage.map (
                        Remote.stuckAtThree,
                        multiprocess = true,
                        timeout = TimeSpan.FromSeconds 2.0,
                        onError = OnError.Skip,
                        counts = counts
                    )

                let results = collect (Pipeline.toSeqFrom [ 0..9 ] p)
                Expect.equal results ([ 0..9 ] |> List.filter ((<>) 3) |> List.map ((*) 2)) "the rest, in order"
                Expect.equal counts.Skipped 1L "skipped")

            leakTest "a stuck item without onError fails the run with a TimeoutException" (fun () ->
                let p =
                    Stage.map (Remote.stuckAtThree, multiprocess = true, timeout = TimeSpan.FromSeconds 2.0)

                match catchExn (fun () -> collect (Pipeline.toSeqFrom [ 0..9 ] p) |> ignore) with
                | :? TimeoutException as e -> Expect.stringContains e.Message "input position 3" "the position"
                | e -> failtestf "expected TimeoutException, got %O" e)

            leakTest
                "mapBound: the bound argument is sent once per worker process, which applies the function to it once"
                (fun () ->
                    let arg =
                        {
                            Factor = 3
                            Key = Guid.NewGuid().ToString "N"
                        }

                    let p = Stage.mapBound (Remote.setUp, arg, workers = 2, multiprocess = true)
                    let results = collect (Pipeline.toSeqFrom [ 1..40 ] p)
                    Expect.equal (results |> List.map snd |> sorted) [ 3..3..120 ] "the factor crossed"
                    Expect.equal (results |> List.map fst |> List.distinct) [ 1 ] "one set-up in each worker process"

                    let q =
                        Stage.mapBound (Remote.scale, 5, multiprocess = true, onError = OnError.Skip)

                    Expect.equal (collect (Pipeline.toSeqFrom [ 1..3 ] q)) [ 5; 10; 15 ] "with a policy too")

            testCase "mapBound on threads is map (f arg)" (fun () ->
                Expect.equal
                    (collect (Pipeline.toSeqFrom [ 1..3 ] (Stage.mapBound (Remote.scale, 2))))
                    [ 2; 4; 6 ]
                    "scaled")

            testCase "mapBound refuses a bound argument that cannot cross, when built" (fun () ->
                let arg = { Make = Func<int>(fun () -> 1) }

                match catchExn (fun () -> Stage.mapBound (Remote.ignoreArg, arg, multiprocess = true) |> ignore) with
                | :? ArgumentException as e ->
                    Expect.equal e.ParamName "arg" "the option"
                    Expect.stringContains e.Message "bound argument" "says what"
                | e -> failtestf "expected ArgumentException, got %O" e)

            testCase "process stages check timeout and onError when built" (fun () ->
                match
                    catchExn (fun () ->
                        Stage.map (Remote.failOnSevens, multiprocess = true, timeout = TimeSpan.Zero)
                        |> ignore)
                with
                | :? ArgumentOutOfRangeException as e -> Expect.equal e.ParamName "timeout" "the option"
                | e -> failtestf "expected ArgumentOutOfRangeException, got %O" e

                let retry =
                    OnError.Retry(1, tiny, (fun _ -> true), OnError.Retry(1, tiny, (fun _ -> true), OnError.Fail))

                match
                    catchExn (fun () ->
                        Stage.map (Remote.failOnSevens, multiprocess = true, onError = retry) |> ignore)
                with
                | :? ArgumentException as e -> Expect.equal e.ParamName "onError" "the option"
                | e -> failtestf "expected ArgumentException, got %O" e)
        ]
