/// What the executor contract's stages do, as data: every item carries the program the stages
/// still have to run on it, and each stage runs the head of it. The stage functions are module
/// functions of this compiled assembly that capture nothing, so a worker process can re-create
/// them: the same cases run on threads, on the thread pool and in processes.
///
/// No top-level values here (only functions and types): a worker process loads this assembly
/// as a library, where the test program's start-up code, which initialises such values, never runs.
module Pyper.Tests.Contract.Behaviour

open System
open System.Collections.Generic
open System.IO
open System.Runtime.CompilerServices
open System.Threading
open System.Threading.Tasks

/// One stage's step.
type Fn =
    /// x + k.
    | Add of int
    /// x + 1, pausing first on every 7th item (yielding its thread, or 1 ms in async code), so
    /// that workers overtake each other.
    | Jitter
    /// `n` copies of the item (a branch step; a map step needs exactly one).
    | Copies of int
    /// Throws `ContractFailure "item n"` at item `n`, else passes the item on.
    | FailAt of int
    /// Waits until `n` calls (in any thread or process) have arrived at the barrier `key`, then passes the item on.
    | Meet of key: string * n: int
    /// A join: one result, the sum of its stream.
    | Sum
    /// A join: the running totals of its stream.
    | Totals
    /// A join: the first item of its stream; it reads no further.
    | Head
    /// A join that enumerates its stream twice.
    | ReadTwice

/// A contract item: a value and the steps the remaining stages run on it.
type Item = { X: int; Program: Fn list }

/// The contract's failure: an exception type with a (string) constructor, so a process stage
/// re-creates it in the parent with its type and message.
type ContractFailure(message: string) =
    inherit Exception(message)

/// The items of `xs`, each carrying `program`.
let items (program: Fn list) (xs: seq<int>) =
    xs |> Seq.map (fun x -> { X = x; Program = program })

/// The folder of barrier `key`, shared by the test process and its worker processes.
let barrierFolder (key: string) =
    Path.Combine(Path.GetTempPath(), $"pyper-contract-{key}")

let private arrive (key: string) =
    let dir = barrierFolder key
    Directory.CreateDirectory dir |> ignore
    File.WriteAllText(Path.Combine(dir, Guid.NewGuid().ToString "N"), "")
    dir

let private arrived (dir: string) = Directory.GetFiles(dir).Length

/// How long a barrier waits before it fails (a hang guard: it returns as soon as all have met).
let private guard () = Pyper.Tests.Helpers.hangGuard

let private notMet (n: int) =
    ContractFailure $"not all {n} calls met at the barrier: the workers did not run at once"

[<MethodImpl(MethodImplOptions.NoInlining)>]
let private failAt (n: int) (x: int) =
    if x = n then
        raise (ContractFailure $"item {n}")

    x

/// The step's results for one item, blocking where the step waits (threads and processes).
let many (item: Item) : Item list =
    match item.Program with
    | [] -> invalidArg "item" "an item reached a stage with no step left in its program"
    | fn :: rest ->
        let one x = [ { X = x; Program = rest } ]

        match fn with
        | Add k -> one (item.X + k)
        | Jitter ->
            if item.X % 7 = 0 then
                Thread.Yield() |> ignore

            one (item.X + 1)
        | Copies n -> List.replicate n { X = item.X; Program = rest }
        | FailAt n -> one (failAt n item.X)
        | Meet(key, n) ->
            let dir = arrive key

            if not (SpinWait.SpinUntil((fun () -> arrived dir >= n), guard ())) then
                raise (notMet n)

            one item.X
        | Sum
        | Totals
        | Head
        | ReadTwice -> invalidArg "item" $"{fn} is a join step"

/// The step's results for one item as a sequence (a branch stage's function, here a module
/// function that a worker process can load).
let manySeq (item: Item) : seq<Item> = many item

/// The step's single result (a map stage).
let one (item: Item) : Item =
    match many item with
    | [ r ] -> r
    | rs -> invalidArg "item" $"a map step must give one result, not {rs.Length}"

/// The step's results for one item, awaiting where the step waits (async executors). It
/// suspends first (except for `Jitter`, which pauses on every 7th item), so async workers
/// really interleave.
let manyAsync (item: Item) : Task<Item list> =
    task {
        match item.Program with
        | Meet(key, n) :: rest ->
            do! Task.Yield()
            let dir = arrive key
            let deadline = DateTime.UtcNow + guard ()

            while arrived dir < n do
                if DateTime.UtcNow > deadline then
                    raise (notMet n)

                do! Task.Delay 1 // polling the barrier, with a hang guard

            return [ { X = item.X; Program = rest } ]
        | Jitter :: rest ->
            // A pause, not a synchronisation: it only lets other workers overtake this one.
            if item.X % 7 = 0 then
                do! Task.Delay 1

            return [ { X = item.X + 1; Program = rest } ]
        | _ ->
            do! Task.Yield()
            return many item
    }

/// The single result, awaiting.
let oneAsync (item: Item) : Task<Item> =
    task {
        match! manyAsync item with
        | [ r ] -> return r
        | rs -> return invalidArg "item" $"a map step must give one result, not {rs.Length}"
    }

