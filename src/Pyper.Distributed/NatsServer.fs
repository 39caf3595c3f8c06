namespace Pyper.Distributed

open System
open NATS.Client.Core

[<Sealed>]
type NatsServer
    private (options: NatsOpts, ackWait: TimeSpan, maxDeliver: int, giveUpAfter: TimeSpan, inactiveThreshold: TimeSpan)
    =
    static let check (options: NatsOpts) =
        if isNull (box options) then
            raise (ArgumentNullException("options", "The NATS client options are null."))

        if String.IsNullOrWhiteSpace options.Url then
            raise (ArgumentException("The NATS server's URL must not be empty, e.g. nats://127.0.0.1:4222.", "url"))

        options

    new(options: NatsOpts) =
        NatsServer(check options, TimeSpan.FromSeconds 30.0, 5, TimeSpan.FromSeconds 10.0, TimeSpan.FromHours 1.0)

    new(url: string) =
        if String.IsNullOrWhiteSpace url then
            raise (ArgumentException("The NATS server's URL must not be empty, e.g. nats://127.0.0.1:4222.", "url"))

        NatsServer(NatsOpts(Url = url))

    member _.Url = options.Url
    member _.Options = options
    member _.AckWait = ackWait
    member _.MaxDeliver = maxDeliver
    member _.GiveUpAfter = giveUpAfter
    member _.InactiveThreshold = inactiveThreshold

    member _.WithAckWait(ackWait: TimeSpan) =
        if ackWait <= TimeSpan.Zero then
            raise (ArgumentOutOfRangeException("ackWait", ackWait, "AckWait must be positive."))

        NatsServer(options, ackWait, maxDeliver, giveUpAfter, inactiveThreshold)

    member _.WithMaxDeliver(maxDeliver: int) =
        if maxDeliver < 1 then
            raise (ArgumentOutOfRangeException("maxDeliver", maxDeliver, "MaxDeliver must be at least 1."))

        NatsServer(options, ackWait, maxDeliver, giveUpAfter, inactiveThreshold)

    member _.WithGiveUpAfter(giveUpAfter: TimeSpan) =
        if giveUpAfter <= TimeSpan.Zero then
            raise (ArgumentOutOfRangeException("giveUpAfter", giveUpAfter, "GiveUpAfter must be positive."))

        NatsServer(options, ackWait, maxDeliver, giveUpAfter, inactiveThreshold)

    member _.WithInactiveThreshold(inactiveThreshold: TimeSpan) =
        if inactiveThreshold < TimeSpan.FromSeconds 1.0 then
            raise (
                ArgumentOutOfRangeException(
                    "inactiveThreshold",
                    inactiveThreshold,
                    "InactiveThreshold must be at least one second."
                )
            )

        NatsServer(options, ackWait, maxDeliver, giveUpAfter, inactiveThreshold)

    override _.ToString() = options.Url
