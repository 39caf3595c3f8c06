/// Stage.branch and Stage.branchStream.
module Pyper.Tests.BranchTests

open System
open System.Threading
open System.Threading.Tasks
open Expecto
open Pyper
open Pyper.FSharp
open Pyper.Tests.Helpers

let tests =
    testList
        "branch"
        [
            leakTest "as the first stage, it generates the data from the run's input" (fun () ->
                let p = Stage.branch (fun (n: int) -> seq { 0 .. n - 1 })
                Expect.equal (collect (Pipeline.toSeq 20 p)) [ 0..19 ] "0..19")

            leakTest "results flow out before the generator finishes (no waiting to fill a batch)" (fun () ->
                use firstSeen = new ManualResetEventSlim()

                let p =
                    Stage.branch (fun (_: int) ->
                        seq {
                            yield 1
                            // Blocks until the consumer has the first item: a batch-filling runtime would hang here.
                            if not (firstSeen.Wait hangGuard) then
                                failwith "the first result never reached the consumer"

                            yield 2
                        })

                let results =
                    Pipeline.toSeq 0 p
                    |> Seq.map (fun x ->
                        firstSeen.Set()
                        x)

                Expect.equal (collect results) [ 1; 2 ] "both")

            leakTest "ordered branch with many workers keeps items' outputs together and in order" (fun () ->
                let p =
                    Stage.branch ((fun (x: int) -> List.replicate (x % 5) x), workers = 4, ordered = true)

                Expect.equal
                    (collect (Pipeline.toSeqFrom [ 1..500 ] p))
                    [
                        for x in 1..500 do
                            yield! List.replicate (x % 5) x
                    ]
                    "in order")

            leakTest "a large branch output is handed on in pieces, bounded by the queue" (fun () ->
                let p =
                    Stage.branch ((fun (n: int) -> seq { 1..n }), capacity = 16)
                    >=> Stage.map ((*) 2)

                Expect.equal (collect (Pipeline.toSeq 100_000 p) |> List.length) 100_000 "all of them")
        ]
