namespace Pyper

open System
open System.Reflection
open System.Text.Json
open System.Threading
open Microsoft.FSharp.Reflection

/// Exceptions across the process boundary, in the parent: a worker's failure frame rebuilt as the
/// exception it was, where the parent can make one that says the same (nothing is loaded because
/// of the wire), else a RemoteStageException.
module internal RemoteExceptions =
    open RemoteFailures

    /// A type named by a worker, if an assembly of that name is already loaded here (nothing is
    /// loaded because of the wire).
    let private loadedType (name: string) : Type option =
        let loaded (n: AssemblyName) =
            AppDomain.CurrentDomain.GetAssemblies()
            |> Array.tryFind (fun a -> AssemblyName.ReferenceMatchesDefinition(n, a.GetName()))
            |> Option.toObj

        safe (fun () -> Option.ofObj (Type.GetType(name, Func<_, _> loaded, null, false))) None

    /// Plain values only (no object graph is created because of the wire).
    let private plain (v: RemoteValue) : obj option =
        match loadedType v.Type with
        | Some t when isPlain t ->
            safe (fun () -> Option.ofObj (JsonSerializer.Deserialize(v.Json, t, Wire.options))) None
        | _ -> None

    let private marker = "\u0001\u0002\u0003"

    /// The rebuilt exception has the properties the worker's had.
    let private sameDetails (f: RemoteFailure) (e: exn) =
        match e with
        | :? ArgumentOutOfRangeException as a when
            a.ParamName <> Option.toObj f.ParamName
            || a.ActualValue <> (f.ActualValue |> Option.bind plain |> Option.toObj)
            ->
            false
        | :? ArgumentException as a -> a.ParamName = Option.toObj f.ParamName
        | :? ObjectDisposedException as o -> o.ObjectName = Option.toObj f.ObjectName
        | _ -> true

    /// The exception made by `make` with the message that gives `f.Message` back (a constructor may
    /// decorate its message argument, as ArgumentException adds the parameter name), if any.
    let private attempt (f: RemoteFailure) (hasMessage: bool) (make: string -> exn) : exn option =
        let core =
            if not hasMessage then
                Some null
            else
                match safe (fun () -> Some (make marker).Message) None with
                | None -> None
                | Some probe ->
                    match probe.IndexOf marker with
                    | -1 -> Some f.Message
                    | i ->
                        let prefix, suffix = probe.Substring(0, i), probe.Substring(i + marker.Length)

                        if
                            f.Message.Length >= prefix.Length + suffix.Length
                            && f.Message.StartsWith(prefix, StringComparison.Ordinal)
                            && f.Message.EndsWith(suffix, StringComparison.Ordinal)
                        then
                            Some(f.Message.Substring(prefix.Length, f.Message.Length - prefix.Length - suffix.Length))
                        else
                            Some f.Message

        core
        |> Option.bind (fun m -> safe (fun () -> Some(make m)) None)
        |> Option.filter (fun e -> safe (fun () -> e.Message = f.Message && sameDetails f e) false)

    let rec private rebuild (f: RemoteFailure) : exn option =
        match loadedType f.Type with
        | Some t when
            typeof<exn>.IsAssignableFrom t
            && not t.IsAbstract
            && not t.ContainsGenericParameters
            ->
            let inner = f.Inner |> Option.map rebuildOrRemote |> Option.toObj
            let fsharp = fsharpException t f

            let e =
                match fsharp with
                | Some _ -> fsharp
                | None ->
                    t.GetConstructors()
                    |> Array.choose (fun c -> byConstructor f inner c)
                    |> Array.sortByDescending fst
                    |> Array.tryPick (fun (_, (hasMessage, make)) -> attempt f hasMessage make)

            e
            |> Option.map (fun e ->
                safe (fun () -> typeof<exn>.GetProperty("HResult").SetValue(e, f.HResult)) ()

                for entry in f.Data do
                    match plain entry.Value with
                    | Some v -> safe (fun () -> e.Data[entry.Key] <- v) ()
                    | None -> ()

                safe (fun () -> e.Data[ErrorKeys.RemoteStackTrace] <- f.StackTrace) ()
                e)
        | _ -> None

    /// An F# exception, from its fields.
    and private fsharpException (t: Type) (f: RemoteFailure) : exn option =
        match f.Fields with
        | Some values when safe (fun () -> FSharpType.IsExceptionRepresentation(t, true)) false ->
            let types =
                FSharpType.GetExceptionFields(t, true) |> Array.map (fun p -> p.PropertyType)

            let ctor = t.GetConstructor types

            if isNull ctor || types.Length <> values.Length then
                None
            else
                safe
                    (fun () ->
                        let args =
                            Array.map2
                                (fun (ty: Type) (v: RemoteValue) ->
                                    JsonSerializer.Deserialize(v.Json, ty, Wire.options))
                                types
                                (Array.ofList values)

                        Some(ctor.Invoke args :?> exn))
                    None
            |> Option.filter (fun e -> safe (fun () -> e.Message = f.Message) false)
        | _ -> None

    /// A constructor whose every parameter is known (message, paramName, objectName, actualValue,
    /// inner exception): its parameter count (richest first), whether it takes the message, and how to call it.
    and private byConstructor f (inner: exn) (c: ConstructorInfo) =
        let ps = c.GetParameters()

        // Each argument: whether it is the message, and its value given the message.
        let arg (p: ParameterInfo) : (bool * (string -> obj)) option =
            let name = p.Name.ToLowerInvariant()

            if p.ParameterType = typeof<string> then
                match name with
                | "message"
                | "msg" -> Some(true, box)
                | "paramname" -> Some(false, (fun _ -> box (Option.toObj f.ParamName)))
                | "objectname" -> Some(false, (fun _ -> box (Option.toObj f.ObjectName)))
                | _ when ps.Length = 1 -> Some(true, box)
                | _ -> None
            elif p.ParameterType = typeof<obj> && name = "actualvalue" then
                let v = f.ActualValue |> Option.bind plain |> Option.toObj
                Some(false, (fun _ -> v))
            elif p.ParameterType = typeof<exn> then
                Some(false, (fun _ -> box inner))
            else
                None

        let args = ps |> Array.map arg

        if args |> Array.forall Option.isSome then
            let args = args |> Array.map Option.get
            let takesMessage = args |> Array.exists fst

            let make (m: string) =
                c.Invoke(args |> Array.map (fun (_, a) -> a m)) :?> exn

            Some(ps.Length, (takesMessage, make))
        else
            None

    /// The rebuilt exception, or a RemoteStageException carrying the type, message (with the inner
    /// messages) and stack trace.
    and private rebuildOrRemote (f: RemoteFailure) : exn =
        match rebuild f with
        | Some e -> e
        | None ->
            let rec chain (f: RemoteFailure option) =
                match f with
                | None -> ""
                | Some f -> $" ---> {f.Type.Split(',')[0]}: {f.Message}{chain f.Inner}"

            RemoteStageException(
                $"{f.Type.Split(',')[0]}: {f.Message}{chain f.Inner}",
                f.Type,
                f.StackTrace,
                Nullable()
            )

    /// The exception failure `f` stands for, in stage `stage` whose results are `results`.
    let private ofFailure (stage: string) (results: Type) (f: RemoteFailure) : exn =
        if f.Results then
            NotSupportedException(
                $"Stage '{stage}': a result of type {results} cannot be sent back from a worker process: {f.Type.Split(',')[0]}: {f.Message}"
            )
        else
            match rebuild f with
            | Some e -> e
            | None ->
                match rebuildOrRemote f with
                | :? RemoteStageException as r ->
                    RemoteStageException($"Stage '{stage}': {r.Message}", f.Type, f.StackTrace, Nullable())
                | e -> e

    /// The exception a worker's failure payload stands for, in stage `stage` whose results are `results`.
    let decode (stage: string) (results: Type) (payload: ReadOnlySpan<byte>) : exn =
        use r =
            new IO.BinaryReader(new IO.MemoryStream(payload.ToArray()), Text.Encoding.UTF8)

        ofFailure stage results (read r)

    /// The exception a brief failure frame stands for (its type and message only), until the
    /// full frame comes.
    let decodeBrief (stage: string) (results: Type) (payload: byte[]) : exn =
        ofFailure stage results (readBrief payload)

    /// The parent's side of `RemoteFailures.warmUp`: rebuilds one exception once per process, on a
    /// pool thread, so that the first failure of a run stops it as fast as on threads.
    let warmUp =
        let once =
            lazy
                (ThreadPool.UnsafeQueueUserWorkItem(
                    (fun _ ->
                        let brief, frame =
                            try
                                raise (InvalidOperationException "warm-up")
                            with e ->
                                RemoteFailures.brief e, RemoteFailures.encode e

                        decodeBrief "warm-up" typeof<int> brief |> ignore
                        decode "warm-up" typeof<int> (ReadOnlySpan frame) |> ignore),
                    null
                 )
                 |> ignore)

        fun () -> once.Force()
