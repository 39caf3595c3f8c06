namespace Pyper.FSharp

open Pyper
open System.Collections.Generic
open System.Threading
open System.Threading.Tasks

[<RequireQualifiedAccess>]
module Pipeline =
    [<GeneralizableValue>]
    let id<'a> : Pipeline<'a, 'a> = Pipeline<'a, 'a>([], (fun _ src -> src))

    let compose (first: Pipeline<'a, 'b>) (second: Pipeline<'b, 'c>) = first >=> second

    let private run (pipeline: Pipeline<'a, 'b>) source =
        RunSource(pipeline, source) :> IAsyncEnumerable<'b>

    let stream (input: 'a) (pipeline: Pipeline<'a, 'b>) = run pipeline (Wiring.single input)

    let streamFrom (source: IAsyncEnumerable<'a>) (pipeline: Pipeline<'a, 'b>) =
        if isNull source then
            nullArg "source"

        run pipeline (Wiring.ofAsyncSeq source)

    let streamFromSeq (source: seq<'a>) (pipeline: Pipeline<'a, 'b>) =
        if isNull source then
            nullArg "source"

        run pipeline (Wiring.ofSeq source)

    let toSeq (input: 'a) (pipeline: Pipeline<'a, 'b>) =
        BlockingRun(stream input pipeline, CancellationToken.None) :> seq<'b>

    let toSeqFrom (source: seq<'a>) (pipeline: Pipeline<'a, 'b>) =
        BlockingRun(streamFromSeq source pipeline, CancellationToken.None) :> seq<'b>

    let toBlockingSeq (token: CancellationToken) (results: IAsyncEnumerable<'b>) =
        if isNull results then
            nullArg "results"

        BlockingRun(results, token) :> seq<'b>

    let into (consumer: seq<'b> -> 'r) (pipeline: Pipeline<'a, 'b>) =
        fun input -> consumer (toSeq input pipeline)

    let intoTask (consumer: IAsyncEnumerable<'b> -> Task<'r>) (pipeline: Pipeline<'a, 'b>) =
        fun input -> consumer (stream input pipeline)

[<RequireQualifiedAccess>]
module PipelineError =
    let stage (error: exn) =
        match error.Data[ErrorKeys.Stage] with
        | :? string as s -> Some s
        | _ -> None

    let others (error: exn) =
        match error.Data[ErrorKeys.Others] with
        | :? List<exn> as l -> List.ofSeq l
        | _ -> []
