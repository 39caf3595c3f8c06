/// The suite's watchdog: a test that outruns its limit fails, naming itself and showing where it
/// waits; a test within its limit keeps its own outcome.
module Pyper.Tests.WatchdogTests

open System
open System.IO
open System.Runtime.CompilerServices
open System.Threading
open Expecto
open Pyper.Tests.Helpers

/// A test body that waits until released, found by its method's name in the stacks.
type private Stuck() =
    let gate = new ManualResetEventSlim(false)
    member val Thread: Thread = null with get, set

    [<MethodImpl(MethodImplOptions.NoInlining)>]
    member this.WaitHereUntilReleased() =
        this.Thread <- Thread.CurrentThread
        gate.Wait()

    member _.Release() = gate.Set()

/// The one test case of `test`, guarded with `limit` and reporting on `log`, as a function.
let private guarded (log: TextWriter) (limit: TimeSpan) (test: Test) : unit -> unit =
    match Test.toTestCodeList (Watchdog.guardWith log limit test) with
    | [ flat ] ->
        match flat.test with
        | Sync f -> f
        | other -> failtestf "expected a synchronous test, got %A" other
    | other -> failtestf "expected one test, got %d" other.Length

/// What `f` throws, assertions included.
let private thrown (f: unit -> unit) : exn =
    let outcome =
        try
            f ()
            None
        with e ->
            Some e

    match outcome with
    | Some e -> e
    | None -> failtest "expected an exception"

let tests =
    testList
        "watchdog"
        [
            testCase "a test that outruns its limit fails, naming itself and showing where it waits" (fun () ->
                let stuck = Stuck()
                let log = new StringWriter()
                // The body cannot end before it is released, so any limit is outrun.
                let limit = TimeSpan.FromSeconds 1.0

                let run =
                    guarded log limit (testList "outer" [ testCase "stuck" (fun () -> stuck.WaitHereUntilReleased()) ])

                try
                    match thrown run with
                    | :? AssertException as e ->
                        Expect.stringContains
                            e.Message
                            "hang: the test did not finish within 00:00:01"
                            "fails as a hang"
                    | e -> failtestf "expected an AssertException, got %O" e

                    let report = string log
                    Expect.stringContains report "watchdog: test 'outer/stuck' still runs after 00:00:01" "its name"
                    Expect.stringContains report "WaitHereUntilReleased" "the stacks show where it waits"

                    Expect.stringContains
                        report
                        "watchdog: test 'outer/stuck' is abandoned"
                        "and that the suite goes on"
                finally
                    stuck.Release()

                Expect.isTrue (stuck.Thread.Join hangGuard) "the abandoned test's thread ends once released")

            testCase "a test within its limit keeps its own outcome" (fun () ->
                let log = new StringWriter()

                let within (body: unit -> unit) =
                    guarded log hangGuard (testCase "t" body)

                let mutable ran = false
                within (fun () -> ran <- true) ()
                Expect.isTrue ran "a passing body ran and passed"

                match thrown (within (fun () -> failtest "its own message")) with
                | :? AssertException as e -> Expect.equal e.Message "its own message" "an assertion, unchanged"
                | e -> failtestf "expected an AssertException, got %O" e

                match thrown (within (fun () -> invalidOp "boom")) with
                | :? InvalidOperationException as e -> Expect.equal e.Message "boom" "an exception, unwrapped"
                | e -> failtestf "expected an InvalidOperationException, got %O" e

                let asyncCase =
                    Test.toTestCodeList (Watchdog.guardWith log hangGuard (testAsync "a" { failtest "async" }))

                match asyncCase with
                | [ { test = Sync f } ] ->
                    match thrown f with
                    | :? AssertException as e -> Expect.equal e.Message "async" "an async test's assertion, unchanged"
                    | e -> failtestf "expected an AssertException, got %O" e
                | other -> failtestf "expected one synchronous test, got %A" other

                Expect.equal (string log) "" "nothing reported")
        ]
