namespace Pyper.FSharp

open System.Collections.Generic
open System.Threading.Tasks

/// Async streams (`IAsyncEnumerable`) in a line, for `Stage.branchStream`, `Stage.joinStream`,
/// `Stage.joinTask` and `Pipeline.intoTask`, without a task-sequence library: thin, curried
/// wrappers over .NET's own `System.Linq.AsyncEnumerable`.
///
/// ```fsharp
/// Stage.branchStream (fun n -> seq { for i in 1..n -> task { do! Task.Delay 10; return i } } |> AsyncSeq.ofTaskSeq)
/// Stage.joinStream (AsyncSeq.map string)
/// Pipeline.intoTask AsyncSeq.toListAsync pipeline
/// ```
[<RequireQualifiedAccess>]
module AsyncSeq =
    /// The items of a sequence as an async stream (the sequence is read as the stream is).
    val ofSeq: source: seq<'a> -> IAsyncEnumerable<'a>

    /// An async stream of the results of a sequence of tasks, awaited one at a time in order: each
    /// task is made (the sequence is read) only when the stream needs its result, so
    /// `seq { for i in 1..n -> task { ... } }` is an async producer.
    val ofTaskSeq: source: seq<Task<'a>> -> IAsyncEnumerable<'a>

    /// The stream with `f` applied to every item, as it is read.
    val map: f: ('a -> 'b) -> source: IAsyncEnumerable<'a> -> IAsyncEnumerable<'b>

    /// Reads the whole stream into an array.
    val toArrayAsync: source: IAsyncEnumerable<'a> -> Task<'a array>

    /// Reads the whole stream into a list.
    val toListAsync: source: IAsyncEnumerable<'a> -> Task<'a list>
