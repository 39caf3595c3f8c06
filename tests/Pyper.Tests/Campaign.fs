/// The randomized fault campaign: random pipelines of every stage kind, random inputs and random
/// faults, each run checked against a sequential model, for hangs and for leaks. The test suite
/// runs a fixed-seed share; `dotnet fsi build.fsx soak` runs 10,000 cases.
module Pyper.Tests.Campaign

open System
open System.Diagnostics
open System.Threading
open System.Threading.Tasks
open Expecto
open FsCheck
open FsCheck.FSharp
open Pyper
open Pyper.FSharp
open Pyper.Tests.Helpers
open Pyper.Tests.CampaignModel
open Pyper.Tests.CampaignBuild

let private countOf (xs: int list) = xs |> List.countBy id |> Map.ofList

/// True when every item of `xs` is in `model`, no more often.
let private within (model: int list) (xs: int list) =
    let m = countOf model

    countOf xs
    |> Map.forall (fun k n -> Map.tryFind k m |> Option.exists (fun c -> n <= c))

/// Counts over a campaign.
type Tally() =
    member val Cases = 0 with get, set
    member val Faults = 0 with get, set
    member val Triggered = 0 with get, set
    member val Hangs = 0 with get, set
    member val Leaks = 0 with get, set
    member val Wrong = 0 with get, set

/// What the state stages in worker processes did, from their files (see `stateFolder`): each
/// state made is disposed exactly once (the worker process may dispose after the run has ended,
/// within its grace: waited for up to `limit`), and no more states than workers and recycling
/// allow. `calls` counts the items sent to each stage.
let private processStates (case: Case) (calls: int[]) (limit: TimeSpan) =
    let stages =
        case.Stages
        |> List.indexed
        |> List.filter (fun (_, s) -> s.Kind = State && s.Shape = 2)

    if stages.IsEmpty then
        []
    else
        let folder = stateFolder Environment.ProcessId

        // `i-NAME` per state made, `d-NAME.ID` per dispose.
        let files prefix =
            IO.Directory.GetFiles(folder, prefix + "-*")
            |> Array.map (fun f -> (IO.Path.GetFileName f).Substring(2).Split('.')[0])

        let names prefix = files prefix |> Set.ofArray

        SpinWait.SpinUntil((fun () -> names "d" = names "i"), limit) |> ignore
        let made, disposed = names "i", names "d"
        let most = stages |> List.sumBy (fun (i, s) -> mostInits s calls[i])

        [
            for n in made - disposed do
                yield $"state {n} never disposed"

            for n in disposed - made do
                yield $"state {n} disposed, never made"

            for n, times in files "d" |> Array.countBy id do
                if times <> 1 then
                    yield $"state {n} disposed {times} times"

            if made.Count > most then
                yield $"worker processes made {made.Count} states, at most {most}"
        ]

/// Empties the folder of the process state stages' files before a case that has some.
let private clearStates (case: Case) =
    if case.Stages |> List.exists (fun s -> s.Kind = State && s.Shape = 2) then
        let folder = stateFolder Environment.ProcessId
        IO.Directory.CreateDirectory folder |> ignore

        for f in IO.Directory.GetFiles folder do
            IO.File.Delete f

