namespace Pyper

open System

[<Sealed>]
type RemoteStageException
    internal (message: string, remoteType: string, remoteStackTrace: string, exitCode: Nullable<int>) =
    inherit Exception(message)
    member _.RemoteType = remoteType
    member _.RemoteStackTrace = remoteStackTrace
    member _.ExitCode = exitCode
