/// The dedicated threads of blocking workers: parked between runs, retired after the keep-alive.
module Pyper.Tests.DedicatedThreadTests

open System
open System.Threading
open Expecto
open Pyper
open Pyper.FSharp
open Pyper.Tests.Helpers

/// Runs 60 items through a 3-worker blocking stage.
let private aRun () =
    let p = Stage.map ((fun (x: int) -> x + 1), workers = 3, name = "reuse")
    Expect.equal (List.sum (collect (Pipeline.toSeqFrom [ 1..60 ] p))) (List.sum [ 2..61 ]) "results"

let tests =
    testList
        "dedicated threads"
        [
            leakTest "a finished run leaves its threads parked, named idle, and later runs take them" (fun () ->
                withKeepAlive 60_000 (fun () ->
                    DedicatedThreads.retireIdle ()
                    aRun ()
                    let parked = DedicatedThreads.idleCount ()
                    Expect.isGreaterThan parked 0 "the run's threads park when it is done"
                    Expect.all (pyperOsThreads ()) ((=) DedicatedThreads.IdleName) "parked threads are named idle"
                    let first = pyperOsThreadsById () |> Array.map fst |> Set.ofArray
                    Expect.equal first.Count parked "one OS thread per parked thread"

                    for _ in 1..5 do
                        aRun ()

                    // A run needs at most 4 threads at once (3 workers and the source's): later runs
                    // take the parked ones and start at most the one that may have been missing.
                    let later = pyperOsThreadsById () |> Array.map fst |> Set.ofArray
                    Expect.isTrue (Set.isSubset first later) "the first run's threads are still there"
                    Expect.isLessThanOrEqual (later.Count - first.Count) (4 - parked) "no thread is added beyond need"
                    Expect.equal (DedicatedThreads.idleCount ()) later.Count "all of them parked"))

            leakTest "parked threads exit once the keep-alive runs out" (fun () ->
                withKeepAlive 50 (fun () ->
                    DedicatedThreads.retireIdle ()
                    aRun ()
                    waitUntil "parked threads retire" (fun () -> DedicatedThreads.idleCount () = 0)
                    waitUntil "their OS threads exit" (fun () -> Array.isEmpty (pyperOsThreads ()))))

            leakTest "keep-alive 0: each thread exits as soon as its worker is done" (fun () ->
                withKeepAlive 0 (fun () ->
                    DedicatedThreads.retireIdle ()
                    aRun ()
                    waitUntil "threads exit" (fun () -> Array.isEmpty (pyperOsThreads ()))
                    Expect.equal (DedicatedThreads.idleCount ()) 0 "none parked"))

            leakTest "a thread taken from the cache is renamed after its new stage" (fun () ->
                withKeepAlive 60_000 (fun () ->
                    aRun ()

                    let names =
                        Stage.map ((fun (_: int) -> Thread.CurrentThread.Name), workers = 2, name = "renamed")
                        |> Pipeline.toSeqFrom [ 1..20 ]
                        |> collect
                        |> Set.ofList

                    Expect.isTrue
                        (names |> Set.forall (fun n -> n.StartsWith "Pyper/renamed/"))
                        $"named after the stage: %A{names}"))

            leakTest "a reused thread runs its worker in its own run's execution context" (fun () ->
                withKeepAlive 60_000 (fun () ->
                    let ambient = AsyncLocal<string>()

                    // The function reads the ambient value, then changes it, as user code may.
                    let p =
                        Stage.map (
                            (fun (_: int) ->
                                let seen = ambient.Value
                                ambient.Value <- "changed by the function"
                                seen),
                            workers = 2
                        )

                    let runWith value =
                        ambient.Value <- value
                        collect (Pipeline.toSeqFrom [ 1..20 ] p)

                    let first = runWith "first run"
                    Expect.contains first "first run" "the first run sees its caller's value"
                    let second = runWith "second run"
                    Expect.contains second "second run" "the second run sees its own caller's value"
                    Expect.isFalse (List.contains "first run" second) "nothing of the first run's context"))
        ]
