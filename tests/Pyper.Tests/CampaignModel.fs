/// The fault campaign's model: what a random case is (stages, faults, inputs), its generators,
/// and the sequential model of what each case must produce.
module Pyper.Tests.CampaignModel

open System
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
    /// A distributed stage (NATS JetStream): only in the distributed campaign (DistributedCampaign.fs).
    | Distributed
    /// A map stage with per-worker state (issue #17); `Shape` picks its executor: 0 threads
    /// (`mapWithState`), 1 async (`mapTaskWithState`), 2 worker processes (`mapWithState`,
    /// `multiprocess`); `recycleOf` its `recycleAfter`.
    | State

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
        /// fields, 3 ints through a generic function). For a policy stage: which policy. For a
        /// state stage: its executor.
        Shape: int
    }

type Fault =
    | NoFault
    /// The `call`-th call of stage `stage`'s function throws.
    | Throw of stage: int * call: int
    | CancelAfter of milliseconds: int
    | StopAfter of items: int
    | SlowConsumer of every: int
    /// After `afterResults` results the consumer kills a distributed worker process (the run goes on).
    | KillWorker of afterResults: int

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

/// A state stage's state in a worker process: its name (the files it leaves are named after it)
/// and whether it was disposed.
[<AllowNullLiteral>]
type CampaignState(name: string) =
    member _.Name = name
    member val Disposed = false with get, set

/// The folder where the states of this test process's worker processes leave their files:
/// `i-NAME` when made, `d-NAME.ID` (one file per dispose) when disposed. `parent` is the test
/// process's id.
let stateFolder (parent: int) =
    IO.Path.Combine(IO.Path.GetTempPath(), $"campaign-states-{parent}")

/// A state stage's functions in worker processes (the state lives there: its files tell the
/// campaign what was made and disposed).
module StateRemote =
    /// This worker process's parent (the test process), from its command line.
    let private folder () =
        let args = Environment.GetCommandLineArgs()
        let i = Array.IndexOf(args, "--parent")
        stateFolder (int args[i + 1])

    let init () =
        let s = CampaignState(Guid.NewGuid().ToString "N")
        IO.File.WriteAllText(IO.Path.Combine(folder (), $"i-{s.Name}"), "")
        s

    /// The item carries the injected failure (stage, call; -1: none).
    let call (s: CampaignState) (struct (x: int, stage: int, call: int)) =
        if s.Disposed then
            failwith $"state {s.Name} used after its dispose"
        elif stage >= 0 then
            raise (Injected(stage, call))
        else
            x * 3

    /// One file per dispose, `d-NAME.ID`, written aside and moved in (never seen half written).
    let dispose (s: CampaignState) =
        s.Disposed <- true
        writeWhole (folder ()) $"d-{s.Name}.{Guid.NewGuid():N}" "d"

/// What the state stages of a case did in this process (threads and async workers): the states
/// made per stage, the disposes per state, and any misuse seen.
type StateBooks(stages: int) =
    let disposes = Collections.Concurrent.ConcurrentDictionary<int64, int>()
    let inits = Array.zeroCreate<int> stages
    let wrong = Collections.Concurrent.ConcurrentQueue<string>()
    let mutable next = 0L

    /// A new state of stage `stage`: its id.
    member _.Init(stage: int) =
        Threading.Interlocked.Increment &inits[stage] |> ignore
        let id = Threading.Interlocked.Increment &next
        disposes[id] <- 0
        id

    /// Stage `stage` calls its function with state `id`.
    member _.Use(stage: int, id: int64) =
        if disposes[id] <> 0 then
            wrong.Enqueue $"stage {stage} used state {id} after its dispose"

    member _.Dispose(id: int64) =
        disposes.AddOrUpdate(
            id,
            (fun _ ->
                (wrong.Enqueue $"state {id} disposed, never made"
                 1)),
            (fun _ n -> n + 1)
        )
        |> ignore

    /// States made by stage `stage`.
    member _.Inits(stage: int) = inits[stage]

    /// What went wrong: misuse, and states not disposed exactly once.
    member _.Problems() =
        [
            yield! wrong

            for KeyValue(id, n) in disposes do
                if n <> 1 then
                    $"state {id} disposed {n} times"
        ]

/// What one case did.
type Outcome =
    | Passed
    | Hung
    | Leaked of string
    | Wrong of string

/// Whether a policy stage drops `x` (skips or dead-letters it): its call fails every time.
let drops (s: StageSpec) (x: int) =
    match s.Shape with
    | 0 -> abs x % 7 = 3
    | 1 -> abs x % 11 = 5
    | 2 -> abs x % 5 = 1
    | _ -> abs x % 97 = 2

let apply (s: StageSpec) (x: int) =
    match s.Kind with
    | Policy -> if drops s x then [] else [ x * s.A + s.B ]
    | Map
    | MapTask -> [ x * s.A + s.B ]
    | Branch
    | BranchStream -> List.replicate s.Copies x
    | PassJoin
    | PassJoinStream
    | BatchFlatten -> [ x ]
    | State when s.Shape = 2 -> [ x * 3 ]
    | State -> [ x * s.A + s.B ]
    | InProcess
    | Distributed -> [ x * 3 ]

/// A state stage's `recycleAfter`: none for a third of them, else 1 to 5 calls.
let recycleOf (s: StageSpec) =
    if s.Copies = 0 then None else Some(1 + abs s.B % 5)

/// The most states a state stage may make: one per worker, and one more per `recycleAfter`
/// calls (`calls` counts its function's calls, or, for a process stage, the items sent).
let mostInits (s: StageSpec) (calls: int) =
    match recycleOf s with
    | None -> s.Workers
    | Some r -> s.Workers + calls / r

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
let keepsOrder (case: Case) =
    case.Stages |> List.forall (fun s -> s.Ordered || s.Workers = 1)

/// A random stage; `stateWeight` weighs state stages among the other kinds (about 24).
let stageGenWith (stateWeight: int) =
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
                    stateWeight, Gen.constant State
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
        // State stages: threads and async workers, and now and then worker processes (slow).
        let! executor =
            Gen.frequency [ 5, Gen.constant 0; 5, Gen.constant 1; 1, Gen.constant 2 ]

        let processes = kind = InProcess || kind = State && executor = 2

        let joins = kind = PassJoin || kind = PassJoinStream || kind = BatchFlatten

        return
            {
                Kind = kind
                A = a
                B = b
                Copies = copies
                // process stages start processes: keep them few
                Workers = (if processes then min workers 2 else workers)
                Capacity = capacity
                // an ordered join needs one worker
                Ordered = ordered && not (joins && workers > 1)
                Blocks = blocks && kind = Map
                Shape = (if kind = State then executor else shape)
            }
    }

/// A random stage, state stages at the test suite's weight.
let stageGen = stageGenWith 1

/// A random case; `stateWeight` as for `stageGenWith`.
let caseGenWith (stateWeight: int) =
    gen {
        let! stages =
            Gen.choose (1, 6)
            |> Gen.bind (fun n -> Gen.listOfLength n (stageGenWith stateWeight))

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

/// A random case, state stages at the test suite's weight.
let caseGen = caseGenWith 1
