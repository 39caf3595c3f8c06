/// The fault campaign's pipelines: a case's stages built on every executor, with its faults
/// injected.
module Pyper.Tests.CampaignBuild

open System
open System.Collections.Generic
open System.Threading
open System.Threading.Tasks
open Pyper
open Pyper.FSharp
open Pyper.Tests.Helpers
open Pyper.Tests.CampaignModel

/// Builds the case's pipeline; `calls` counts each stage's calls for the injected failure;
/// `books` keeps the in-process state stages' states.
let build
    (server: Pyper.Distributed.NatsServer option)
    (case: Case)
    (calls: int[])
    (triggered: int ref)
    (counts: FailureCounts)
    (books: StateBooks)
    : Pipeline<int, int> =
    let check i =
        let n = Interlocked.Increment &calls[i]

        match case.Fault with
        | Throw(s, c) when s = i && c = n ->
            triggered.Value <- 1
            raise (Injected(s, c))
        | _ -> ()

    let stage i (s: StageSpec) : Pipeline<int, int> =
        let one x = (apply s x).Head

        // A remote stage's injected failure is decided here and thrown in the worker.
        let fault () =
            let n = Interlocked.Increment &calls[i]

            match case.Fault with
            | Throw(fs, fc) when fs = i && fc = n ->
                triggered.Value <- 1
                fs, fc
            | _ -> -1, -1

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
        | State ->
            let init () = books.Init i
            let dispose (id: int64) = books.Dispose id

            let f (id: int64) x =
                books.Use(i, id)
                check i
                one x

            match s.Shape with
            | 0 ->
                Stage.mapWithState (
                    init,
                    f,
                    dispose = dispose,
                    workers = w,
                    capacity = c,
                    ordered = o,
                    ?recycleAfter = recycleOf s
                )
            | 1 ->
                Stage.mapTaskWithState (
                    init,
                    (fun id x _ ->
                        task {
                            if x % 3 = 0 then
                                do! Task.Yield()

                            return f id x
                        }),
                    dispose = dispose,
                    workers = w,
                    capacity = c,
                    ordered = o,
                    ?recycleAfter = recycleOf s
                )
            | _ ->
                // The state lives in the worker process: its files tell what it did.
                Stage.map (fun x ->
                    let fs, fc = fault ()
                    struct (x, fs, fc))
                >=> Stage.mapWithState (
                    StateRemote.init,
                    StateRemote.call,
                    dispose = StateRemote.dispose,
                    workers = w,
                    capacity = c,
                    ordered = o,
                    multiprocess = true,
                    ?recycleAfter = recycleOf s
                )
        | Distributed ->
            // As a process stage's: the injected failure travels with its item.
            Stage.map (fun x ->
                let fs, fc = fault ()
                struct (x, $"{x};", fs, fc))
            >=> Stage.distributed (CampaignRemote.tupled, server.Value, workers = w, capacity = c, ordered = o)
        | InProcess ->

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
