namespace Pyper

open System
open System.Collections.Generic
open System.Threading
open System.Threading.Tasks
open System.Threading.Tasks

/// Lets the batches of an ordered stage leave in the order they were taken.
[<Sealed; AllowNullLiteral>]
type internal Turnstile() =
    let sync = obj ()
    let waiters = Collections.Generic.Dictionary<int64, TaskCompletionSource>()
    let mutable current = 0L
    let mutable aborted = false

    /// Null when it is `ticket`'s turn, else a task to wait on before asking again.
    member _.WaitTurn(ticket: int64) : Task =
        lock sync (fun () ->
            if aborted then
                raise (RunAbortedException())

            if ticket = current then
                null
            else
                match waiters.TryGetValue ticket with
                | true, w -> w.Task
                | _ ->
                    let w = TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)
                    waiters[ticket] <- w
                    w.Task)

    /// The current ticket's batch has left: the next one may go.
    member _.Advance() =
        let mutable wake = null

        lock sync (fun () ->
            current <- current + 1L

            match waiters.TryGetValue current with
            | true, w ->
                waiters.Remove current |> ignore
                wake <- w
            | _ -> ())

        if not (isNull wake) then
            wake.TrySetResult() |> ignore

    interface IAbortable with
        member _.Abort() =
            let all =
                lock sync (fun () ->
                    aborted <- true
                    let all = Seq.toArray waiters.Values
                    waiters.Clear()
                    all)

            for w in all do
                w.TrySetResult() |> ignore
