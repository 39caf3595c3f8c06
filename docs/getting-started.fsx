(**
---
title: Getting started
category: Guide
categoryindex: 1
index: 1
---
*)
(*** hide ***)
#r "../src/Pyper.Core/bin/Release/net10.0/Pyper.Core.dll"
#r "../src/Pyper.Core/bin/Release/net10.0/System.Threading.RateLimiting.dll"
(**
# Getting started

Add the package for your language (.NET 10):

```sh
dotnet add package Pyper            # F#: open Pyper.FSharp
dotnet add package Pyper.CSharp     # C#: using Pyper;
```

## F#

A stage is built from a plain function; `>=>` composes stages into a pipeline, which is an
immutable value you can run any number of times.
*)
open System.Threading.Tasks
open Pyper.FSharp

let numbers (limit: int) = seq { 0 .. limit - 1 }

let double' (x: int) = task {
    do! Task.Delay 10
    return x * 2 }

let pipeline =
    Stage.branch numbers                       // one input, many items
    >=> Stage.mapTask (double', workers = 8, ordered = true)  // eight async workers, input order kept
    >=> Stage.map ((fun x -> x + 1), workers = 2, ordered = true)  // two threads, still in order

let results = Pipeline.toSeq 10 pipeline |> List.ofSeq
(** `results` holds the ten results in input order: *)
(*** include-value: results ***)
(**
`Pipeline.toSeq` runs the pipeline over one input and blocks as you enumerate;
`Pipeline.toSeqFrom` runs it over a sequence of inputs, and `Pipeline.stream` /
`Pipeline.streamFrom` give an `IAsyncEnumerable` to `await`. Nothing starts until the results are
enumerated, and leaving the loop early stops every worker.

## F# Interactive

In a script, reference the package and use it the same way:

```fsharp
#r "nuget: Pyper"
open Pyper.FSharp
Stage.map ((fun x -> x * x), workers = 4) |> Pipeline.toSeqFrom [ 1..10 ] |> Seq.sum
```

Process stages (`multiprocess = true`) need functions from a compiled assembly: worker processes
cannot load code defined in an FSI session, and such a stage is refused when it is built.

## C#

```csharp
using Pyper;

var pipeline = Pipeline.Start<int>()
    .Branch(Numbers)
    .Map(Double, workers: 8, ordered: true)
    .Map(x => x + 1, workers: 2, ordered: true);

await foreach (var result in pipeline.Run(10))
    Console.WriteLine(result);

static IEnumerable<int> Numbers(int limit) { for (var i = 0; i < limit; i++) yield return i; }
static async Task<int> Double(int x) { await Task.Delay(10); return x * 2; }
```

A run is both an `IAsyncEnumerable<T>` and an `IEnumerable<T>`: a plain `foreach` blocks.
*)
