namespace Pyper

open System.Collections.Generic

/// Idle resources kept for reuse (parked threads, parked worker processes): the most recently
/// parked is taken first, so the coldest ones reach their keep-alive and leave. Its owner (one
/// module-level instance per kind of resource) is the only one that parks, takes or removes; every
/// member is thread-safe.
[<Sealed>]
type internal ParkingLot<'T when 'T: null>() =
    let sync = obj ()
    let idle = List<'T>()

    /// Parks an idle resource.
    member _.Park(x: 'T) = lock sync (fun () -> idle.Add x)

    /// The most recently parked resource, taken out of the lot, or null when none is parked.
    member _.TryTake() : 'T =
        lock sync (fun () ->
            if idle.Count = 0 then
                null
            else
                let x = idle[idle.Count - 1]
                idle.RemoveAt(idle.Count - 1)
                x)

    /// Takes `x` out of the lot; false when someone took it first.
    member _.Remove(x: 'T) = lock sync (fun () -> idle.Remove x)

    /// Takes every parked resource out of the lot.
    member _.TakeAll() : 'T[] =
        lock sync (fun () ->
            let all = idle.ToArray()
            idle.Clear()
            all)

    /// The number of parked resources.
    member _.Count = lock sync (fun () -> idle.Count)