/// Runs one case: the run must end within `limit`, match the model, and leave nothing behind.
/// `server` serves distributed stages; `kill` kills a distributed worker (fault KillWorker).
let runWith
    (server: Pyper.Distributed.NatsServer option)
    (kill: unit -> unit)
    (limit: TimeSpan)
    (case: Case)
    : Outcome =
    let calls = Array.zeroCreate case.Stages.Length
    let triggered = ref 0
    let counts = FailureCounts()
    let books = StateBooks(case.Stages.Length)
    clearStates case
    let pipeline = build server case calls triggered counts books
    let expected = model case
    use cts = new CancellationTokenSource()
    use release = new ManualResetEventSlim()

    let source =
        if case.BlockingSource then
            seq {
                yield! case.Input
                release.Wait()
            }
        else
            case.Input

    let consume () =
        task {
            let results = ResizeArray()
            let e = (Pipeline.streamFromSeq source pipeline).GetAsyncEnumerator cts.Token

            try
                match case.Fault with
                | CancelAfter ms -> cts.CancelAfter ms
                | KillWorker 0 -> kill ()
                | _ -> ()

                let mutable go =
                    match case.Fault with
                    | StopAfter 0 -> false
                    | _ -> true

                while go do
                    let! more = e.MoveNextAsync()

                    if more then
                        results.Add e.Current

                        match case.Fault with
                        | StopAfter k when results.Count >= k -> go <- false
                        | SlowConsumer every when results.Count % every = 0 -> Thread.Sleep 1
                        | KillWorker k when results.Count = k -> kill ()
                        | _ -> ()
                    else
                        go <- false

                return Ok(List.ofSeq results)
            finally
                e.DisposeAsync().AsTask().Wait()
                release.Set()
        }

    let attempt =
        Task.Run<Result<int list, exn>>(fun () ->
            task {
                try
                    return! consume ()
                with e ->
                    return Error e
            })

    let finished = (attempt :> Task).Wait limit

    if not finished then
        // The hung run's blocked source, if any, may end (its event is not disposed under it).
        release.Set()
        Hung
    else
        let verdict =
            match attempt.Result, case.Fault with
            | Error(Injected(s, c) as e), Throw(fs, fc) when s = fs && c = fc ->
                if (PipelineError.stage e).IsSome then
                    Passed
                else
                    Wrong "the injected failure carries no stage name"
            | Error e, _ when triggered.Value = 1 ->
                Wrong $"the injected failure surfaced as {e.GetType().Name}: {e.Message}"
            | Error(:? OperationCanceledException), CancelAfter _ -> Passed
            | Error e, _ -> Wrong $"unexpected failure {e}"
            | Ok _, Throw _ when triggered.Value = 1 -> Wrong "the injected failure was swallowed"
            | Ok results, StopAfter k ->
                if results.Length = min k expected.Length && within expected results then
                    Passed
                else
                    Wrong $"stopped after {results.Length} of {k}"
            | Ok _, _ when counts.Skipped + counts.DeadLettered <> int64 (modelDrops case) ->
                Wrong
                    $"the policies dropped {counts.Skipped} + {counts.DeadLettered} items, the model {modelDrops case}"
            | Ok results, _ when keepsOrder case ->
                if results = expected then
                    Passed
                else
                    Wrong "results differ from the model (in order)"
            | Ok results, _ ->
                if sorted results = sorted expected then
                    Passed
                else
                    Wrong "results differ from the model"

        // A blocked source is left behind by the run; once released, its thread must end.
        if case.BlockingSource then
            SpinWait.SpinUntil((fun () -> Live.threadCount () = 0), limit) |> ignore

        // Every state made was disposed exactly once, and no more were made than allowed.
        let verdict =
            let states =
                [
                    yield! books.Problems()

                    for i, s in List.indexed case.Stages do
                        if s.Kind = State && s.Shape <> 2 && books.Inits i > mostInits s calls[i] then
                            $"stage {i} made {books.Inits i} states, at most {mostInits s calls[i]}"

                    yield! processStates case calls limit
                ]

            match verdict, states with
            | Passed, [] -> Passed
            | Passed, problems -> Wrong(String.concat "; " problems)
            | wrong, _ -> wrong

        let leaks =
            [
                if Live.threadCount () <> 0 then
                    $"{Live.threadCount ()} threads"
                if Live.taskCount () <> 0 then
                    $"{Live.taskCount ()} tasks"
                if Live.processCount () <> 0 then
                    $"{Live.processCount ()} processes"
            ]

        match verdict, leaks with
        | Passed, [] -> Passed
        | Passed, leaks -> Leaked(String.concat ", " leaks)
        | wrong, _ -> wrong

/// Runs one case of the in-process campaign.
let run (limit: TimeSpan) (case: Case) : Outcome = runWith None ignore limit case

