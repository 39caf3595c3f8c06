/// The fault campaign's distributed share: random pipelines with a distributed stage (NATS
/// JetStream, two worker hosts) among in-process stages, random inputs and random faults, worker
/// kills among them; each run checked against the sequential model, for hangs and for leaks. The
/// test suite runs a few cases; `dotnet fsi build.fsx soak` runs more.
module Pyper.Tests.DistributedCampaign

open System
open Expecto
open FsCheck
open FsCheck.FSharp
open Pyper.Tests.Helpers
open Pyper.Tests.CampaignModel
open Pyper.Tests.Campaign
open Pyper.Tests.DistributedTests

/// A case: up to two in-process stages around one distributed stage, up to 300 items.
let caseGen =
    gen {
        let local =
            stageGen
            |> Gen.map (fun s ->
                match s.Kind with
                | InProcess -> { s with Kind = Map } // worker processes belong to the other campaign
                | State when s.Shape = 2 -> { s with Shape = 0 }
                | _ -> s)

        let! before = Gen.choose (0, 1) |> Gen.bind (fun n -> Gen.listOfLength n local)

        let! remote =
            stageGen
            |> Gen.map (fun s ->
                { s with
                    Kind = Distributed
                    Workers = 1 + s.Workers % 4
                })

        let! after = Gen.choose (0, 1) |> Gen.bind (fun n -> Gen.listOfLength n local)
        let stages = before @ [ remote ] @ after
        let! size = Gen.choose (0, 300)
        let! input = Gen.listOfLength size (Gen.choose (-1000, 1000))

        let! fault =
            Gen.frequency
                [
                    2, Gen.constant NoFault
                    // mostly in the distributed stage (thrown in the worker)
                    2, Gen.choose (1, 100) |> Gen.map (fun c -> Throw(before.Length, c))
                    1, Gen.map2 (fun s c -> Throw(s, c)) (Gen.choose (0, stages.Length - 1)) (Gen.choose (1, 100))
                    1, Gen.choose (0, 100) |> Gen.map CancelAfter
                    1, Gen.choose (0, 100) |> Gen.map StopAfter
                    3, Gen.choose (0, 50) |> Gen.map KillWorker
                ]

        return
            {
                Stages = stages
                Input = input
                Fault = fault
                BlockingSource = false
            }
    }

/// Runs `samples` against one server and two worker hosts; a killed worker is replaced before
/// the next case.
let private campaignOn (samples: Case seq) (limit: TimeSpan) (failFast: bool) (log: string -> unit) =
    use fixture = new NatsFixture()
    // A killed worker's batch goes to the other after AckWait.
    let server = fixture.Server.WithAckWait(TimeSpan.FromSeconds 1.0)

    let workers =
        ResizeArray [ new WorkerHostProcess(fixture); new WorkerHostProcess(fixture) ]

    let kill () =
        let w = workers[0]
        workers.RemoveAt 0
        w.Kill()
        (w :> IDisposable).Dispose()

    let runOne (case: Case) =
        let outcome = runWith (Some server) kill limit case

        while workers.Count < 2 do
            workers.Add(new WorkerHostProcess(fixture))

        let streams, announced = fixture.Leftovers()

        match outcome with
        | Passed when not streams.IsEmpty || announced <> 0L ->
            Leaked $"left on the server: streams {streams}, {announced} announcements"
        | outcome -> outcome

    try
        campaignOf samples runOne failFast log
    finally
        for w in workers do
            (w :> IDisposable).Dispose()

/// Runs `cases` cases from `seed`; see `campaignOn`.
let campaign (seed: uint64) (cases: int) (limit: TimeSpan) (failFast: bool) (log: string -> unit) =
    campaignOn (Gen.sampleWithSeed (Rnd seed) 50 cases caseGen) limit failFast log

/// `build.fsx soak`'s case `index` (from 1), run `times` times, stopping at the first bad outcome:
/// a rare hang's replay. Returns the exit code.
let replay (index: int) (times: int) =
    let case = Gen.sampleWithSeed (Rnd 1UL) 50 index caseGen |> Seq.last

    let tally =
        campaignOn (Seq.replicate times case) (TimeSpan.FromSeconds 60.0) true (printfn "%s")

    printfn
        "replay of case %d: %d runs, %d hangs, %d leaks, %d wrong"
        index
        tally.Cases
        tally.Hangs
        tally.Leaks
        tally.Wrong

    if tally.Hangs + tally.Leaks + tally.Wrong = 0 then 0 else 1

let tests =
    match natsServerPath with
    | None -> testList "distributed campaign" []
    | Some _ ->
        testList
            "distributed campaign"
            [
                testCase
                    "4 random pipelines with a distributed stage and random faults, worker kills among them"
                    (fun () ->
                        let before = ResizeArray()
                        let tally = campaign 20261127UL 4 (TimeSpan.FromSeconds 60.0) true before.Add
                        Expect.equal (tally.Hangs, tally.Leaks, tally.Wrong) (0, 0, 0) (String.concat "\n" before)
                        assertNoLeaks ())
            ]

/// `build.fsx soak`'s distributed share: `cases` cases. Returns the exit code.
let soak (cases: int) =
    match natsServerPath with
    | None ->
        printfn
            "distributed soak: skipped, nats-server is not installed (Debian/Ubuntu: apt-get install -y nats-server)"

        0
    | Some _ ->
        let clock = Diagnostics.Stopwatch.StartNew()
        let tally = campaign 1UL cases (TimeSpan.FromSeconds 60.0) false (printfn "%s")

        printfn
            "distributed soak: %d cases, %d faults injected, %d hangs, %d leaks, %d wrong results (%.0f s)"
            tally.Cases
            tally.Faults
            tally.Hangs
            tally.Leaks
            tally.Wrong
            clock.Elapsed.TotalSeconds

        if tally.Hangs + tally.Leaks + tally.Wrong = 0 then 0 else 1