/// The step's results for one item, in F# Async (which would wrap a failed Task's exception if
/// it awaited `manyAsync`).
let manyFSharpAsync (item: Item) : Async<Item list> =
    async {
        match item.Program with
        | Meet(key, n) :: rest ->
            do! Async.SwitchToThreadPool()
            let dir = arrive key
            let deadline = DateTime.UtcNow + guard ()

            while arrived dir < n do
                if DateTime.UtcNow > deadline then
                    raise (notMet n)

                do! Async.Sleep 1 // polling the barrier, with a hang guard

            return [ { X = item.X; Program = rest } ]
        | Jitter :: _ ->
            if item.X % 7 = 0 then
                do! Async.Sleep 1 // a pause that lets other workers overtake this one

            return many item
        | _ ->
            do! Async.SwitchToThreadPool()
            return many item
    }

/// A join over a stream read through `next` (false at its end) and `current`; `again` starts a
/// second enumeration. The first item's program decides: a join step (Sum, Totals, Head,
/// ReadTwice) works on the whole stream; any other step is applied to each item as it streams
/// past (a pass-through join, as in the campaign). An empty stream gives no results.
let private joinOver (next: unit -> bool) (current: unit -> Item) (again: unit -> unit) : seq<Item> =
    seq {
        if next () then
            let first = current ()

            match first.Program with
            | Sum :: rest ->
                let mutable total = first.X

                while next () do
                    total <- total + (current ()).X

                yield { X = total; Program = rest }
            | Totals :: rest ->
                let mutable total = first.X
                yield { X = total; Program = rest }

                while next () do
                    total <- total + (current ()).X
                    yield { X = total; Program = rest }
            | Head :: rest -> yield { X = first.X; Program = rest }
            | ReadTwice :: rest ->
                again ()
                yield { X = first.X; Program = rest }
            | _ ->
                yield! many first

                while next () do
                    yield! many (current ())
    }

/// A blocking join with many results (Stage.joinMany).
let joinMany (xs: seq<Item>) : seq<Item> =
    seq {
        use e = xs.GetEnumerator()
        yield! joinOver e.MoveNext (fun () -> e.Current) (fun () -> xs.GetEnumerator().Dispose())
    }

/// The one result of a join: the join step's, the last of a pass-through, or 0 for an empty stream.
let private single (results: Item list) =
    List.tryLast results |> Option.defaultValue { X = 0; Program = [] }

/// A blocking join with one result (Stage.join).
let join (xs: seq<Item>) : Item = joinMany xs |> List.ofSeq |> single

type private JoinMode =
    | Start
    | Running of total: int * rest: Fn list
    | PassThrough
    | Finished

/// An async join with many results (Stage.joinStream), the same steps as `joinMany`; it reads its
/// stream only as its results are asked for.
let joinStream (xs: IAsyncEnumerable<Item>) : IAsyncEnumerable<Item> =
    { new IAsyncEnumerable<Item> with
        member _.GetAsyncEnumerator ct =
            let e = xs.GetAsyncEnumerator ct
            let pending = Queue<Item>()
            let mutable mode = Start
            let mutable current = Unchecked.defaultof<Item>

            let step () : Task =
                task {
                    match mode with
                    | Start ->
                        let! more = e.MoveNextAsync()

                        if not more then
                            mode <- Finished
                        else
                            let first = e.Current

                            match first.Program with
                            | Sum :: rest ->
                                let mutable total = first.X

                                while! e.MoveNextAsync() do
                                    total <- total + e.Current.X

                                pending.Enqueue { X = total; Program = rest }
                                mode <- Finished
                            | Totals :: rest ->
                                pending.Enqueue { X = first.X; Program = rest }
                                mode <- Running(first.X, rest)
                            | Head :: rest ->
                                pending.Enqueue { X = first.X; Program = rest }
                                mode <- Finished
                            | ReadTwice :: rest ->
                                xs.GetAsyncEnumerator ct |> ignore
                                pending.Enqueue { X = first.X; Program = rest }
                                mode <- Finished
                            | _ ->
                                let! rs = manyAsync first
                                rs |> List.iter pending.Enqueue
                                mode <- PassThrough
                    | Running(total, rest) ->
                        let! more = e.MoveNextAsync()

                        if more then
                            let total = total + e.Current.X
                            pending.Enqueue { X = total; Program = rest }
                            mode <- Running(total, rest)
                        else
                            mode <- Finished
                    | PassThrough ->
                        let! more = e.MoveNextAsync()

                        if more then
                            let! rs = manyAsync e.Current
                            rs |> List.iter pending.Enqueue
                        else
                            mode <- Finished
                    | Finished -> ()
                }

            { new IAsyncEnumerator<Item> with
                member _.Current = current

                member _.MoveNextAsync() =
                    ValueTask<bool>(
                        task {
                            while pending.Count = 0 && mode <> Finished do
                                do! step ()

                            if pending.Count > 0 then
                                current <- pending.Dequeue()
                                return true
                            else
                                return false
                        }
                    )
              interface IAsyncDisposable with
                  member _.DisposeAsync() = e.DisposeAsync()
            }
    }

/// An async join with one result (Stage.joinTask).
let joinTask (xs: IAsyncEnumerable<Item>) : Task<Item> =
    task {
        let e = (joinStream xs).GetAsyncEnumerator()
        let results = ResizeArray()

        while! e.MoveNextAsync() do
            results.Add e.Current

        do! e.DisposeAsync()
        return single (List.ofSeq results)
    }
