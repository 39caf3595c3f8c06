/// The process executor's wire for binary payloads (byte arrays, byte memory, strings as their
/// own bytes), and its branch and join stages beyond the executor contract.
module Pyper.Tests.ProcessWireTests

open System
open System.Buffers
open System.Threading.Tasks
open Expecto
open FsCheck
open FsCheck.FSharp
open Pyper
open Pyper.FSharp
open Pyper.Tests.Helpers

/// Functions that worker processes run.
module Wired =
    let echoBytes (b: byte[]) = b
    let echoMemory (m: ReadOnlyMemory<byte>) = m
    let echoString (s: string) = s

    /// An endless sequence from `n`: a branch that only streaming can serve.
    let countFrom (n: int) : seq<int> = Seq.initInfinite (fun i -> n + i)

    let words (s: string) : seq<string> = s.Split ' '
    let concat (xs: seq<string>) = String.Join("|", xs)
    let lengths (xs: seq<byte[]>) : seq<int> = xs |> Seq.map Array.length

    let failAt (xs: seq<int>) =
        xs |> Seq.map (fun x -> if x = 5 then invalidOp "five" else x) |> Seq.sum

/// What the wire's codec for 'T writes for `items` and reads back.
let private roundTrip (items: 'T[]) : 'T[] * int =
    let codec = Codecs.get<'T>()
    let buffer = ArrayBufferWriter<byte>()
    let n = codec.Write(items, 0, items.Length, Int32.MaxValue, buffer)
    Expect.equal n items.Length "every item written"
    let back = Array.zeroCreate<'T> items.Length
    let m = codec.Read(buffer.WrittenSpan, back, 0)
    Expect.equal m items.Length "every item read"
    back, buffer.WrittenCount

/// The same strings, code unit by code unit (lone surrogates included).
let private sameStrings (a: string[]) (b: string[]) =
    a.Length = b.Length
    && Array.forall2 (fun (x: string) (y: string) -> String.Equals(x, y, StringComparison.Ordinal)) a b

let private sameBytes (a: byte[][]) (b: byte[][]) =
    a.Length = b.Length
    && Array.forall2
        (fun (x: byte[]) (y: byte[]) ->
            (isNull x && isNull y)
            || (not (isNull x) && not (isNull y) && x.AsSpan().SequenceEqual(ReadOnlySpan y)))
        a
        b

/// Strings of any UTF-16 code units, lone surrogates included (FsCheck's own strings have few).
let private anyUnits =
    Gen.choose (0, 0xFFFF)
    |> Gen.map char
    |> Gen.arrayOf
    |> Gen.map String
    |> Arb.fromGen

let private loneSurrogates =
    [|
        String([| char 0xD800 |])
        String([| 'a'; char 0xDC00; 'b' |])
        String([| char 0xDBFF; char 0xDBFF |])
        "plain"
        ""
        null
        "quotes \" and \\ and \n control \u0001 and é 漢字 🎉"
    |]

let private config n =
    { FsCheckConfig.defaultConfig with
        maxTest = n
    }

let private processTest name body = leakTest name body

let tests =
    testList
        "process wire"
        [
            testPropertyWithConfig
                (config 300)
                "property: byte arrays round-trip exactly through the codec"
                (fun (xs: byte[][]) ->
                    let back, _ = roundTrip xs
                    sameBytes back xs)

            testPropertyWithConfig
                (config 300)
                "property: byte memory round-trips exactly through the codec"
                (fun (xs: byte[][]) ->
                    let items = xs |> Array.map (fun b -> ReadOnlyMemory(if isNull b then [||] else b))
                    let back, _ = roundTrip items

                    Array.forall2
                        (fun (x: ReadOnlyMemory<byte>) (y: ReadOnlyMemory<byte>) -> x.Span.SequenceEqual y.Span)
                        back
                        items)

            testCase "property: strings of any UTF-16 code units round-trip exactly through the codec" (fun () ->
                let prop =
                    Prop.forAll (Arb.fromGen (Gen.arrayOf anyUnits.Generator)) (fun (xs: string[]) ->
                        let back, _ = roundTrip xs
                        sameStrings back xs)

                Check.One(Config.QuickThrowOnFailure.WithMaxTest 300, prop)
                let back, _ = roundTrip loneSurrogates
                Expect.isTrue (sameStrings back loneSurrogates) "lone surrogates, escapes, null, emoji")

            testCase "a 1 MB byte array and a 1 MB string take about 1 MB on the wire, not base64's 1.33" (fun () ->
                let mb = 1 <<< 20
                let bytes = Array.init mb byte
                let _, size = roundTrip [| bytes |]
                Expect.isLessThanOrEqual size (mb + 16) $"byte[]: {size} bytes"
                // Quotes and newlines: JSON would escape each one to two bytes or more.
                let text = String('"', mb / 2) + String('\n', mb / 2)
                let _, size = roundTrip [| text |]
                Expect.isLessThanOrEqual size (mb + 16) $"string: {size} bytes")

            processTest "byte arrays, byte memory and strings cross to a worker process and back exactly" (fun () ->
                let blobs =
                    List.ofArray (Gen.arrayOf (Gen.choose (0, 255) |> Gen.map byte) |> Gen.sample 60)
                    @ [ null; [||]; Array.init 300_000 byte ]

                let bytes =
                    Stage.map (Wired.echoBytes, workers = 2, ordered = true, multiprocess = true)

                let back = collect (Pipeline.toSeqFrom blobs bytes) |> Array.ofList
                Expect.isTrue (sameBytes back (Array.ofList blobs)) "byte arrays"

                let memory = Stage.map (Wired.echoMemory, ordered = true, multiprocess = true)
                let mems = blobs |> List.filter (isNull >> not) |> List.map ReadOnlyMemory

                let back = collect (Pipeline.toSeqFrom mems memory)

                Expect.isTrue
                    (List.forall2
                        (fun (x: ReadOnlyMemory<byte>) (y: ReadOnlyMemory<byte>) -> x.Span.SequenceEqual y.Span)
                        back
                        mems)
                    "byte memory"

                let strings = Array.append loneSurrogates (Gen.sample 100 anyUnits.Generator)

                let text =
                    Stage.map (Wired.echoString, workers = 2, ordered = true, multiprocess = true)

                let back = collect (Pipeline.toSeqFrom strings text) |> Array.ofList
                Expect.isTrue (sameStrings back strings) "strings, lone surrogates included")

            processTest
                "an endless branch in a worker process streams: the consumer stops it and no process is left"
                (fun () ->
                    let p = Stage.branch (Wired.countFrom, multiprocess = true)
                    Expect.equal p.Stages.Head.Executor Executor.Process "a process stage"
                    let first = collect (Pipeline.toSeq 10 p |> Seq.truncate 5000)
                    Expect.equal first [ 10..5009 ] "the first 5000, in order")

            processTest "branch and join stages of strings and bytes in worker processes" (fun () ->
                let p =
                    Stage.branch (Wired.words, workers = 2, ordered = true, multiprocess = true)
                    >=> Stage.join (Wired.concat, multiprocess = true)

                Expect.equal (collect (Pipeline.toSeqFrom [ "a b"; "c"; "d e f" ] p)) [ "a|b|c|d|e|f" ] "words, joined"

                let sizes = Stage.joinMany (Wired.lengths, multiprocess = true)
                let blobs = [ for n in [ 0; 5; 1_000_000; 3 ] -> Array.zeroCreate<byte> n ]
                Expect.equal (collect (Pipeline.toSeqFrom blobs sizes)) [ 0; 5; 1_000_000; 3 ] "lengths")

            processTest
                "a join's failure in a worker process comes with its original type, whatever the input left"
                (fun () ->
                    let p = Stage.join (Wired.failAt, multiprocess = true, name = "fives")

                    let e =
                        catchExn (fun () -> collect (Pipeline.toSeqFrom (CountingSource().Items) p) |> ignore)

                    Expect.isTrue (e :? InvalidOperationException) $"the original type, got {e}"
                    Expect.equal (PipelineError.stage e) (Some "fives") "the stage")

            testCase "branch and join refuse in worker processes what map refuses" (fun () ->
                let k = Environment.ProcessorCount

                let e =
                    Expect.throwsC
                        (fun () ->
                            Stage.branch ((fun (x: int) -> Seq.replicate k x), multiprocess = true)
                            |> ignore)
                        id

                Expect.equal (e :?> ArgumentException).ParamName "f" "names the function"
                Expect.stringContains e.Message "A branch stage" "the stage kind"
                Expect.stringContains e.Message "captures values" "says why"

                let e =
                    Expect.throwsC
                        (fun () ->
                            Stage.join (
                                (fun (xs: seq<int>) -> Func<int>(fun () -> Seq.sum xs)),
                                multiprocess = true,
                                name = "j"
                            )
                            |> ignore)
                        id

                Expect.stringContains e.Message "Stage 'j' (join)" "the stage"
                Expect.stringContains e.Message "cannot cross the process boundary" "says why"

                let e =
                    Expect.throwsC
                        (fun () ->
                            Stage.branch ((fun (x: int) -> [ Task.FromResult x ] :> seq<_>), multiprocess = true)
                            |> ignore)
                        id

                Expect.equal (e :?> ArgumentException).ParamName "multiprocess" "names the option"
                Expect.stringContains e.Message "Stage.branchStream" "says what to do")
        ]
