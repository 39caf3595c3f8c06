/// The README example's CPU-heavy step, compiled, so that worker processes can load it
/// (also when the pipeline is defined in an F# script).
module Readme.Steps

/// Heavy computation. Unlike Python's `_ = i*i`, the result is used, so the JIT cannot drop the loop.
let step3 (data: int) =
    let mutable acc = 0L

    for i in 0L .. 9_999_999L do
        acc <- acc + i * i

    // Console.WriteLine rather than printfn: F# printf's first call is costly in each fresh worker process.
    System.Console.WriteLine("Finished heavy computation {0} (checksum {1})", data, acc % 1000L)
    data
