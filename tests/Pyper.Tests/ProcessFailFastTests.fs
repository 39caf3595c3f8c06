/// A failure reaches the consumer as soon as it is known (issue #11, point 3): the consumer does
/// not wait for the run's other workers to end; disposing the enumerator does.
module Pyper.Tests.ProcessFailFastTests

open System
open System.Threading
open System.Threading.Tasks
open Expecto
open Pyper
open Pyper.FSharp
open Pyper.Tests.Helpers
open Pyper.Tests.ProcessTests

/// Runs `hold >=> failing` over 1, then 0: a worker of the first stage blocks on item 1 until the
/// test releases it; item 0 passes the other worker and fails in `failing`. The consumer's
/// MoveNext must raise the failure (`check` looks at it) while item 1 is still held; the
/// enumerator's disposal returns only once the held worker is released and has finished.
let private failsWhileAnotherWorkerIsBlocked (failing: Pipeline<int, int>) (check: exn -> unit) =
    use gate = new ManualResetEventSlim(false)
    use blocked = new ManualResetEventSlim(false)

    let hold (x: int) =
        if x = 1 then
            blocked.Set()
            gate.Wait()

        x

    // Item 0 comes once item 1 is held, so that the other worker takes it.
    let source =
        seq {
            yield 1
            blocked.Wait hangGuard |> ignore
            yield 0
        }

    let run =
        (Pipeline.toSeqFrom source (Stage.map (hold, workers = 2, name = "hold") >=> failing)).GetEnumerator()

    try
        let moving =
            Task.Run(fun () ->
                catchExn (fun () ->
                    while run.MoveNext() do
                        ()))

        // Before, the consumer raised only once every worker had ended: here, never before the
        // test releases the held one (the hang guard ran out).
        let arrived = endsWithin hangGuard moving

        Expect.isTrue arrived "the failure reaches the consumer while a worker of another stage is still blocked"

        Expect.isTrue blocked.IsSet "item 1 was held"
        check moving.Result
        let disposing = Task.Run(fun () -> run.Dispose())
        // One-sided: a disposal that returned early would show here (nothing can flake on a slow machine).
        Expect.isFalse (disposing.Wait 100) "the disposal waits for the held worker"
        gate.Set()
        Expect.isTrue (disposing.Wait hangGuard) "the disposal returns once the held worker has finished"
    finally
        gate.Set()
        run.Dispose()

let tests =
    testList
        "failures reach the consumer fast"
        [
            processTest "a worker process's failure, with its details, does not wait for the other workers" (fun () ->
                let raiser =
                    Stage.map (ProcessHardeningTests.Remote.raiser, multiprocess = true, name = "raiser")

                failsWhileAnotherWorkerIsBlocked raiser (fun e ->
                    // The full failure frame's exception, not the brief one's (no ParamName, no trace).
                    match e with
                    | :? ArgumentNullException as e ->
                        Expect.equal e.ParamName "value" "ParamName"
                        Expect.equal (PipelineError.stage e) (Some "raiser") "stage"
                        Expect.stringContains (string e.Data["Pyper.RemoteStackTrace"]) "raiser" "remote stack trace"
                    | e -> failtestf "ArgumentNullException expected, got %O" e))

            leakTest "a thread stage's failure does not wait for the other workers" (fun () ->
                let failing =
                    Stage.map ((fun (x: int) -> if x = 0 then invalidOp "zero" else x), name = "zero")

                failsWhileAnotherWorkerIsBlocked failing (fun e ->
                    Expect.equal e.Message "zero" "the failure"
                    Expect.equal (PipelineError.stage e) (Some "zero") "stage"))
        ]
