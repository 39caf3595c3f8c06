/// How the parent waits for a worker process's exit. `Process.Exited`'s add and remove are a plain
/// delegate field (not thread-safe), and `Process.WaitForExitAsync` adds and removes a handler on
/// each call: two waits at once could lose one's handler, and that wait never returned (a stopped
/// run hung, about once in 250 cancelled process joins). So one `ProcessExit` per worker process
/// holds the only handler, and every wait awaits its task.
module Pyper.Tests.ProcessExitTests

open System
open System.Diagnostics
open System.Reflection
open System.Reflection.Emit
open System.Threading
open System.Threading.Tasks
open Expecto
open Pyper

/// The operand size of each IL opcode, by its value.
let private operandSizes =
    typeof<OpCodes>.GetFields(BindingFlags.Public ||| BindingFlags.Static)
    |> Array.map (fun f -> f.GetValue null :?> OpCode)
    |> Array.map (fun op ->
        let size =
            match op.OperandType with
            | OperandType.InlineNone -> 0
            | OperandType.ShortInlineBrTarget
            | OperandType.ShortInlineI
            | OperandType.ShortInlineVar -> 1
            | OperandType.InlineVar -> 2
            | OperandType.InlineI8
            | OperandType.InlineR -> 8
            | OperandType.InlineSwitch -> -1 // a count, then that many 4-byte targets
            | _ -> 4

        op.Value, (op, size))
    |> dict

/// The methods that `m`'s body calls, creates or takes the address of (those it can resolve).
let private callees (m: MethodBase) : MethodBase list =
    match
        (try
            m.GetMethodBody()
         with _ ->
             null)
    with
    | null -> []
    | body ->
        let il = body.GetILAsByteArray()
        let mutable i = 0
        let found = Collections.Generic.List<MethodBase>()

        let typeArgs =
            if m.DeclaringType.IsGenericType then
                m.DeclaringType.GetGenericArguments()
            else
                null

        let methodArgs = if m.IsGenericMethod then m.GetGenericArguments() else null

        while i < il.Length do
            let value =
                if il[i] = 0xFEuy then
                    i <- i + 2
                    int16 (0xFE00 ||| int il[i - 1])
                else
                    i <- i + 1
                    int16 il[i - 1]

            let op, size = operandSizes[value]

            if op.OperandType = OperandType.InlineMethod then
                try
                    found.Add(m.Module.ResolveMethod(BitConverter.ToInt32(il, i), typeArgs, methodArgs))
                with _ ->
                    ()

            i <-
                if size = -1 then
                    i + 4 + 4 * BitConverter.ToInt32(il, i)
                else
                    i + size

        List.ofSeq found

/// Every method of Pyper.Core that calls one of Process's members named in `names`, by caller.
let private callersOf (names: Set<string>) =
    let all =
        BindingFlags.Public
        ||| BindingFlags.NonPublic
        ||| BindingFlags.Instance
        ||| BindingFlags.Static
        ||| BindingFlags.DeclaredOnly

    [
        for t in typeof<ProcessExit>.Assembly.GetTypes() do
            let methods: MethodBase seq =
                Seq.append (t.GetMethods all |> Seq.cast) (t.GetConstructors all |> Seq.cast)

            for m in methods do
                for c in callees m do
                    if c.DeclaringType = typeof<Process> && names.Contains c.Name then
                        yield $"{t.FullName}.{m.Name} -> {c.Name}"
    ]
    |> List.distinct

let tests =
    testList
        "worker process exit"
        [
            testCase "nothing in Pyper.Core calls Process.WaitForExitAsync" (fun () ->
                Expect.isEmpty
                    (callersOf (set [ "WaitForExitAsync" ]))
                    "each call adds and removes an Exited handler: two at once may lose one, and hang")

            testCase "only ProcessExit subscribes to Process.Exited, once per process" (fun () ->
                let callers = callersOf (set [ "add_Exited"; "remove_Exited" ])
                Expect.isNonEmpty callers "the scan finds ProcessExit's subscription"

                Expect.all
                    callers
                    (fun c -> c.StartsWith "Pyper.ProcessExit" && c.EndsWith "add_Exited")
                    $"subscribers: %A{callers}")

            testCase "many waits at once on one process all see its exit, and its handler runs once" (fun () ->
                let proc =
                    Process.Start(ProcessStartInfo("/bin/sh", "-c \"sleep 0.2; exit 3\"", UseShellExecute = false))

                try
                    let mutable calls = 0
                    let exit = ProcessExit(proc, (fun () -> Interlocked.Increment &calls |> ignore))

                    let waits = [| for _ in 1..64 -> Task.Run<bool>(fun () -> exit.Within 30_000) |]

                    Expect.isTrue (Task.WaitAll(waits |> Array.map (fun t -> t :> Task), 60_000)) "hang guard"
                    Expect.all waits (fun w -> w.Result) "every wait saw the exit"
                    Expect.isTrue exit.Task.IsCompleted "the exit task completed"
                    Expect.equal proc.ExitCode 3 "the process's own exit code"
                    Expect.equal calls 1 "the exit handler ran once"
                    Expect.isTrue (exit.Within(0).Result) "a wait after the exit returns at once"
                finally
                    proc.Dispose())
        ]
