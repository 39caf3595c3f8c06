/// The process executor's hardening (issue #11): what crosses the boundary, generic functions,
/// failures (first, fast and faithful) and batches bounded by bytes.
module Pyper.Tests.ProcessHardeningTests

open System
open System.Collections.Generic
open System.Text.Json
open Expecto
open FsCheck
open FsCheck.FSharp
open Pyper
open Pyper.FSharp
open Pyper.Tests.Helpers
open Pyper.Tests.ProcessTests

/// A class with public fields (System.Text.Json skips fields unless told).
[<AllowNullLiteral>]
type FieldItem() =
    [<DefaultValue>]
    val mutable X: int

    [<DefaultValue>]
    val mutable Name: string

/// A union of several shapes.
type Shape =
    | Dot
    | Circle of radius: float
    | Poly of corners: (int * int) list
    | Named of name: string * tags: Set<string>

/// Every shape a user may send, in one record.
type Bundle =
    {
        Pair: struct (int * string)
        Tuple: int * bool * string
        Shapes: Shape list
        Numbers: int[]
        Bytes: byte[]
        Lookup: Map<int, string>
        Maybe: Option<decimal>
        Nested: struct (int * struct (string * int64))
    }

/// A class that keeps state in a private field: its value would be lost.
type Counter() =
    let mutable count = 0
    member _.Count = count
    member _.Increment() = count <- count + 1

/// A class with a get-only auto property and no matching constructor parameter.
type Frozen() =
    member val Id = Guid.NewGuid()

/// A self-referencing result: it cannot be serialized.
[<AllowNullLiteral>]
type Node() =
    member val Next: Node = null with get, set

/// F# exceptions, with and without fields.
exception TestError
exception Detailed of string * int

/// An exception with no (string) constructor.
type Silent() =
    inherit Exception()

/// An exception whose Message getter throws.
type Cursed() =
    inherit Exception("cursed")
    override _.Message = raise (InvalidOperationException "no message for you")

/// An exception with a constructor the parent cannot call (an unknown parameter type).
type Opaque(code: Guid) =
    inherit Exception($"opaque {code}")

/// An exception whose full encoding never ends in a worker process: there, reading its Data
/// blocks forever (the worker's failure encoder reads it; the brief failure frame does not).
type StuckEncoding() =
    inherit Exception("stuck in encoding")

    override _.Data =
        if
            Environment.GetCommandLineArgs()
            |> Array.exists (fun a -> a.EndsWith "Pyper.Worker.dll")
        then
            Threading.Thread.Sleep Threading.Timeout.Infinite

        base.Data

/// Functions the worker processes run.
module Remote =
    let stuckAt3 (x: int) =
        if x = 3 then raise (StuckEncoding()) else x

    let stuckBranchAt3 (x: int) : seq<int> =
        if x = 3 then raise (StuckEncoding()) else Seq.replicate 2 x

    let stuckJoinAt3 (xs: seq<int>) : int =
        Seq.sumBy (fun x -> if x = 3 then raise (StuckEncoding()) else x) xs

    let echoBundle (b: Bundle) = b
    let fieldEcho (f: FieldItem) = f
    let sum (struct (a: int, b: int)) = a + b
    let swap (struct (a: int, b: int)) = struct (b, a)
    let length (s: string) = s.Length

    let cycle (_: int) =
        let n = Node() in
        n.Next <- n
        n

    /// Fails at 50, leaving a foreground thread that keeps the worker process from exiting.
    let throwAt50 (x: int) =
        if x = 50 then
            Threading.Thread(fun () -> Threading.Thread.Sleep Threading.Timeout.Infinite).Start()
            invalidOp "fifty"
        else
            x

    let raiser (kind: int) : int =
        match kind with
        | 0 -> raise (ArgumentNullException("value", "custom message"))
        | 1 -> raise (ArgumentOutOfRangeException("count", 42, "too many"))
        | 2 -> raise (ObjectDisposedException("the pool", "closed already"))
        | 3 -> raise TestError
        | 4 -> raise (Detailed("disk", 7))
        | 5 -> raise (Silent())
        | 6 -> raise (Cursed())
        | 7 ->
            let e = InvalidOperationException("outer", ArgumentException("inner", "arg"))
            e.HResult <- 0x1234
            e.Data["attempt"] <- 3
            raise e
        | _ -> raise (Opaque Guid.Empty)

