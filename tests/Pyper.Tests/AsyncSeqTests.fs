/// AsyncSeq: async streams in a line for branchStream, joinStream, joinTask and intoTask.
module Pyper.Tests.AsyncSeqTests

open System
open System.Collections.Generic
open System.Threading
open System.Threading.Tasks
open Expecto
open Pyper
open Pyper.FSharp
open Pyper.Tests.Helpers

let tests =
    testList
        "AsyncSeq"
        [
            leakTest "branchStream over ofTaskSeq and ofSeq" (fun () ->
                let slow =
                    Stage.branchStream (fun (n: int) ->
                        seq {
                            for i in 1..n ->
                                task {
                                    do! Task.Yield()
                                    return i
                                }
                        }
                        |> AsyncSeq.ofTaskSeq)

                Expect.equal (collect (Pipeline.toSeq 5 slow)) [ 1..5 ] "the tasks' results, in order"
                let plain = Stage.branchStream (fun (n: int) -> AsyncSeq.ofSeq [ n; n + 1 ])
                Expect.equal (collect (Pipeline.toSeq 7 plain)) [ 7; 8 ] "the sequence's items")

            leakTest "ofTaskSeq makes each task only when the stream needs it" (fun () ->
                let mutable made = 0

                let stream =
                    seq {
                        for i in 1..10 ->
                            Interlocked.Increment &made |> ignore
                            Task.FromResult i
                    }
                    |> AsyncSeq.ofTaskSeq

                let e = stream.GetAsyncEnumerator()
                Expect.equal made 0 "nothing before the first MoveNextAsync"
                Expect.isTrue (e.MoveNextAsync().AsTask().Result) "a first item"
                Expect.equal e.Current 1 "the first task's result"
                Expect.equal made 1 "one task made"
                e.DisposeAsync().AsTask().Wait())

            leakTest "a failed task fails the run with its original exception" (fun () ->
                let p =
                    Stage.branchStream (
                        (fun (n: int) ->
                            seq {
                                for i in 1..n ->
                                    task {
                                        do! Task.Yield()
                                        return if i = 3 then invalidOp "three" else i
                                    }
                            }
                            |> AsyncSeq.ofTaskSeq),
                        name = "gen"
                    )

                let e = catchExn (fun () -> collect (Pipeline.toSeq 5 p) |> ignore)
                Expect.isTrue (e :? InvalidOperationException) $"InvalidOperationException, got {e}"
                Expect.equal (PipelineError.stage e) (Some "gen") "stage")

            leakTest "joinStream with map, joinTask and intoTask with toListAsync and toArrayAsync" (fun () ->
                let gen = Stage.branch (fun (n: int) -> seq { 1..n })
                let strings = gen >=> Stage.joinStream (AsyncSeq.map string)
                Expect.equal (collect (Pipeline.toSeq 3 strings)) [ "1"; "2"; "3" ] "mapped"

                let total =
                    gen
                    >=> Stage.joinTask (fun xs ->
                        task {
                            let! all = AsyncSeq.toArrayAsync xs
                            return Array.sum all
                        })

                Expect.equal (collect (Pipeline.toSeq 100 total)) [ 5050 ] "summed"
                let run = gen |> Pipeline.intoTask AsyncSeq.toListAsync
                Expect.equal (withinGuard "the consumer" (fun () -> run 4)) [ 1..4 ] "a list")

            testCase "null arguments are refused at once" (fun () ->
                let refused name (f: unit -> obj) =
                    let e = catchExn (fun () -> f () |> ignore)
                    Expect.isTrue (e :? ArgumentNullException) $"{name}: ArgumentNullException, got {e}"

                refused "ofSeq" (fun () -> AsyncSeq.ofSeq (null: seq<int>))
                refused "ofTaskSeq" (fun () -> AsyncSeq.ofTaskSeq (null: seq<Task<int>>))
                refused "map" (fun () -> AsyncSeq.map string (null: IAsyncEnumerable<int>))
                refused "toArrayAsync" (fun () -> AsyncSeq.toArrayAsync (null: IAsyncEnumerable<int>))
                refused "toListAsync" (fun () -> AsyncSeq.toListAsync (null: IAsyncEnumerable<int>)))
        ]
