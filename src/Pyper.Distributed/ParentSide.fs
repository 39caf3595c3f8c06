namespace Pyper.Distributed

open System
open System.Collections.Concurrent
open System.Diagnostics
open System.IO
open System.Runtime.CompilerServices
open System.Runtime.ExceptionServices
open System.Text.Json
open System.Threading
open System.Threading.Tasks
open NATS.Client.Core
open NATS.Client.JetStream
open NATS.Client.JetStream.Models
open Pyper

/// The stages' shared remote state: one RemoteStage per stage and run, made by its first worker
/// loop and closed by its last.
module internal RemoteStages =
    [<AllowNullLiteral>]
    type private Shared(start: Lazy<Task<RemoteStage>>) =
        member val Users = 0 with get, set
        member _.Stage = start

    let private table = ConditionalWeakTable<obj, Shared>()

    let private enter (key: obj) (start: unit -> Task<RemoteStage>) =
        lock table (fun () ->
            let shared =
                match table.TryGetValue key with
                | true, s -> s
                | _ ->
                    let s = Shared(lazy (start ()))
                    table.Add(key, s)
                    s

            shared.Users <- shared.Users + 1
            shared)

    let private leave (key: obj) (shared: Shared) : Task =
        let last =
            lock table (fun () ->
                shared.Users <- shared.Users - 1

                if shared.Users = 0 then
                    table.Remove key |> ignore
                    true
                else
                    false)

        if last && shared.Stage.IsValueCreated then
            task {
                try
                    let! remote = shared.Stage.Value
                    do! remote.DisposeAsync()
                with _ ->
                    () // it never started: its own start cleaned up
            }
        else
            Task.CompletedTask

    /// Runs `body` with the stage's RemoteStage (started by the first caller), then leaves it
    /// (the last one out closes it) — also when `body` fails.
    let using (key: obj) (start: unit -> Task<RemoteStage>) (body: RemoteStage -> Task) : Task =
        task {
            let shared = enter key start
            let mutable failure: ExceptionDispatchInfo = null

            try
                let! remote = shared.Stage.Value
                do! body remote
            with e ->
                failure <- ExceptionDispatchInfo.Capture e

            do! leave key shared

            if not (isNull failure) then
                failure.Throw()
        }

/// A distributed map stage's worker loop on the parent's side: `Loops.mapBatches` with a batch
/// runner that sends each batch through the stage's RemoteStage, or, under a policy, `Policies.mapEach`
/// sending each item alone (see `ParentPolicy`).
module internal ParentSide =
    let body<'a, 'b>
        (server: NatsServer)
        (workers: int)
        (fref: FunctionRef)
        (policy: StagePolicy<'a> option)
        (bound: byte[])
        (state: FunctionRef[])
        (env: WorkerEnv<'a, 'b>)
        : Task =
        RemoteStages.using
            env
            (fun () ->
                RemoteStage.Start(
                    server,
                    env.Name,
                    fref,
                    workers,
                    policy |> Option.bind (fun p -> p.Timeout),
                    bound,
                    state
                ))
            (fun remote ->
                WireWarmUp.arrays<'a, 'b>()
                let token = env.Ctx.Token

                // Sends the first `n` items of `input` as one batch (a JSON array) and waits for its reply.
                let send (input: 'a[]) (n: int) (token: CancellationToken) : Task<byte[]> =
                    let items =
                        try
                            JsonSerializer.SerializeToUtf8Bytes(Array.sub input 0 n, Wire.options)
                        with e ->
                            raise (
                                NotSupportedException(
                                    $"Stage '{env.Name}': an item of type {typeof<'a>} cannot be sent to a worker process: {e.Message}",
                                    e
                                )
                            )

                    remote.Run(items, token)

                // A batch's reply: its `n` results into `output` and the function's time in the worker
                // (Stopwatch ticks), or the batch's failure, rebuilt, raised.
                let receive (reply: byte[]) (output: 'b[]) (n: int) : int64 =
                    let kind, _ = Protocol.header reply

                    if kind = Protocol.Results then
                        // The function's time in the worker (TimeSpan ticks, 8 bytes), then the results.
                        let cost =
                            System.Buffers.Binary.BinaryPrimitives.ReadInt64LittleEndian(ReadOnlySpan(reply, 10, 8))

                        let results =
                            JsonSerializer.Deserialize<'b[]>(ReadOnlySpan(reply, 18, reply.Length - 18), Wire.options)

                        Array.blit results 0 output 0 n
                        cost * Stopwatch.Frequency / TimeSpan.TicksPerSecond
                    else
                        let e =
                            RemoteExceptions.decode env.Name typeof<'b> (ReadOnlySpan(reply, 10, reply.Length - 10))

                        // A worker's state failed (`init`): the run fails whatever the policy (the
                        // policy loop lets a StateFailureException through and unwraps it).
                        if kind = Protocol.StateFailure && policy.IsSome then
                            raise (StateFailureException e)

                        raise e

                match policy with
                | None ->
                    let runBatch (input: 'a[]) (n: int) (output: 'b[]) : Task<int64> =
                        task {
                            let! reply = send input n token
                            return receive reply output n
                        }

                    Loops.mapBatches runBatch env
                | Some p -> ParentPolicy.loop p send receive env)

/// The distributed executor: each of a stage's workers is an awaiting loop on the thread pool that
/// sends batches through the stage's JetStream streams (`ParentSide.body`) to whichever worker
/// processes serve it, on any machine.
[<Sealed>]
type internal DistributedExecutor<'a, 'b>
    (
        server: NatsServer,
        workers: int,
        fref: FunctionRef,
        policy: StagePolicy<'a> option,
        bound: byte[],
        state: FunctionRef[]
    ) =
    inherit StageExecutor<'a, 'b>()
    override _.Kind = Executor.Distributed
    override _.Quantum = Sizer.RemoteQuantum

    override _.Start(env, ended) =
        env.Ctx.StartTask((fun () -> ParentSide.body server workers fref policy bound state env), ended)
