namespace Pyper.FSharp

open Pyper
open System
open System.Collections.Generic
open System.Threading
open System.Threading.Tasks

[<RequireQualifiedAccess>]
module Pipeline =
    [<GeneralizableValue>]
    let id<'a> : Pipeline<'a, 'a> = Pipeline<'a, 'a>([], (fun _ src -> src))

    let private notNull (name: string) (value: obj) =
        if isNull value then
            raise (ArgumentNullException(name, $"{name} is null."))

    let compose (first: Pipeline<'a, 'b>) (second: Pipeline<'b, 'c>) =
        notNull "first" first
        notNull "second" second
        first >=> second

    let private run (pipeline: Pipeline<'a, 'b>) source =
        notNull "pipeline" pipeline
        RunSource(pipeline, source) :> IAsyncEnumerable<'b>

    let stream (input: 'a) (pipeline: Pipeline<'a, 'b>) = run pipeline (Interpreter.single input)

    let streamFrom (source: IAsyncEnumerable<'a>) (pipeline: Pipeline<'a, 'b>) =
        if isNull source then
            nullArg "source"

        run pipeline (Interpreter.ofAsyncSeq source)

    let streamFromSeq (source: seq<'a>) (pipeline: Pipeline<'a, 'b>) =
        if isNull source then
            nullArg "source"

        run pipeline (Interpreter.ofSeq source)

    let toSeq (input: 'a) (pipeline: Pipeline<'a, 'b>) =
        BlockingRun(stream input pipeline, CancellationToken.None) :> seq<'b>

    let toSeqFrom (source: seq<'a>) (pipeline: Pipeline<'a, 'b>) =
        BlockingRun(streamFromSeq source pipeline, CancellationToken.None) :> seq<'b>

    let toBlockingSeq (token: CancellationToken) (results: IAsyncEnumerable<'b>) =
        if isNull results then
            nullArg "results"

        BlockingRun(results, token) :> seq<'b>

    let into (consumer: seq<'b> -> 'r) (pipeline: Pipeline<'a, 'b>) =
        notNull "consumer" consumer
        notNull "pipeline" pipeline

        fun input -> consumer (toSeq input pipeline)

    let intoTask (consumer: IAsyncEnumerable<'b> -> Task<'r>) (pipeline: Pipeline<'a, 'b>) =
        notNull "consumer" consumer
        notNull "pipeline" pipeline

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
