/// The executor contract: the same cases, run against every executor (see Kits).
module Pyper.Tests.Contract.Suite

open System
open Expecto
open Pyper
open Pyper.Tests.Helpers
open Pyper.Tests.Contract.Kits

/// The contract for one executor. A process kit's cases keep their worker processes parked
/// (with a long keep-alive) for the next case, checking that every worker process left is
/// parked; its last case retires them and checks that none is left.
let contract (kit: ExecutorKit) =
    let test name body =
        if kit.Processes then
            leakTestWith assertNoLeaksKeepingProcesses name (fun () -> withKeepAlive 60_000 body)
        else
            leakTest name body

    testList
        kit.Name
        [
            yield! Cases.shapes kit |> List.map (Cases.cases kit test)

            match kit.Branch with
            | Some b -> StageCases.branch test b
            | None -> ()

            match kit.Join, kit.JoinMany with
            | Some j, Some m -> StageCases.join kit test j m
            | _ -> ()

            match kit.Batch with
            | Some b -> StageCases.batch kit test b
            | None -> ()

            if kit.Processes then
                leakTest "parked worker processes retire, and none is left" (fun () ->
                    Expect.equal (Live.processCount ()) 0 "no worker process serves a stage")
        ]

let tests = testList "executor contract" (Kits.all |> List.map contract)