/// Generic functions: closed over the stage's types for the worker.
module Generic =
    let describe<'T> () =
        Stage.map ((fun (x: int) -> typeof<'T>.Name + string x), multiprocess = true)

/// What the wire does to a value: the parent's batch framing, the worker's reading and its reply
/// (both through the codec of 'T).
let wireRoundTrip (x: 'T) : 'T =
    let codec = Codecs.get<'T>()

    let pass (items: 'T[]) =
        let buffer = Buffers.ArrayBufferWriter<byte>()
        Expect.equal (codec.Write(items, 0, 1, Wire.BatchBytes, buffer)) 1 "one item"
        let back = Array.zeroCreate<'T> 1
        Expect.equal (codec.Read(buffer.WrittenSpan, back, 0)) 1 "one item back"
        back

    (pass (pass [| x |]))[0]

/// Floats without NaN, so that structural equality can compare what comes back (NaN and the
/// infinities have a test of their own).
type NoNaN =
    static member Float() =
        ArbMap.defaults
        |> ArbMap.arbitrary<float>
        |> Arb.filter (fun f -> not (Double.IsNaN f))

let same (a: 'T) (b: 'T) = a = b

let private refused (build: unit -> obj) (what: string) =
    let e = Expect.throwsC (build >> ignore) id

    match e with
    | :? ArgumentException as a ->
        Expect.equal a.ParamName "f" "names the function"
        Expect.stringContains a.Message "Stage 'crossing'" "names the stage"
        Expect.stringContains a.Message what "names the type and why"
    | e -> failtestf "expected ArgumentException, got %O" e

let private remoteError (kind: int) =
    let p = Stage.map (Remote.raiser, multiprocess = true, name = "raiser")
    catchExn (fun () -> collect (Pipeline.toSeq kind p) |> ignore)

let private config n =
    { FsCheckConfig.defaultConfig with
        maxTest = n
        arbitrary = [ typeof<NoNaN> ]
    }

let tests =
    testList
        "process hardening"
        [
            testPropertyWithConfig
                (config 200)
                "property: values of every shape round-trip through the wire"
                (fun (b: Bundle) -> same (wireRoundTrip b) b)

            testPropertyWithConfig
                (config 100)
                "property: dictionaries, field classes and value tuples round-trip"
                (fun (m: Map<string, int list>) (x: int) (s: string) ->
                    let d = Dictionary<string, int list>(m)
                    let back = wireRoundTrip d
                    let f = FieldItem(X = x, Name = s)
                    let f' = wireRoundTrip f

                    same (List.ofSeq back.Keys) (List.ofSeq d.Keys)
                    && Seq.forall (fun k -> same back[k] d[k]) d.Keys
                    && f'.X = x
                    && f'.Name = s
                    && same (wireRoundTrip (struct (x, s))) (struct (x, s)))

            testPropertyWithConfig
                (config 5)
                "property: bundles round-trip through a real worker process"
                (fun (bs: Bundle list) ->
                    let p = Stage.map (Remote.echoBundle, ordered = true, multiprocess = true)
                    let back = collect (Pipeline.toSeqFrom bs p)
                    assertNoLeaks ()
                    same back bs)

            testCase "NaN and the infinities round-trip" (fun () ->
                Expect.isTrue (Double.IsNaN(wireRoundTrip nan)) "NaN"
                Expect.equal (wireRoundTrip [ infinity; -infinity ]) [ infinity; -infinity ] "infinities"
                Expect.equal (wireRoundTrip (Circle infinity)) (Circle infinity) "in a union")

            processTest "value tuples and public fields reach the worker and come back" (fun () ->
                let sum = Stage.map (Remote.sum, multiprocess = true)
                Expect.equal (collect (Pipeline.toSeq (struct (1, 2)) sum)) [ 3 ] "1 + 2"
                let swap = Stage.map (Remote.swap, multiprocess = true)
                Expect.equal (collect (Pipeline.toSeq (struct (1, 2)) swap)) [ struct (2, 1) ] "swapped"
                let echo = Stage.map (Remote.fieldEcho, multiprocess = true)

                let back =
                    collect (Pipeline.toSeq (FieldItem(X = 7, Name = "seven")) echo)
                    |> List.exactlyOne

                Expect.equal (back.X, back.Name) (7, "seven") "fields kept")

            testCase
                "types that cannot cross are refused when the stage is built, naming stage, type and why"
                (fun () ->
                    refused
                        (fun () -> Stage.map ((fun (o: obj) -> 1), multiprocess = true, name = "crossing"))
                        "System.Object"

                    refused
                        (fun () ->
                            Stage.map (
                                (fun (_: int) -> Func<int>(fun () -> 1)),
                                multiprocess = true,
                                name = "crossing"
                            ))
                        "delegate"

                    refused
                        (fun () -> Stage.map ((fun (c: Counter) -> 1), multiprocess = true, name = "crossing"))
                        "Counter"

                    refused (fun () -> Stage.map ((fun (c: Frozen) -> 1), multiprocess = true, name = "crossing")) "Id"

                    refused
                        (fun () -> Stage.map ((fun (_: IComparable) -> 1), multiprocess = true, name = "crossing"))
                        "IComparable"

                    refused
                        (fun () -> Stage.map ((fun (_: Stack<int>) -> 1), multiprocess = true, name = "crossing"))
                        "reverse"

                    refused
                        (fun () -> Stage.map ((fun (_: int[,]) -> 1), multiprocess = true, name = "crossing"))
                        "multi-dimensional"

                    refused
                        (fun () -> Stage.map ((fun (_: int -> int) -> 1), multiprocess = true, name = "crossing"))
                        "function"

                    refused
                        (fun () ->
                            Stage.map (
                                (fun (_: Dictionary<int list, int>) -> 1),
                                multiprocess = true,
                                name = "crossing"
                            ))
                        "keys")

            processTest "a generic F# function is closed over its type arguments in the worker" (fun () ->
                Expect.equal
                    (collect (Pipeline.toSeqFrom [ 1; 2 ] (Generic.describe<string>())))
                    [ "String1"; "String2" ]
                    "String"

                Expect.equal (collect (Pipeline.toSeq 3 (Generic.describe<Guid>()))) [ "Guid3" ] "Guid")

            processTest "a failure stops the run at once: the other worker's results do not flow on" (fun () ->
                // One attempt: two warm worker processes parked, so that both serve the failing run
                // from its start (a worker process that starts after the failure lets nothing flow
                // anyway); the results yielded before the failure surfaces.
                let attempt () =
                    let yielded = ref 0

                    withKeepAlive 60_000 (fun () ->
                        let warm =
                            Stage.map (ProcessTests.Remote.identity, workers = 2, multiprocess = true)

                        Expect.equal (collect (Pipeline.toSeqFrom [ 0..9_999 ] warm)).Length 10_000 "the warm-up run"

                        let p =
                            Stage.map (Remote.throwAt50, workers = 2, multiprocess = true, name = "fifty")

                        let e =
                            catchExn (fun () ->
                                for _ in Pipeline.toSeqFrom [ 0..99_999 ] p do
                                    yielded.Value <- yielded.Value + 1)

                        Expect.equal e.Message "fifty" "the failure")

                    yielded.Value

                // Threads yield 0-2,000 results here (the other worker's batches, of up to 1,024,
                // handed on before the failure), worker processes 0-200 (measured on a loaded
                // 2-core machine). Before the brief failure frame the run stopped only once the
                // failing worker process had encoded its first exception (cold: 50-350 ms) while
                // the other one's results flowed on: 4,300-7,200 here, up to 82k seen. How many
                // flow is a matter of timing: a load spike that stalls the failing worker process
                // alone lets thousands through (18,210 seen once). So the bound is tight (3,000),
                // and a run is tried up to three times: the old behaviour fails every try, a load
                // spike hardly three in a row. (The test below shows without timing that the brief
                // frame alone ends the run.)
                let counts = ResizeArray()

                while counts.Count < 3 && (counts.Count = 0 || Seq.min counts >= 3_000) do
                    counts.Add(attempt ())

                Expect.isLessThan
                    (Seq.min counts)
                    3_000
                    $"results after the failure are not yielded (yielded per try: %A{List.ofSeq counts})")

            processTest
                "a failure whose full frame never comes still ends the run, with its type and message"
                (fun () ->
                    // The worker process sends the brief failure frame, then hangs encoding the full
                    // one: the brief frame alone ends the run (after its 2 s grace for the full one),
                    // and the stuck worker process is killed. Before the brief frame, the run hung.
                    let e =
                        withinGuard "the failed run" (fun () ->
                            Threading.Tasks.Task.Run(fun () ->
                                catchExn (fun () ->
                                    Pipeline.toSeqFrom [ 1..10 ] (Stage.map (Remote.stuckAt3, multiprocess = true))
                                    |> Seq.iter ignore)))

                    Expect.isTrue (e :? StuckEncoding) $"the original type, got {e.GetType()}"
                    Expect.equal e.Message "stuck in encoding" "the original message")

            processTest
                "a branch or join failure whose full frame never comes still ends the run, with its type and message"
                (fun () ->
                    // As above, for the branch and join stages' worker processes (their failures
                    // send the brief frame first too). Before, these runs hung.
                    let run (stage: Pipeline<int, int>) =
                        withinGuard "the failed run" (fun () ->
                            Threading.Tasks.Task.Run(fun () ->
                                catchExn (fun () -> Pipeline.toSeqFrom [ 1..10 ] stage |> Seq.iter ignore)))

                    for e in
                        [
                            run (Stage.branch (Remote.stuckBranchAt3, multiprocess = true))
                            run (Stage.join (Remote.stuckJoinAt3, multiprocess = true))
                        ] do
                        Expect.isTrue (e :? StuckEncoding) $"the original type, got {e.GetType()}"
                        Expect.equal e.Message "stuck in encoding" "the original message")

            processTest "exceptions keep their type, message and properties" (fun () ->
                match remoteError 0 with
                | :? ArgumentNullException as e ->
                    Expect.equal e.ParamName "value" "ParamName"
                    Expect.equal e.Message (ArgumentNullException("value", "custom message")).Message "message"
                    Expect.equal (PipelineError.stage e) (Some "raiser") "stage"
                    Expect.stringContains (string e.Data["Pyper.RemoteStackTrace"]) "raiser" "remote stack trace"
                | e -> failtestf "ArgumentNullException expected, got %O" e

                match remoteError 1 with
                | :? ArgumentOutOfRangeException as e ->
                    Expect.equal e.ActualValue (box 42) "ActualValue"
                    Expect.equal e.Message (ArgumentOutOfRangeException("count", 42, "too many")).Message "message"
                | e -> failtestf "ArgumentOutOfRangeException expected, got %O" e

                match remoteError 2 with
                | :? ObjectDisposedException as e ->
                    Expect.equal e.ObjectName "the pool" "ObjectName"
                    Expect.equal e.Message (ObjectDisposedException("the pool", "closed already")).Message "message"
                | e -> failtestf "ObjectDisposedException expected, got %O" e

                match remoteError 3 with
                | TestError -> ()
                | e -> failtestf "TestError expected, got %O" e

                match remoteError 4 with
                | Detailed(what, n) -> Expect.equal (what, n) ("disk", 7) "F# exception fields"
                | e -> failtestf "Detailed expected, got %O" e

                Expect.isTrue (remoteError 5 :? Silent) "an exception without a (string) constructor"

                match remoteError 7 with
                | :? InvalidOperationException as e ->
                    Expect.equal e.Message "outer" "message"
                    Expect.equal e.HResult 0x1234 "HResult"
                    Expect.equal e.Data["attempt"] (box 3) "Data"
                    Expect.equal e.InnerException.Message (ArgumentException("inner", "arg")).Message "inner message"
                | e -> failtestf "InvalidOperationException expected, got %O" e)

            processTest
                "an exception that cannot be rebuilt comes as RemoteStageException; a throwing Message does not kill the worker"
                (fun () ->
                    match remoteError 6 with
                    | :? RemoteStageException as r ->
                        Expect.stringContains r.RemoteType "Cursed" "type"
                        Expect.isFalse r.ExitCode.HasValue "not a crash"
                    | e -> failtestf "RemoteStageException expected, got %O" e

                    match remoteError 8 with
                    | :? RemoteStageException as r ->
                        Expect.stringContains r.RemoteType "Opaque" "type"
                        Expect.stringContains r.Message "opaque" "message"
                    | e -> failtestf "RemoteStageException expected, got %O" e)

            processTest "a result that cannot be serialized names the stage and the type" (fun () ->
                let p = Stage.map (Remote.cycle, multiprocess = true, name = "looped")

                match catchExn (fun () -> collect (Pipeline.toSeq 1 p) |> ignore) with
                | :? NotSupportedException as e ->
                    Expect.stringContains e.Message "Stage 'looped'" "stage"
                    Expect.stringContains e.Message "Node" "type"
                | e -> failtestf "NotSupportedException expected, got %O" e)

            testCase "a batch's frame stops at about Wire.BatchBytes; a bigger item goes alone" (fun () ->
                let big = String('x', 3_000_000)
                let items = [| big; big; big; "small" |]
                let buffer = Buffers.ArrayBufferWriter<byte>()
                Expect.equal (Wire.serializeBatch items 0 4 buffer) 2 "two 3 MB items fill a frame"
                Expect.equal (Wire.serializeBatch items 2 2 buffer) 2 "the rest"
                Expect.equal (Wire.serializeBatch [| String('y', 10_000_000) |] 0 1 buffer) 1 "alone")

            processTest "batches of huge items are bounded by bytes, not only by time" (fun () ->
                // One 24 MB string, sent 100 times: 2.4 GB of JSON in one frame before.
                let huge = String('h', 24_000_000)
                let p = Stage.map (Remote.length, multiprocess = true, name = "huge")
                let lengths = collect (Pipeline.toSeqFrom (List.replicate 100 huge) p)
                Expect.equal lengths (List.replicate 100 huge.Length) "every length")
        ]
