/// The randomized fault campaign: random pipelines of every stage kind, random inputs and random
/// faults, each run checked against a sequential model, for hangs and for leaks. The test suite
/// runs a fixed-seed share; `dotnet fsi build.fsx soak` runs 10,000 cases.
module Pyper.Tests.Campaign

open System
open System.Collections.Generic
open System.Diagnostics
open System.Threading
open System.Threading.Tasks
open Expecto
open FsCheck
open FsCheck.FSharp
open Pyper
open Pyper.FSharp
open Pyper.Tests.Helpers

type Kind =
    | Map
    | MapTask
    | Branch
    | BranchStream
    | PassJoin
    | PassJoinStream
    | BatchFlatten
    | InProcess
    /// A map stage under a failure policy (issue #17); `Shape` picks it: 0 Skip, 1 Retry then
    /// Skip, 2 DeadLetter, 3 a timeout then Skip (async; some items never finish on their own).
    | Policy

/// A random stage: its kind, its function's parameters and its options.
type StageSpec =
    {
        Kind: Kind
        A: int
        B: int
        Copies: int
        Workers: int
        Capacity: int
        Ordered: bool
        Blocks: bool
        /// For a process stage: what crosses (0 ints, 1 value tuples, 2 a class with public
        /// fields, 3 ints through a generic function). For a policy stage: which policy.
        Shape: int
    }

type Fault =
    | NoFault
    /// The `call`-th call of stage `stage`'s function throws.
    | Throw of stage: int * call: int
    | CancelAfter of milliseconds: int
    | StopAfter of items: int
    | SlowConsumer of every: int

type Case =
    {
        Stages: StageSpec list
        Input: int list
        Fault: Fault
        /// The source blocks in MoveNext after its last item until the consumer has stopped
        /// (only with a fault that stops the consumer: cancellation, or stopping after k results).
        BlockingSource: bool
    }

/// The injected failure, so the campaign can tell it from anything else.
exception Injected of stage: int * call: int

/// An item with public fields, for process stages.
[<AllowNullLiteral>]
type CampaignItem() =
    [<DefaultValue>]
    val mutable X: int

    [<DefaultValue>]
    val mutable Text: string

    [<DefaultValue>]
    val mutable FailStage: int

    [<DefaultValue>]
    val mutable FailCall: int

