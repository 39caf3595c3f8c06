/// The channel between a parent and its worker processes: who can connect, what is left behind,
/// which temp folders work, what the wire can make the parent build.
module Pyper.Tests.ChannelTests

open System
open System.Diagnostics
open System.IO
open System.Net.Sockets
open System.Runtime.InteropServices
open System.Threading
open System.Threading.Tasks
open Expecto
open Pyper
open Pyper.FSharp
open Pyper.Tests.Helpers
open Pyper.Tests.ProcessTests

[<DllImport("libc", EntryPoint = "umask")>]
extern uint32 private umask(uint32 mask)

/// Functions that worker processes run.
module Remote =
    let pid (_: int) = Environment.ProcessId
    let failAtThree (x: int) = if x = 3 then invalidOp "three" else x

/// Entries of `folder` that a process stage of process `pid` may have made.
let private entriesOf (pid: int) (folder: string) =
    Directory.GetFileSystemEntries(folder, $"pyper-{pid}-*") |> List.ofArray

/// A new empty folder under the temp folder (the caller deletes it).
let private newFolder (name: string) =
    Directory.CreateDirectory(Path.Combine(Path.GetTempPath(), $"channel-test-{name}-{Guid.NewGuid():N}")).FullName

/// The ProcessProbe, in `run` mode, under the given TMPDIR: its exit code and output.
let private probeRun (tmpdir: string) =
    use p = ProcessTests.startProbe [ "run" ] tmpdir

    withinGuard "the probe's run" (fun () ->
        task {
            let! output = p.StandardOutput.ReadToEndAsync()
            do! p.WaitForExitAsync()
            return p.ExitCode, output.Trim()
        })

/// Reads what a client socket receives until the other side closes it (a reset counts as closed).
let private received (client: Socket) =
    withinGuard "the foreign client's read" (fun () ->
        task {
            let buffer = Array.zeroCreate<byte> 4096
            let mutable total = 0
            let mutable go = true

            while go do
                try
                    let! n = client.ReceiveAsync(Memory buffer)
                    total <- total + n
                    go <- n > 0
                with :? SocketException ->
                    go <- false

            return total
        })

