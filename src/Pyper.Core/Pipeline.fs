namespace Pyper

type Executor =
    | Thread = 0
    | Async = 1
    | Process = 2
    | Distributed = 3

[<Sealed>]
type StageInfo
    internal (name: string option, kind: string, executor: Executor, workers: int, capacity: int, ordered: bool) =
    member _.Name = defaultArg name kind
    member internal _.GivenName = name
    member _.Kind = kind
    member _.Executor = executor
    member _.Workers = workers
    member _.Capacity = capacity
    member _.Ordered = ordered

    override _.ToString() =
        let opts =
            [
                kind
                if workers > 1 then
                    $"{workers} workers"
                if ordered then
                    "ordered"
            ]
            |> String.concat ", "

        match name with
        | Some n -> $"{n} ({opts})"
        | None -> opts

module internal StageInfo =
    let create name kind executor workers capacity ordered =
        StageInfo(name, kind, executor, workers, capacity, ordered)

    let runName (index: int) (s: StageInfo) =
        match s.GivenName with
        | Some n -> n
        | None -> $"{s.Kind} #{index}"

namespace Pyper.FSharp

open Pyper

[<Sealed>]
type Pipeline<'a, 'b> internal (stages: StageInfo list, wire: RunContext -> BatchQueue<'a> -> BatchQueue<'b>) =
    member _.Stages = stages
    member internal _.Wire = wire

    static member (>=>)(left: Pipeline<'a, 'b>, right: Pipeline<'b, 'c>) : Pipeline<'a, 'c> =
        if isNull (box left) then
            nullArg "left"

        if isNull (box right) then
            nullArg "right"

        let lw = left.Wire
        let rw = right.Wire
        Pipeline<'a, 'c>(left.Stages @ right.Stages, (fun ctx src -> rw ctx (lw ctx src)))

    override _.ToString() =
        match stages with
        | [] -> "id"
        | _ -> stages |> List.map string |> String.concat " >=> "
