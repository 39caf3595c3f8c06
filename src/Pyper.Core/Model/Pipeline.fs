namespace Pyper

type Executor =
    | Thread = 0
    | Async = 1
    | Process = 2
    | Distributed = 3

[<RequireQualifiedAccess>]
module StageDefaults =
    [<Literal>]
    let Capacity = 1024

type StageKind =
    | Map = 0
    | Branch = 1
    | Join = 2
    | Batch = 3

[<Sealed>]
type StageInfo
    internal (name: string option, kind: StageKind, executor: Executor, workers: int, capacity: int, ordered: bool) =
    static let label (kind: StageKind) =
        match kind with
        | StageKind.Map -> "map"
        | StageKind.Branch -> "branch"
        | StageKind.Join -> "join"
        | StageKind.Batch -> "batch"
        | k -> k.ToString().ToLowerInvariant()

    static let executorLabel (executor: Executor) =
        match executor with
        | Executor.Thread -> "threads"
        | Executor.Async -> "async"
        | Executor.Process -> "processes"
        | Executor.Distributed -> "distributed"
        | e -> string e

    member _.Name = defaultArg name (label kind)
    member internal _.GivenName = name
    member _.Kind = kind
    member _.Executor = executor
    member _.Workers = workers
    member _.Capacity = capacity
    member _.Ordered = ordered

    /// The stage's options, e.g. "map, 20 workers, ordered, processes".
    member internal _.Describe(showKind: bool) =
        [
            if showKind then
                label kind
            if workers > 1 then
                $"{workers} workers"
            if ordered then
                "ordered"
            executorLabel executor
        ]
        |> String.concat ", "

    override this.ToString() =
        match name with
        | Some n -> $"{n} ({this.Describe true})"
        | None -> $"{label kind} ({this.Describe false})"

    static member internal Label(kind: StageKind) = label kind

module internal StageInfo =
    let create name kind executor workers capacity ordered =
        StageInfo(name, kind, executor, workers, capacity, ordered)

    let label (kind: StageKind) = StageInfo.Label kind

    let runName (index: int) (s: StageInfo) =
        match s.GivenName with
        | Some n -> n
        // Concatenated, not interpolated: this runs for every stage of every run, and an
        // interpolated string goes through the printf machinery (microseconds).
        | None -> System.String.Concat(label s.Kind, " #", string index)

namespace Pyper.FSharp

open Pyper

[<Sealed>]
type Pipeline<'a, 'b> internal (stages: StageInfo list, connect: RunContext -> BatchQueue<'a> -> BatchQueue<'b>) =
    member _.Stages = stages
    member internal _.Connect = connect

    static member (>=>)(left: Pipeline<'a, 'b>, right: Pipeline<'b, 'c>) : Pipeline<'a, 'c> =
        if isNull (box left) then
            nullArg "left"

        if isNull (box right) then
            nullArg "right"

        let lw = left.Connect
        let rw = right.Connect
        Pipeline<'a, 'c>(left.Stages @ right.Stages, (fun ctx src -> rw ctx (lw ctx src)))

    override _.ToString() =
        let title = $"Pipeline<{typeof<'a>.Name}, {typeof<'b>.Name}>"

        match stages with
        | [] -> $"{title}: id"
        | _ ->
            stages
            |> List.mapi (fun i s ->
                match s.GivenName with
                | Some n -> $"{n} ({s.Describe true})"
                | None -> $"{StageInfo.runName (i + 1) s} ({s.Describe false})")
            |> String.concat " >=> "
            |> fun body -> $"{title}: {body}"
