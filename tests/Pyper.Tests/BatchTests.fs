/// Stage.batch: groups by count and, optionally, by time.
module Pyper.Tests.BatchTests

open System
open System.Threading
open Expecto
open Pyper
open Pyper.FSharp
open Pyper.Tests.Helpers

let tests =
    testList
        "batch"
        [
            leakTest "groups by count; the end of input flushes the partial group" (fun () ->
                let results = collect (Pipeline.toSeqFrom [ 0..9 ] (Stage.batch 3))
                Expect.equal results [ [| 0; 1; 2 |]; [| 3; 4; 5 |]; [| 6; 7; 8 |]; [| 9 |] ] "groups of three")

            leakTest "groups larger than a queue still fill" (fun () ->
                let p = Stage.map (id, capacity = 4) >=> Stage.batch 1000
                let results = collect (Pipeline.toSeqFrom [ 1..2500 ] p)
                Expect.equal (results |> List.map Array.length) [ 1000; 1000; 500 ] "sizes")

            leakTest "a partial group leaves when its timeout passes" (fun () ->
                use seen = new ManualResetEventSlim()

                let source =
                    seq {
                        yield! [ 1; 2; 3 ]
                        // Blocks until the consumer has the partial group: only the timeout can send it.
                        if not (seen.Wait hangGuard) then
                            failwith "the partial group never arrived"

                        yield 4
                    }

                let results =
                    Pipeline.toSeqFrom source (Stage.batch (10, timeout = TimeSpan.FromMilliseconds 20.0))
                    |> Seq.map (fun g ->
                        seen.Set()
                        g)

                Expect.equal (collect results) [ [| 1; 2; 3 |]; [| 4 |] ] "the partial group, then the rest")
        ]
