using System;
using System.Collections.Generic;
using System.Linq;

namespace Pyper;

/// <summary>Where a failure surfaced by a run came from.</summary>
public static class PipelineErrors
{
    /// <summary>The name of the stage whose worker threw <paramref name="error"/> ("source" for the input stream), or null.</summary>
    /// <param name="error">An exception rethrown by a run.</param>
    public static string? PipelineStage(this Exception error)
    {
        ArgumentNullException.ThrowIfNull(error);
        return FSharp.PipelineError.stage(error) is { } stage ? stage.Value : null;
    }

    /// <summary>Failures of other workers that happened after <paramref name="error"/>, the first, had stopped the run.</summary>
    /// <param name="error">An exception rethrown by a run.</param>
    public static IReadOnlyList<Exception> OtherPipelineErrors(this Exception error)
    {
        ArgumentNullException.ThrowIfNull(error);
        return FSharp.PipelineError.others(error).ToArray();
    }
}
