module Pyper.Tests.Main

open System
open System.IO
open Expecto
open Expecto.Impl

let private all =
    testList
        "Pyper"
        [
            WatchdogTests.tests
            ValidationTests.tests
            Primitives.QueueTests.tests
            Primitives.OrderTests.tests
            Primitives.StreamTests.tests
            Contract.Suite.tests
            MapTests.tests
            BranchTests.tests
            RunTests.tests
            AsyncSeqTests.tests
            DedicatedThreadTests.tests
            LawTests.tests
            ProcessTests.tests
            ProcessWireTests.tests
            ChannelTests.tests
            HardeningTests.tests
            ProcessHardeningTests.tests
            ProcessExitTests.tests
            ProcessFailFastTests.tests
            DistributedTests.tests
            DistributedFaultTests.tests
            DistributedPolicyTests.tests
            DistributedStateTests.tests
            ObservabilityTests.tests
            ProgressTests.tests
            PolicyTests.tests
            PolicyTimeoutTests.tests
            RateLimitTests.tests
            ProcessPolicyTests.tests
            ProcessStateTests.tests
            Campaign.tests
            DistributedCampaign.tests
            Pyper.CSharp.Tests.FacadeTests.All
            Pyper.CSharp.Tests.HardeningTests.All
            Pyper.CSharp.Tests.ProcessHardeningTests.All
            Pyper.CSharp.Tests.PolicyTests.All
        ]

/// Runs every test; under build.fsx the counts go to a file and build.fsx prints the closing line.
let private runTests (argv: string[]) =
    let mutable summary = None

    // Tests count live workers process-wide, so they run one at a time.
    let code =
        runTestsWithCLIArgs
            [
                CLIArguments.Sequenced
                CLIArguments.No_Spinner
                CLIArguments.Append_Summary_Handler(SummaryHandler(fun s -> summary <- Some s))
            ]
            argv
            (Watchdog.guard all)

    match summary with
    | Some s ->
        let passed = s.passed.Length
        let failed = s.failed.Length + s.errored.Length

        match Environment.GetEnvironmentVariable "PYPER_TEST_SUMMARY" with
        | null
        | "" -> printfn "%d passed, %d failed" passed failed
        | path ->
            // The counts, then one line per failed test (its name and the first line of why), which
            // build.fsx repeats just above its closing line, where a CI log's tail shows them.
            let why (test: FlatTest, result: TestSummary) =
                let reason =
                    match result.result with
                    | TestResult.Failed message -> message
                    | TestResult.Error e -> $"{e.GetType().Name}: {e.Message}"
                    | other -> string other

                let first = reason.Trim().Split('\n').[0].Trim()
                let line = $"""{String.concat "/" test.name}: {first}"""

                if line.Length > 300 then
                    line.Substring(0, 300) + "..."
                else
                    line

            let lines = (s.failed @ s.errored) |> List.map why
            File.WriteAllLines(path, $"{passed} {failed}" :: lines)
    | None -> ()

    code

[<EntryPoint>]
let main argv =
    match argv with
    | [| "--soak"; cases |] ->
        let local = Campaign.soak (int cases)
        // The distributed share: a fiftieth of the cases (each starts queues on a server), at least 20.
        let distributed = DistributedCampaign.soak (max 20 (int cases / 50))
        max local distributed
    | [| "--soak-distributed"; cases |] -> DistributedCampaign.soak (int cases)
    | [| "--replay-distributed"; index; times |] -> DistributedCampaign.replay (int index) (int times)
    | [| "--progress-demo" |] -> ProgressTests.demo ()
    | _ -> runTests argv
