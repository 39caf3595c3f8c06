namespace Pyper

open System

/// A failure in a worker process that cannot be rethrown as its original type: an exception
/// whose type the parent cannot re-create, or a worker process that crashed or was killed.
[<Sealed>]
type RemoteStageException =
    inherit Exception

    internal new:
        message: string * remoteType: string * remoteStackTrace: string * exitCode: Nullable<int> ->
            RemoteStageException

    /// The full name of the exception's type in the worker process ("" when the worker crashed).
    member RemoteType: string
    /// The stack trace in the worker process ("" when the worker crashed).
    member RemoteStackTrace: string
    /// The worker process's exit code when it crashed or was killed, else null.
    member ExitCode: Nullable<int>
