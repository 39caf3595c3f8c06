namespace Pyper.FSharp

open System
open System.Collections.Generic
open System.Linq
open System.Threading
open System.Threading.Tasks

[<RequireQualifiedAccess>]
module AsyncSeq =
    let ofSeq (source: seq<'a>) : IAsyncEnumerable<'a> =
        ArgumentNullException.ThrowIfNull(source, nameof source)
        AsyncEnumerable.ToAsyncEnumerable source

    let ofTaskSeq (source: seq<Task<'a>>) : IAsyncEnumerable<'a> =
        ArgumentNullException.ThrowIfNull(source, nameof source)

        AsyncEnumerable.Select(
            AsyncEnumerable.ToAsyncEnumerable source,
            Func<Task<'a>, CancellationToken, ValueTask<'a>>(fun t _ -> ValueTask<'a> t)
        )

    let map (f: 'a -> 'b) (source: IAsyncEnumerable<'a>) : IAsyncEnumerable<'b> =
        ArgumentNullException.ThrowIfNull(f, nameof f)
        ArgumentNullException.ThrowIfNull(source, nameof source)
        AsyncEnumerable.Select(source, Func<'a, 'b> f)

    let toArrayAsync (source: IAsyncEnumerable<'a>) : Task<'a array> =
        ArgumentNullException.ThrowIfNull(source, nameof source)
        AsyncEnumerable.ToArrayAsync(source).AsTask()

    let toListAsync (source: IAsyncEnumerable<'a>) : Task<'a list> =
        ArgumentNullException.ThrowIfNull(source, nameof source)

        task {
            let! items = toArrayAsync source
            return List.ofArray items
        }
