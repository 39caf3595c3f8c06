namespace Pyper

open System.Threading.Tasks

/// The async executor: each worker is an awaiting stage loop on the .NET thread pool, for Task,
/// ValueTask and F# Async functions and async streams.
[<Sealed>]
type internal AsyncExecutor<'a, 'b>(loop: WorkerEnv<'a, 'b> -> Task) =
    inherit StageExecutor<'a, 'b>()
    override _.Kind = Executor.Async
    override _.Quantum = Sizer.InProcessQuantum

    override _.Start(env, ended) =
        env.Ctx.StartTask((fun () -> loop env), ended)