/// Runs `samples` with `run`, tallying; stops at the first bad outcome when `failFast`.
let campaignOf (samples: Case seq) (run: Case -> Outcome) (failFast: bool) (log: string -> unit) =
    let tally = Tally()
    let mutable stop = false

    for case in samples do
        if not stop then
            tally.Cases <- tally.Cases + 1

            if case.Fault <> NoFault then
                tally.Faults <- tally.Faults + 1

            match run case with
            | Passed -> ()
            | outcome ->
                match outcome with
                | Hung -> tally.Hangs <- tally.Hangs + 1
                | Leaked _ -> tally.Leaks <- tally.Leaks + 1
                | _ -> tally.Wrong <- tally.Wrong + 1

                log $"case {tally.Cases}: {outcome}\n%A{case}"
                stop <- failFast

            if tally.Cases % 500 = 0 then
                log
                    $"{tally.Cases} cases, {tally.Faults} faults, {tally.Hangs} hangs, {tally.Leaks} leaks, {tally.Wrong} wrong"

    tally

/// Runs `cases` cases of `gen` from `seed`, tallying; stops at the first bad outcome when `failFast`.
let campaignWith gen (seed: uint64) (cases: int) (limit: TimeSpan) (failFast: bool) (log: string -> unit) =
    try
        campaignOf (Gen.sampleWithSeed (Rnd seed) 50 cases gen) (run limit) failFast log
    finally
        let folder = stateFolder Environment.ProcessId

        if IO.Directory.Exists folder then
            IO.Directory.Delete(folder, true)

/// Runs `cases` cases from `seed` (state stages at the suite's weight), tallying; stops at the
/// first bad outcome when `failFast`.
let campaign (seed: uint64) (cases: int) (limit: TimeSpan) (failFast: bool) (log: string -> unit) =
    campaignWith caseGen seed cases limit failFast log

let tests =
    testList
        "campaign"
        [
            testCase "300 random pipelines with random faults: no hang, no leak, model results" (fun () ->
                let before = ResizeArray()
                let tally = campaign 20261127UL 300 hangGuard true before.Add
                Expect.equal (tally.Hangs, tally.Leaks, tally.Wrong) (0, 0, 0) (String.concat "\n" before)
                assertNoLeaks ())
        ]

/// Peak working set while `items` flow through three bounded stages, sampled every 20 ms.
let peakWorkingSet (items: int) =
    use me = Process.GetCurrentProcess()
    GC.Collect()
    GC.WaitForPendingFinalizers()
    me.Refresh()
    let baseline = me.WorkingSet64
    let mutable peak = baseline
    use stop = new ManualResetEventSlim()

    let sampler =
        Thread(
            (fun () ->
                while not (stop.Wait 20) do
                    me.Refresh()
                    peak <- max peak me.WorkingSet64),
            IsBackground = true
        )

    sampler.Start()
    let p = Stage.map ((+) 1) >=> Stage.map ((*) 2) >=> Stage.map (fun x -> x - 1)
    let total = Pipeline.toSeqFrom (seq { 1..items }) p |> Seq.sumBy int64
    stop.Set()
    sampler.Join()
    total, baseline, peak

/// `build.fsx soak`: the long campaign, then the memory probe. Returns the exit code.
let soak (cases: int) =
    let clock = Stopwatch.StartNew()
    // State stages weigh more here than in the suite's share (about one stage in seven).
    let tally =
        campaignWith (caseGenWith 4) 1UL cases (TimeSpan.FromSeconds 60.0) false (printfn "%s")

    printfn
        "soak: %d cases, %d faults injected, %d hangs, %d leaks, %d wrong results (%.0f s)"
        tally.Cases
        tally.Faults
        tally.Hangs
        tally.Leaks
        tally.Wrong
        clock.Elapsed.TotalSeconds

    let mb (b: int64) = float b / 1048576.0
    let _, base1, peak1 = peakWorkingSet 1_000_000
    let _, base10, peak10 = peakWorkingSet 10_000_000
    let growth1, growth10 = peak1 - base1, peak10 - base10

    printfn
        "memory: 1M items peak +%.0f MB, 10M items peak +%.0f MB over the working set before the run"
        (mb growth1)
        (mb growth10)
    // Generous bound: ten times the items may not cost more than 64 MB more at the peak.
    let flat = growth10 <= growth1 + 64L * 1048576L
    printfn "memory: %s" (if flat then "flat" else "GROWS with the item count")

    if tally.Hangs + tally.Leaks + tally.Wrong = 0 && flat then
        0
    else
        1
