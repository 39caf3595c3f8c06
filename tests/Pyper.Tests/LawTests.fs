/// Laws of `>=>`, checked by FsCheck on random stages, worker counts and queue sizes.
module Pyper.Tests.LawTests

open System.Threading.Tasks
open Expecto
open FsCheck
open FsCheck.FSharp
open Pyper
open Pyper.FSharp
open Pyper.Tests.Helpers

/// A stage's function, as data, so the sequential model can run it too.
type Fn =
    | Add of int
    | Mul of int
    | Copies of int

type Exec =
    | OnThread
    | OnTask

/// A random stage: a function, an executor and options.
type Spec =
    {
        Fn: Fn
        Exec: Exec
        Workers: int
        Capacity: int
        Ordered: bool
    }

/// A stage whose function gives exactly one result (a map).
type MapSpec = MapSpec of Spec

let private apply fn (x: int) =
    match fn with
    | Add k -> [ x + k ]
    | Mul k -> [ x * k ]
    | Copies n -> List.replicate n x

let private fnGen =
    Gen.oneof
        [
            Gen.choose (-5, 5) |> Gen.map Add
            Gen.choose (-3, 3) |> Gen.map Mul
            Gen.choose (0, 3) |> Gen.map Copies
        ]

let private specGen fns =
    gen {
        let! fn = fns
        let! exec = Gen.elements [ OnThread; OnTask ]
        let! workers = Gen.choose (1, 4)
        let! capacity = Gen.elements [ 0; 1; 2; 5; 64 ]
        let! ordered = Gen.elements [ true; false ]

        return
            {
                Fn = fn
                Exec = exec
                Workers = workers
                Capacity = capacity
                Ordered = ordered
            }
    }

type Generators =
    static member Spec() = Arb.fromGen (specGen fnGen)

    static member MapSpec() =
        Arb.fromGen (
            specGen (Gen.oneof [ Gen.choose (-5, 5) |> Gen.map Add; Gen.choose (-3, 3) |> Gen.map Mul ])
            |> Gen.map MapSpec
        )

    static member Inputs() =
        Arb.fromGen (
            Gen.choose (0, 40)
            |> Gen.bind (fun n -> Gen.listOfLength n (Gen.choose (-100, 100)))
        )

let private build (s: Spec) : Pipeline<int, int> =
    let one x = (apply s.Fn x).Head

    match s.Fn, s.Exec with
    | (Add _ | Mul _), OnThread -> Stage.map (one, workers = s.Workers, capacity = s.Capacity, ordered = s.Ordered)
    | (Add _ | Mul _), OnTask ->
        Stage.mapTask (
            (fun x ->
                task {
                    do! Task.Yield()
                    return one x
                }),
            workers = s.Workers,
            capacity = s.Capacity,
            ordered = s.Ordered
        )
    | Copies _, OnThread ->
        Stage.branch (apply s.Fn >> Seq.ofList, workers = s.Workers, capacity = s.Capacity, ordered = s.Ordered)
    | Copies _, OnTask ->
        Stage.branchStream (
            (fun x -> AsyncList(fun () -> Task.FromResult(apply s.Fn x))),
            workers = s.Workers,
            capacity = s.Capacity,
            ordered = s.Ordered
        )

let private model (specs: Spec list) (xs: int list) =
    specs |> List.fold (fun xs s -> xs |> List.collect (apply s.Fn)) xs

let private runAll (p: Pipeline<int, int>) (xs: int list) =
    let results = collect (Pipeline.toSeqFrom xs p)
    assertNoLeaks ()
    results

/// The pipeline's results on `xs` are the sequential model's: as lists when every stage keeps
/// order (ordered, or one worker), else as multisets. Comparing with the model, not with another
/// pipeline, matters: `(p >=> q) >=> r` and `p >=> (q >=> r)` are built from the same stages, so
/// a composition that lost or repeated a stage would give the same wrong results on both sides.
let private behaves (specs: Spec list) (p: Pipeline<int, int>) (xs: int list) =
    let results = runAll p xs
    let expected = model specs xs

    if specs |> List.forall (fun s -> s.Ordered || s.Workers = 1) then
        results = expected
    else
        sorted results = sorted expected

let private same (p: Pipeline<int, int>) (q: Pipeline<int, int>) (xs: int list) =
    sorted (runAll p xs) = sorted (runAll q xs)

let private config =
    { FsCheckConfig.defaultConfig with
        maxTest = 40
        arbitrary = [ typeof<Generators> ]
    }

let private law name body = testPropertyWithConfig config name body

let tests =
    testList
        "laws"
        [
            law "results equal the sequential composition, as multisets" (fun (specs: Spec list) (xs: int list) ->
                let specs = List.truncate 4 specs
                let p = specs |> List.map build |> List.fold (>=>) Pipeline.id
                sorted (runAll p xs) = sorted (model specs xs))

            law
                "with every stage ordered, results equal the sequential composition as lists"
                (fun (specs: Spec list) (xs: int list) ->
                    let specs =
                        specs |> List.truncate 4 |> List.map (fun s -> { s with Ordered = true })

                    let p = specs |> List.map build |> List.fold (>=>) Pipeline.id
                    runAll p xs = model specs xs)

            law
                "associativity: (p >=> q) >=> r and p >=> (q >=> r) both behave as r ∘ q ∘ p"
                (fun (p: Spec) (q: Spec) (r: Spec) (xs: int list) ->
                    let left = (build p >=> build q) >=> build r
                    let right = build p >=> (build q >=> build r)

                    behaves [ p; q; r ] left xs
                    && behaves [ p; q; r ] right xs
                    && List.map string left.Stages = List.map string right.Stages)

            law "identity: id >=> p and p >=> id both behave as p" (fun (p: Spec) (xs: int list) ->
                behaves [ p ] (Pipeline.id >=> build p) xs
                && behaves [ p ] (build p >=> Pipeline.id) xs
                && behaves [] Pipeline.id xs)

            law "map f >=> map g = map (f >> g)" (fun (MapSpec f) (MapSpec g) (xs: int list) ->
                let composed = build f >=> build g
                let one s x = (apply s.Fn x).Head

                let direct =
                    Stage.map (one f >> one g, workers = f.Workers, capacity = f.Capacity, ordered = f.Ordered)

                behaves [ f; g ] composed xs && same composed direct xs)

            law "branch of a singleton = map" (fun (MapSpec f) (xs: int list) ->
                let one x = (apply f.Fn x).Head

                same
                    (Stage.branch (one >> Seq.singleton, workers = f.Workers))
                    (Stage.map (one, workers = f.Workers))
                    xs)
        ]
