namespace Pyper.Distributed

open System
open System.Runtime.ExceptionServices
open System.Threading
open System.Threading.Tasks
open Pyper

/// A distributed map stage's loop on the parent's side under a timeout, failure policy or rate
/// limit: the runtime's shared policy loop (`Policies.mapEach`, the rules of `PolicyRules`), each
/// item sent alone, as a batch of one.
module internal ParentPolicy =
    /// The stage's own trouble (its queues lost, the server gone, a batch past MaxDeliver), not the
    /// item's: raised as a StateFailureException inside a call so that no policy takes it for the
    /// item's failure, and unwrapped when the loop ends.
    let private stageTrouble (e: exn) : exn =
        match e with
        | :? OperationCanceledException -> e
        | e -> StateFailureException e

    /// Runs the stage's worker loop under `p`. `send` publishes the first n items of an array as one
    /// batch and waits for its reply, `receive` reads a reply's results (or raises the item's
    /// failure, rebuilt). What fails the item, for the policy: its function threw in the worker,
    /// the item or its result could not cross, or (with a timeout) its result did not come back
    /// within the timeout, measured from its publication: the parent then stops waiting and drops
    /// the late result, and the worker gives the call up (see `WorkerLoop`). A worker process that
    /// dies mid-item is not a failure: JetStream redelivers the item to another worker.
    let loop<'a, 'b>
        (p: StagePolicy<'a>)
        (send: 'a[] -> int -> CancellationToken -> Task<byte[]>)
        (receive: byte[] -> 'b[] -> int -> int64)
        (env: WorkerEnv<'a, 'b>)
        : Task =
        let token = env.Ctx.Token
        let one = Array.zeroCreate<'a> 1
        let out = Array.zeroCreate<'b> 1

        // Publishes the item (serialized before `send` returns its task) and waits for its reply.
        let sent (x: 'a) (within: CancellationToken) : Task<byte[]> =
            one[0] <- x

            try
                send one 1 within
            finally
                one[0] <- Unchecked.defaultof<'a>

        let wait (reply: Task<byte[]>) : Task<byte[]> =
            task {
                try
                    return! reply
                with e ->
                    return raise (stageTrouble e)
            }

        let call (x: 'a) (position: int64) : Task<'b> =
            task {
                let! reply =
                    match p.Timeout with
                    | None -> wait (sent x token)
                    | Some t ->
                        task {
                            use cts = CancellationTokenSource.CreateLinkedTokenSource token
                            cts.CancelAfter t

                            try
                                return! wait (sent x cts.Token)
                            with :? OperationCanceledException as e when
                                cts.IsCancellationRequested && not token.IsCancellationRequested ->
                                p.Counts.AddTimedOut()
                                return raise (PolicyRules.timedOut env position t e)
                        }

                receive reply out 1 |> ignore
                let y = out[0]
                out[0] <- Unchecked.defaultof<'b>
                return y
            }

        task {
            try
                do! Policies.mapEach p true (fun () -> Task.CompletedTask) call env
            with :? StateFailureException as s ->
                ExceptionDispatchInfo.Throw s.InnerException
        }
