namespace Pyper


/// The thread executor: each worker is a dedicated thread (parked between runs, see
/// `DedicatedThreads`) running a blocking stage loop, so blocking functions never starve the
/// .NET thread pool and waiting allocates nothing.
[<Sealed>]
type internal ThreadExecutor<'a, 'b>(loop: WorkerEnv<'a, 'b> -> unit) =
    inherit StageExecutor<'a, 'b>()
    override _.Kind = Executor.Thread
    override _.Quantum = Sizer.InProcessQuantum

    override _.Start(env, ended) =
        env.Ctx.StartThread($"Pyper/{env.Name}/{env.Worker}", (fun () -> loop env), ended)