/// What the campaign's process stages run in their workers. An item may carry the injected
/// failure (the worker throws it) and, now and then, a 3 MB text (a batch of its own).
module CampaignRemote =
    let private checkedTriple x (text: string) stage call =
        if stage >= 0 then
            raise (Injected(stage, call))
        elif isNull text || not (text.StartsWith(string x + ";")) then
            failwith $"item lost on the way: {x} {text}"
        else
            x * 3

    let tupled (struct (x: int, text: string, stage: int, call: int)) = checkedTriple x text stage call

    let fielded (i: CampaignItem) =
        checkedTriple i.X i.Text i.FailStage i.FailCall

    /// A generic function: its closure is closed over 'T in the worker.
    let generic<'T> w c o =
        Stage.map (
            (fun (x: int) -> if isNull typeof<'T>.Name then 0 else x * 3),
            workers = w,
            capacity = c,
            ordered = o,
            multiprocess = true
        )

/// What one case did.
type Outcome =
    | Passed
    | Hung
    | Leaked of string
    | Wrong of string

/// Whether a policy stage drops `x` (skips or dead-letters it): its call fails every time.
let private drops (s: StageSpec) (x: int) =
    match s.Shape with
    | 0 -> abs x % 7 = 3
    | 1 -> abs x % 11 = 5
    | 2 -> abs x % 5 = 1
    | _ -> abs x % 97 = 2

let private apply (s: StageSpec) (x: int) =
    match s.Kind with
    | Policy -> if drops s x then [] else [ x * s.A + s.B ]
    | Map
    | MapTask -> [ x * s.A + s.B ]
    | Branch
    | BranchStream -> List.replicate s.Copies x
    | PassJoin
    | PassJoinStream
    | BatchFlatten -> [ x ]
    | InProcess -> [ x * 3 ]

let model (case: Case) =
    case.Stages |> List.fold (fun xs s -> List.collect (apply s) xs) case.Input

/// How many items the case's policy stages drop (skip or dead-letter) in a run that ends.
let modelDrops (case: Case) =
    let mutable dropped = 0

    case.Stages
    |> List.fold
        (fun xs s ->
            if s.Kind = Policy then
                dropped <- dropped + (xs |> List.filter (drops s) |> List.length)

            List.collect (apply s) xs)
        case.Input
    |> ignore

    dropped

/// Results keep the model's order when every stage keeps order: ordered, or one worker.
let private keepsOrder (case: Case) =
    case.Stages |> List.forall (fun s -> s.Ordered || s.Workers = 1)

let private stageGen =
    gen {
        let! kind =
            Gen.frequency
                [
                    5, Gen.constant Map
                    4, Gen.constant MapTask
                    3, Gen.constant Branch
                    3, Gen.constant BranchStream
                    1, Gen.constant PassJoin
                    1, Gen.constant PassJoinStream
                    1, Gen.constant BatchFlatten
                    1, Gen.constant InProcess
                    2, Gen.constant Policy
                ]

        let! a = Gen.choose (-3, 3)
        let! b = Gen.choose (-10, 10)
        let! copies = Gen.choose (0, 2)

        let! workers =
            Gen.frequency
                [
                    60, Gen.choose (1, 4)
                    20, Gen.choose (5, 16)
                    // async workers at the maximum (threads would cost a second to start)
                    (if kind = MapTask || kind = BranchStream then 1 else 0), Gen.constant Tuning.MaxWorkers
                ]

        let! capacity =
            Gen.frequency
                [
                    12, Gen.choose (1, 64)
                    4, Gen.constant 0
                    2, Gen.constant 1
                    1, Gen.elements [ Int32.MaxValue - 1; Int32.MaxValue ]
                ]

        let! ordered = Gen.elements [ true; false ]
        let! blocks = Gen.frequency [ 9, Gen.constant false; 1, Gen.constant true ]
        let! shape = Gen.choose (0, 3)

        let joins = kind = PassJoin || kind = PassJoinStream || kind = BatchFlatten

        return
            {
                Kind = kind
                A = a
                B = b
                Copies = copies
                // process stages start processes: keep them few
                Workers = (if kind = InProcess then min workers 2 else workers)
                Capacity = capacity
                // an ordered join needs one worker
                Ordered = ordered && not (joins && workers > 1)
                Blocks = blocks && kind = Map
                Shape = shape
            }
    }

let caseGen =
    gen {
        let! stages = Gen.choose (1, 6) |> Gen.bind (fun n -> Gen.listOfLength n stageGen)
        let! size = Gen.frequency [ 3, Gen.choose (0, 200); 1, Gen.choose (0, 5000) ]
        let! input = Gen.listOfLength size (Gen.choose (-1000, 1000))

        let! fault =
            Gen.frequency
                [
                    3, Gen.constant NoFault
                    3, Gen.map2 (fun s c -> Throw(s, c)) (Gen.choose (0, stages.Length - 1)) (Gen.choose (1, 300))
                    1, Gen.choose (0, 30) |> Gen.map CancelAfter
                    1, Gen.choose (0, 300) |> Gen.map StopAfter
                    1, Gen.choose (1, 50) |> Gen.map SlowConsumer
                ]

        let! blockingSource = Gen.frequency [ 2, Gen.constant false; 1, Gen.constant true ]

        let case =
            {
                Stages = stages
                Input = input
                Fault = fault
                BlockingSource = false
            }

        // Branch stages multiply items: keep the whole run below 20,000 results.
        let rec fit (case: Case) =
            if case.Input.Length > 0 && (model case).Length > 20_000 then
                fit
                    { case with
                        Input = List.truncate (case.Input.Length / 2) case.Input
                    }
            else
                case

        let case = fit case

        // A blocking source never ends the run by itself: only a consumer that stops does.
        let stops =
            match case.Fault with
            | CancelAfter _ -> true
            | StopAfter k -> k >= 1 && k <= (model case).Length
            | _ -> false

        return
            { case with
                BlockingSource = blockingSource && stops
            }
    }

/// Builds the case's pipeline; `calls` counts each stage's calls for the injected failure.
let private build (case: Case) (calls: int[]) (triggered: int ref) (counts: FailureCounts) : Pipeline<int, int> =
    let check i =
        let n = Interlocked.Increment &calls[i]

        match case.Fault with
        | Throw(s, c) when s = i && c = n ->
            triggered.Value <- 1
            raise (Injected(s, c))
        | _ -> ()

    let stage i (s: StageSpec) : Pipeline<int, int> =
        let one x = (apply s x).Head
        let w, c, o = s.Workers, s.Capacity, s.Ordered

        match s.Kind with
        | Map ->
            Stage.map (
                (fun x ->
                    check i

                    if s.Blocks && x % 50 = 0 then
                        Thread.Sleep 1

                    one x),
                workers = w,
                capacity = c,
                ordered = o
            )
        | MapTask ->
            Stage.mapTask (
                (fun x ->
                    task {
                        check i

                        if x % 3 = 0 then
                            do! Task.Yield()

                        return one x
                    }),
                workers = w,
                capacity = c,
                ordered = o
            )
        | Branch ->
            Stage.branch (
                (fun x ->
                    check i
                    apply s x |> Seq.ofList),
                workers = w,
                capacity = c,
                ordered = o
            )
        | BranchStream ->
            Stage.branchStream (
                (fun x ->
                    check i
                    AsyncList(fun () -> Task.FromResult(apply s x)) :> IAsyncEnumerable<int>),
                workers = w,
                capacity = c,
                ordered = o
            )
        | PassJoin ->
            Stage.joinMany (
                (fun xs ->
                    check i
                    xs),
                workers = w,
                capacity = c,
                ordered = o
            )
        | PassJoinStream ->
            Stage.joinStream (
                (fun xs ->
                    check i
                    xs),
                workers = w,
                capacity = c,
                ordered = o
            )
        | BatchFlatten ->
            // A = 3: the largest batch size (its groups leave by timeout or at the end of input)
            Stage.batch (
                (if s.A = 3 then Array.MaxLength else 1 + abs s.B),
                timeout = TimeSpan.FromMilliseconds 5.0,
                workers = w,
                capacity = c,
                ordered = o
            )
            >=> Stage.branch (
                (fun (xs: int[]) ->
                    check i
                    xs :> seq<int>),
                ordered = true
            )
        | Policy ->
            // No injected failure here: the policy would handle it. The stage's own failures
            // are the items `drops` names (every call fails) and, under Retry, every item's first
            // (|x| mod 3) calls (counted per value: a repeated value fails only its first time).
            let seen = Collections.Concurrent.ConcurrentDictionary<int, int>()

            let f x =
                let n = seen.AddOrUpdate(x, 1, (fun _ k -> k + 1))

                if drops s x || (s.Shape = 1 && n <= abs x % 3) then
                    failwith $"planned failure of {x}"

                one x

            let tiny = TimeSpan.FromTicks 10L

            match s.Shape with
            | 0 when s.Copies = 0 ->
                Stage.map (f, workers = w, capacity = c, ordered = o, onError = OnError.Skip, counts = counts)
            | 0 ->
                Stage.mapTask (
                    (fun x -> task { return f x }),
                    workers = w,
                    capacity = c,
                    ordered = o,
                    onError = OnError.Skip,
                    counts = counts
                )
            | 1 ->
                Stage.map (
                    f,
                    workers = w,
                    capacity = c,
                    ordered = o,
                    onError = OnError.Retry(2, tiny, (fun _ -> true), OnError.Skip),
                    counts = counts
                )
            | 2 ->
                Stage.mapTask (
                    (fun x -> task { return f x }),
                    workers = w,
                    capacity = c,
                    ordered = o,
                    onError =
                        OnError.DeadLetter(fun x _ _ ->
                            if not (drops s x) then
                                failwith $"{x} dead-lettered"),
                    counts = counts
                )
            | _ ->
                Stage.mapTask (
                    (fun x (token: CancellationToken) ->
                        task {
                            if drops s x then
                                do! Task.Delay(Timeout.Infinite, token)

                            return one x
                        }),
                    workers = w,
                    capacity = c,
                    ordered = o,
                    timeout = TimeSpan.FromMilliseconds 10.0,
                    onError = OnError.Skip,
                    counts = counts
                )
        | InProcess ->
            // The injected failure travels with its item and is thrown in the worker.
            let fault () =
                let n = Interlocked.Increment &calls[i]

                match case.Fault with
                | Throw(fs, fc) when fs = i && fc = n ->
                    triggered.Value <- 1
                    fs, fc
                | _ -> -1, -1

            let text x =
                if s.Copies = 2 && abs x = 7 then
                    $"{x};" + String('h', 3_000_000)
                else
                    $"{x};"

            match s.Shape with
            | 1 ->
                Stage.map (fun x ->
                    let fs, fc = fault ()
                    struct (x, text x, fs, fc))
                >=> Stage.map (CampaignRemote.tupled, workers = w, capacity = c, ordered = o, multiprocess = true)
            | 2 ->
                Stage.map (fun x ->
                    let fs, fc = fault ()
                    CampaignItem(X = x, Text = text x, FailStage = fs, FailCall = fc))
                >=> Stage.map (CampaignRemote.fielded, workers = w, capacity = c, ordered = o, multiprocess = true)
            | 3 -> CampaignRemote.generic<Guid> w c o
            | _ -> Stage.map (ProcessTests.Remote.triple, workers = w, capacity = c, ordered = o, multiprocess = true)

    case.Stages |> List.mapi stage |> List.fold (>=>) Pipeline.id

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

/// Runs one case: the run must end within `limit`, match the model, and leave nothing behind.
let run (limit: TimeSpan) (case: Case) : Outcome =
    let calls = Array.zeroCreate case.Stages.Length
    let triggered = ref 0
    let counts = FailureCounts()
    let pipeline = build case calls triggered counts
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

/// Runs `cases` cases from `seed`, tallying; stops at the first bad outcome when `failFast`.
let campaign (seed: uint64) (cases: int) (limit: TimeSpan) (failFast: bool) (log: string -> unit) =
    let tally = Tally()
    let samples = Gen.sampleWithSeed (Rnd seed) 50 cases caseGen
    let mutable stop = false

    for case in samples do
        if not stop then
            tally.Cases <- tally.Cases + 1

            if case.Fault <> NoFault then
                tally.Faults <- tally.Faults + 1

            match run limit case with
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
    let tally = campaign 1UL cases (TimeSpan.FromSeconds 60.0) false (printfn "%s")

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
