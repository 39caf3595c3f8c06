namespace Pyper.Distributed

open System
open NATS.Client.Core

/// The NATS JetStream server that a distributed stage's items travel through, how to reach it
/// (URL, credentials and TLS: the client's own `NatsOpts`, passed through), and the delivery
/// settings of the stage's work queue. Immutable: the `With...` methods return a copy.
[<Sealed>]
type NatsServer =
    /// A server at `url` (e.g. "nats://127.0.0.1:4222"), with the client's default options.
    new: url: string -> NatsServer
    /// A server reached with the client's own options (`Url`, `AuthOpts` for a user and password,
    /// a token or a credentials file, `TlsOpts` for TLS).
    new: options: NatsOpts -> NatsServer
    /// The server's URL.
    member Url: string
    /// The client options every connection to the server uses.
    member Options: NatsOpts
    /// How long a worker may hold a batch without a sign of life before the server gives it to
    /// another worker (a running batch sends progress every third of it). Default 30 s.
    member AckWait: TimeSpan
    /// How many times one batch may be delivered (workers that die holding it) before the run fails. Default 5.
    member MaxDeliver: int
    /// How long the server may be unreachable during a run before the run fails. Default 10 s.
    member GiveUpAfter: TimeSpan
    /// How long the server keeps a run's queue once no worker has asked it for work: then the
    /// server deletes it (NATS's `InactiveThreshold`), and the run, if its parent still waits, fails
    /// with an IOException saying so. This is what cleans up after a parent that died without
    /// deleting its queue. It must be longer than the longest time every worker may be busy with a
    /// batch at once (a worker asks for work between batches). Default 1 hour.
    member InactiveThreshold: TimeSpan
    /// A copy with another `AckWait` (positive).
    member WithAckWait: ackWait: TimeSpan -> NatsServer
    /// A copy with another `MaxDeliver` (at least 1).
    member WithMaxDeliver: maxDeliver: int -> NatsServer
    /// A copy with another `GiveUpAfter` (positive).
    member WithGiveUpAfter: giveUpAfter: TimeSpan -> NatsServer
    /// A copy with another `InactiveThreshold` (at least one second).
    member WithInactiveThreshold: inactiveThreshold: TimeSpan -> NatsServer
    /// The URL.
    override ToString: unit -> string
