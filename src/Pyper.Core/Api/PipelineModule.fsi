namespace Pyper.FSharp

open Pyper
open System.Collections.Generic
open System.Threading
open System.Threading.Tasks

/// Composing and running pipelines.
[<RequireQualifiedAccess>]
module Pipeline =
    /// The identity pipeline: its outputs are its inputs. `id >=> p` and `p >=> id` behave as `p`.
    [<GeneralizableValue>]
    val id<'a> : Pipeline<'a, 'a>

    /// `compose p q` is `p >=> q`.
    val compose: first: Pipeline<'a, 'b> -> second: Pipeline<'b, 'c> -> Pipeline<'a, 'c>

    /// Runs the pipeline on one input (passed to the first stage) and streams the results as they are ready.
    /// Nothing starts until the stream is enumerated; each enumeration is an independent run, cancelled
    /// by the enumerator's token (`WithCancellation`) or by disposing it early. A failure in any stage
    /// stops every stage and is rethrown by the enumeration as the original exception.
    val stream: input: 'a -> pipeline: Pipeline<'a, 'b> -> IAsyncEnumerable<'b>

    /// Runs the pipeline over every item of an async stream, streaming the results as they are ready.
    val streamFrom: source: IAsyncEnumerable<'a> -> pipeline: Pipeline<'a, 'b> -> IAsyncEnumerable<'b>

    /// Runs the pipeline over every item of a sequence (enumerated on a thread of its own), streaming the results.
    val streamFromSeq: source: seq<'a> -> pipeline: Pipeline<'a, 'b> -> IAsyncEnumerable<'b>

    /// Runs the pipeline on one input and returns the results as a blocking sequence.
    /// Breaking out of the loop stops the run; a failure is rethrown as the original exception.
    /// For a cancellation token, use `Pipeline.stream input p |> Pipeline.toBlockingSeq token`.
    val toSeq: input: 'a -> pipeline: Pipeline<'a, 'b> -> seq<'b>

    /// Runs the pipeline over every item of a sequence and returns the results as a blocking sequence.
    val toSeqFrom: source: seq<'a> -> pipeline: Pipeline<'a, 'b> -> seq<'b>

    /// Consumes a result stream as a blocking sequence, cancelled by `token`. Unlike the BCL's
    /// `ToBlockingEnumerable`, a failure is rethrown as the original exception, never an AggregateException.
    val toBlockingSeq: token: CancellationToken -> results: IAsyncEnumerable<'b> -> seq<'b>

    /// Pyper's `pipeline > consumer`: a function that runs the pipeline on its input and gives the results to `consumer`.
    val into: consumer: (seq<'b> -> 'r) -> pipeline: Pipeline<'a, 'b> -> ('a -> 'r)

    /// Like `into`, for a consumer that awaits the async result stream.
    val intoTask: consumer: (IAsyncEnumerable<'b> -> Task<'r>) -> pipeline: Pipeline<'a, 'b> -> ('a -> Task<'r>)

/// Where a failure surfaced by a run came from.
[<RequireQualifiedAccess>]
module PipelineError =
    /// The name of the stage whose worker threw `error` ("source" for the input stream), if a run recorded it.
    val stage: error: exn -> string option

    /// Failures of other workers that happened after `error`, the first one, had stopped the run.
    val others: error: exn -> exn list
