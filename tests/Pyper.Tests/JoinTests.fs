/// Stage.join, joinMany, joinTask and joinStream.
module Pyper.Tests.JoinTests

open System
open System.Collections.Generic
open System.Threading.Tasks
open Expecto
open Pyper
open Pyper.FSharp
open Pyper.Tests.Helpers

let tests =
    testList
        "join"
        [
            leakTest "join receives the whole stream and gives one result" (fun () ->
                Expect.equal (collect (Pipeline.toSeqFrom [ 0..99 ] (Stage.join Seq.sum))) [ 4950 ] "the sum")

            leakTest "join with two workers splits the input into two partial streams" (fun () ->
                let results =
                    collect (Pipeline.toSeqFrom [ 0..99 ] (Stage.join (Seq.sum, workers = 2)))

                Expect.equal results.Length 2 "two results"
                Expect.equal (List.sum results) 4950 "together, the whole input")

            leakTest "joinMany gives many results" (fun () ->
                let p = Stage.joinMany (fun (xs: seq<int>) -> Seq.scan (+) 0 xs |> Seq.skip 1)
                Expect.equal (collect (Pipeline.toSeqFrom [ 1..5 ] p)) [ 1; 3; 6; 10; 15 ] "running totals")

            leakTest "joinTask awaits the whole async stream" (fun () ->
                let sum (xs: IAsyncEnumerable<int>) =
                    task {
                        let mutable total = 0
                        let e = xs.GetAsyncEnumerator()
                        let mutable go = true

                        while go do
                            let! more = e.MoveNextAsync()
                            go <- more

                            if more then
                                total <- total + e.Current

                        return total
                    }

                Expect.equal
                    (collect (Pipeline.toSeqFrom [ 0..99 ] (Stage.map id >=> Stage.joinTask sum)))
                    [ 4950 ]
                    "the sum")

            leakTest "joinStream maps a stream to a stream" (fun () ->
                let p =
                    Stage.joinStream (fun (xs: IAsyncEnumerable<int>) ->
                        System.Linq.AsyncEnumerable.Where(xs, Func<int, bool>(fun x -> x % 3 = 0)))

                Expect.equal (collect (Pipeline.toSeqFrom [ 1..10 ] p)) [ 3; 6; 9 ] "multiples of three")

            leakTest "a join that stops reading stops the stages before it" (fun () ->
                let source = CountingSource()
                let p = Stage.map id >=> Stage.join Seq.head
                Expect.equal (collect (Pipeline.toSeqFrom source.Items p)) [ 1 ] "the first item")

            leakTest "a join's stream can be read only once" (fun () ->
                let p = Stage.join (fun (xs: seq<int>) -> Seq.length xs + Seq.length xs)
                let e = catchExn (fun () -> collect (Pipeline.toSeqFrom [ 1..3 ] p) |> ignore)
                Expect.isTrue (e :? InvalidOperationException) "a second enumeration is refused")
        ]