let tests =
    testList
        "process channel"
        [
            processTest "a foreign client that connects first gets nothing, and the worker gets the stage" (fun () ->
                withKeepAlive 60_000 (fun () ->
                    let mutable foreign: Socket = null

                    // Connects before the worker is even started, and offers a forged result.
                    let intrude (address: string) =
                        foreign <- WorkerChannel.connect address
                        use stream = new NetworkStream(foreign, false)
                        let forged = Array.append (Array.zeroCreate 8) ("[666]"B)
                        Wire.writeSync stream Wire.Results forged

                    let w =
                        withinGuard "the worker to connect" (fun () ->
                            WorkerPool.startWith intrude "channel" CancellationToken.None)

                    use foreign = foreign
                    let worker = w.Process.Id
                    WorkerPool.release w // parked: the next process stage takes it
                    let p = Stage.map (Remote.pid, workers = 1, multiprocess = true)
                    let results = collect (Pipeline.toSeqFrom [ 1..3 ] p)
                    Expect.equal results [ worker; worker; worker ] "the started worker ran the stage"
                    Expect.equal (received foreign) 0 "the foreign client received nothing and was closed"))

            processTest
                "nothing is left in the temp folder while workers are parked, after a failed run or retired"
                (fun () ->
                    let mine () =
                        entriesOf Environment.ProcessId (Path.GetTempPath())

                    let p = Stage.map (Remote.failAtThree, workers = 2, multiprocess = true)
                    Expect.equal (sorted (collect (Pipeline.toSeqFrom [ 4..9 ] p))) [ 4..9 ] "a clean run"
                    Expect.isGreaterThan (WorkerPool.idleCount ()) 0 "its workers are parked"
                    Expect.equal (mine ()) [] "no entry while workers are parked and connected"
                    let e = catchExn (fun () -> collect (Pipeline.toSeqFrom [ 1..9 ] p) |> ignore)
                    Expect.isTrue (e :? InvalidOperationException) "the run failed"
                    Expect.equal (mine ()) [] "no entry after a failed run"
                    WorkerPool.retireIdle ()
                    Expect.equal (mine ()) [] "no entry once retired")

            testCase "a long or a missing TMPDIR does not stop process stages" (fun () ->
                let long =
                    let parent = newFolder "long"
                    Directory.CreateDirectory(Path.Combine(parent, String('d', 150))).FullName

                try
                    Expect.isGreaterThan long.Length 108 "longer than any socket path"
                    Expect.equal (probeRun long) (0, "165") "a run under a long TMPDIR"
                    Expect.equal (Directory.GetFileSystemEntries(long, "pyper-*")) [||] "nothing left in it"
                    let missing = Path.Combine(Path.GetTempPath(), $"missing-{Guid.NewGuid():N}")
                    Expect.equal (probeRun missing) (0, "165") "a run under a missing TMPDIR"
                    Expect.isFalse (Directory.Exists missing) "not created"
                finally
                    Directory.Delete(Path.GetDirectoryName long, true))

            testCase "Linux: the channel is an abstract socket, no file at all" (fun () ->
                Expect.equal (WorkerChannel.defaultKind ()) Abstract "the default on Linux"
                use l = WorkerChannel.listen Abstract
                Expect.stringStarts l.Address "@pyper-" "an abstract name"
                let name = l.Address.Substring 1

                Expect.isTrue
                    (File.ReadAllLines "/proc/net/unix"
                     |> Array.exists (fun line -> line.EndsWith("@" + name)))
                    "listening in the abstract namespace"

                Expect.equal (entriesOf Environment.ProcessId (Path.GetTempPath())) [] "no file")

            testCase
                "elsewhere: the socket is in a new folder of mode 0700 whatever the umask, gone once connected"
                (fun () ->
                    let folder = newFolder "private"

                    try
                        let old = umask 0u // the loosest umask: a bound socket file would be srwxrwxrwx

                        let l =
                            try
                                WorkerChannel.listen (InFolder folder)
                            finally
                                umask old |> ignore

                        use l = l
                        let dir = Path.GetDirectoryName l.Address
                        Expect.equal (Path.GetDirectoryName dir) folder "in a folder of its own"

                        Expect.equal
                            (File.GetUnixFileMode dir)
                            (UnixFileMode.UserRead ||| UnixFileMode.UserWrite ||| UnixFileMode.UserExecute)
                            "mode 0700"

                        use client = WorkerChannel.connect l.Address

                        let accepted =
                            withinGuard "accept" (fun () ->
                                l.AcceptFrom(Environment.ProcessId, CancellationToken.None))

                        use accepted = accepted
                        Expect.isFalse (Directory.Exists dir) "the folder goes once the worker is in"
                        Expect.equal (Directory.GetFileSystemEntries folder) [||] "nothing left"
                    finally
                        Directory.Delete(folder, true))

            testCase "elsewhere: a clear message for a missing or too long temp folder" (fun () ->
                let missing = Path.Combine(Path.GetTempPath(), $"missing-{Guid.NewGuid():N}")
                let e = catchExn (fun () -> WorkerChannel.listen (InFolder missing) |> ignore)
                Expect.isTrue (e :? IOException) "an IOException"
                Expect.stringContains e.Message missing "names the folder"
                Expect.stringContains e.Message "does not exist" "says what is wrong"
                let folder = newFolder "long"

                try
                    let long =
                        Directory.CreateDirectory(Path.Combine(folder, String('d', 100))).FullName

                    let e = catchExn (fun () -> WorkerChannel.listen (InFolder long) |> ignore)
                    Expect.isTrue (e :? IOException) "an IOException"
                    Expect.stringContains e.Message "set TMPDIR to a shorter folder" "says what to do"
                    Expect.equal (Directory.GetFileSystemEntries long) [||] "its folder is removed again"
                finally
                    Directory.Delete(folder, true))

            testCase "elsewhere: a dead parent's folder is removed by the next one" (fun () ->
                let folder = newFolder "sweep"

                try
                    use dead = Process.Start("true")
                    Expect.isTrue (dead.WaitForExit hangGuard) "true has exited"

                    let stale =
                        Directory.CreateDirectory(Path.Combine(folder, $"pyper-{dead.Id}-0123")).FullName

                    File.WriteAllText(Path.Combine(stale, "s"), "")
                    File.WriteAllText(Path.Combine(folder, $"pyper-{dead.Id}-0456.sock"), "")

                    let live =
                        Directory.CreateDirectory(Path.Combine(folder, $"pyper-{Environment.ProcessId}-0789")).FullName

                    WorkerChannel.sweep folder

                    Expect.equal
                        (Directory.GetFileSystemEntries folder)
                        [| live |]
                        "only the live parent's entry is left"
                finally
                    Directory.Delete(folder, true))

            testCase "the wire names exception types, the parent builds only exceptions" (fun () ->
                // A worker's failure frame for an exception, then the same frame naming another type.
                let captured =
                    let frame =
                        RemoteFailures.encode (InvalidOperationException "http://example.invalid/")

                    use r = new IO.BinaryReader(new IO.MemoryStream(frame), Text.Encoding.UTF8)
                    RemoteFailures.read r

                let failure (t: Type) =
                    RemoteFailures.toBytes
                        { captured with
                            Type = t.AssemblyQualifiedName
                        }

                let e =
                    RemoteExceptions.decode "s" typeof<int> (ReadOnlySpan(failure typeof<InvalidOperationException>))

                Expect.equal (e.GetType()) typeof<InvalidOperationException> "an exception type is rebuilt"
                // Uri has a (string) constructor too, but it is no exception: it is never built.
                let e = RemoteExceptions.decode "s" typeof<int> (ReadOnlySpan(failure typeof<Uri>))
                Expect.isTrue (e :? RemoteStageException) "a non-exception type comes as RemoteStageException"
                Expect.equal (e :?> RemoteStageException).RemoteType typeof<Uri>.AssemblyQualifiedName "named")
        ]
