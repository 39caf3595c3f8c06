namespace Pyper

[<RequireQualifiedAccess>]
module Telemetry =
    [<Literal>]
    let MeterName = Instruments.Name

    [<Literal>]
    let ActivitySourceName = Instruments.Name
