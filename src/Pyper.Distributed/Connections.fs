namespace Pyper.Distributed

open System
open System.Runtime.CompilerServices
open System.Threading
open System.Threading.Tasks
open NATS.Client.Core

/// One connection per server's client options, shared by the runs of this process: a run leases it
/// and returns it, so back-to-back runs do not each pay a connection's handshake and set-up (a
/// few milliseconds of the parent's CPU). Once no run holds it, it is closed after `Linger`.
[<Sealed; AllowNullLiteral>]
type internal SharedConnection(conn: NatsConnection) =
    let sync = obj ()
    let mutable users = 0
    let mutable closed = false
    let mutable idle: Timer = null

    /// Lingering connections, held here until their timer closes them: a timer that nothing
    /// references may be collected before it fires (once the server's options are collected, the
    /// table no longer holds the connection), and the connection would then stay open.
    static let lingering =
        System.Collections.Concurrent.ConcurrentDictionary<SharedConnection, byte>()

    /// How long an unused connection stays open for the next run.
    static member Linger = TimeSpan.FromSeconds 2.0

    member _.Connection = conn

    /// Takes a reference, unless the connection is closed or not open (then false: connect anew).
    member this.TryLease() =
        lock sync (fun () ->
            if closed || conn.ConnectionState <> NatsConnectionState.Open then
                false
            else
                users <- users + 1

                if not (isNull idle) then
                    idle.Dispose()
                    idle <- null
                    lingering.TryRemove this |> ignore

                true)

    /// Gives a reference back; the last one starts the linger.
    member this.Return() =
        lock sync (fun () ->
            users <- users - 1

            if users = 0 && not closed then
                lingering[this] <- 0uy

                idle <-
                    new Timer((fun _ -> this.CloseIfIdle()), null, SharedConnection.Linger, Timeout.InfiniteTimeSpan))

    member private this.CloseIfIdle() =
        let close =
            lock sync (fun () ->
                lingering.TryRemove this |> ignore

                if users = 0 && not closed then
                    closed <- true

                    if not (isNull idle) then
                        idle.Dispose()
                        idle <- null

                    true
                else
                    false)

        if close then
            conn.DisposeAsync().AsTask() |> ignore

    /// Closes it once no run holds it (a connection that lost its server is replaced).
    member this.Retire() =
        lock sync (fun () ->
            if users = 0 && not closed then
                closed <- true
                conn.DisposeAsync().AsTask() |> ignore
            // else: the last Return starts the linger, which closes it
        )

/// The shared connections, by client options (a `NatsServer` and its `With...` copies share them).
module internal Connections =
    let private shared = ConditionalWeakTable<NatsOpts, SharedConnection>()
    let private sync = obj ()

    /// A leased connection to `server` (give it back with `SharedConnection.Return`), or an
    /// IOException naming its URL.
    let lease (server: NatsServer) (who: string) : Task<SharedConnection> =
        task {
            let existing =
                lock sync (fun () ->
                    match shared.TryGetValue server.Options with
                    | true, s when s.TryLease() -> s
                    | _ -> null)

            if not (isNull existing) then
                return existing
            else
                let! conn = Protocol.connect server who
                let s = SharedConnection(conn)
                s.TryLease() |> ignore

                lock sync (fun () ->
                    match shared.TryGetValue server.Options with
                    | true, old -> old.Retire()
                    | _ -> ()

                    shared.AddOrUpdate(server.Options, s))

                return s
        }
