/// Bad options fail when the stage is built, naming the stage and the option.
module Pyper.Tests.ValidationTests

open System
open System.Threading.Tasks
open Expecto
open Pyper
open Pyper.FSharp

let private throwsArg (paramName: string) (fragment: string) (build: unit -> obj) =
    let e = Expect.throwsC (build >> ignore) id

    match e with
    | :? ArgumentException as a ->
        Expect.equal a.ParamName paramName "names the option"
        Expect.stringContains a.Message fragment "says which stage and what is allowed"
    | e -> failtestf "expected an ArgumentException, got %O" e

let tests =
    testList
        "validation"
        [
            testCase "workers below 1" (fun () ->
                throwsArg "workers" "Stage 'step1' (map): workers must be at least 1" (fun () ->
                    box (Stage.map (id, workers = 0, name = "step1"))))

            testCase "workers below 1, unnamed async stage" (fun () ->
                throwsArg "workers" "A map stage: workers must be at least 1" (fun () ->
                    box (Stage.mapTask ((fun (x: int) -> Task.FromResult x), workers = -3))))

            testCase "negative capacity" (fun () ->
                throwsArg "capacity" "capacity must be 0 (unbounded) or a positive number" (fun () ->
                    box (Stage.branch ((fun (x: int) -> [ x ]), capacity = -1))))

            testCase "null function" (fun () ->
                let e =
                    Expect.throwsC
                        (fun () -> Stage.map (Unchecked.defaultof<int -> int>, name = "nothing") |> ignore)
                        id

                Expect.isTrue (e :? ArgumentNullException) "ArgumentNullException"
                Expect.stringContains e.Message "Stage 'nothing' (map): the function is null" "names the stage")

            testCase "ordered join with many workers" (fun () ->
                throwsArg "ordered" "ordered needs workers = 1" (fun () ->
                    box (Stage.join (Seq.sum<int>, workers = 2, ordered = true))))

            testCase "blank name" (fun () ->
                throwsArg "name" "name must not be empty" (fun () -> box (Stage.map (id<int>, name = " "))))

            testCase "batch size below 1" (fun () ->
                throwsArg "size" "A batch stage: size must be at least 1" (fun () -> box (Stage.batch<int> 0)))

            testCase "batch timeout not positive" (fun () ->
                throwsArg "timeout" "timeout must be positive" (fun () ->
                    box (Stage.batch<int>(3, timeout = TimeSpan.Zero))))

            testCase "null pipelines and consumers" (fun () ->
                let nothing = Unchecked.defaultof<Pipeline<int, int>>
                Expect.throwsT<ArgumentNullException> (fun () -> Pipeline.stream 1 nothing |> ignore) "stream"

                Expect.throwsT<ArgumentNullException>
                    (fun () -> Pipeline.toSeqFrom [ 1 ] nothing |> ignore)
                    "toSeqFrom"

                Expect.throwsT<ArgumentNullException>
                    (fun () -> Pipeline.compose nothing Pipeline.id |> ignore)
                    "compose"

                Expect.throwsT<ArgumentNullException> (fun () -> (Pipeline.id >=> nothing) |> ignore) ">=>"

                Expect.throwsT<ArgumentNullException>
                    (fun () -> Pipeline.into (Unchecked.defaultof<seq<int> -> int>) Pipeline.id |> ignore)
                    "into")

            testCase "ordered batch with many workers" (fun () ->
                throwsArg "ordered" "ordered needs workers = 1" (fun () ->
                    box (Stage.batch<int>(10, workers = 3, ordered = true))))

            testCase "null source" (fun () ->
                Expect.throwsT<ArgumentNullException>
                    (fun () -> Pipeline.streamFromSeq (null: seq<int>) Pipeline.id |> ignore)
                    "a null source is refused")
        ]
