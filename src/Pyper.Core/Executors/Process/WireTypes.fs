namespace Pyper

open System
open System.Collections.Generic
open System.Reflection
open System.Text.Json
open System.Text.Json.Serialization.Metadata
open Microsoft.FSharp.Reflection

/// Which types can cross to and from a worker process exactly: checked when a process stage is
/// built, so that a value never loses data silently on the way (System.Text.Json skips what it
/// cannot see or set).
module internal WireTypes =
    let private simple =
        HashSet<Type>(
            [
                typeof<string>
                typeof<decimal>
                typeof<DateTime>
                typeof<DateTimeOffset>
                typeof<DateOnly>
                typeof<TimeOnly>
                typeof<TimeSpan>
                typeof<Guid>
                typeof<Uri>
                typeof<Version>
                typeof<Half>
                typeof<Int128>
                typeof<UInt128>
                typeof<JsonElement>
            ]
        )

    /// Dictionary keys System.Text.Json writes as property names and reads back.
    let private keyTypes =
        HashSet<Type>(
            [
                typeof<string>
                typeof<bool>
                typeof<byte>
                typeof<sbyte>
                typeof<char>
                typeof<int16>
                typeof<uint16>
                typeof<int>
                typeof<uint32>
                typeof<int64>
                typeof<uint64>
                typeof<single>
                typeof<double>
                typeof<decimal>
                typeof<Guid>
                typeof<DateTime>
                typeof<DateTimeOffset>
                typeof<DateOnly>
                typeof<TimeOnly>
                typeof<TimeSpan>
                typeof<Version>
                typeof<Uri>
            ]
        )

    let private instanceFields =
        BindingFlags.Instance
        ||| BindingFlags.Public
        ||| BindingFlags.NonPublic
        ||| BindingFlags.DeclaredOnly

    /// A field's name reduced to the member it stores: `<Name>k__BackingField`, `Name@`, `_name`, `name`.
    let private stem (field: string) =
        let n =
            if field.StartsWith "<" && field.Contains ">" then
                field.Substring(1, field.IndexOf '>' - 1)
            else
                field.TrimEnd('@').TrimStart('_')

        n.ToLowerInvariant()

    /// Deserializing `json` as `t` fails for lack of a way to create a `t` (not for the probe's content).
    let private cannotCreate (t: Type) (json: string) =
        try
            JsonSerializer.Deserialize(json, t, Wire.options) |> ignore
            None
        with
        | :? NotSupportedException
        | :? InvalidOperationException as e -> Some e.Message
        | _ -> None

    /// Why values of `t` would not arrive as they were sent, or None. `seen` breaks cycles.
    let rec private problem (seen: HashSet<Type>) (t: Type) : (Type * string) option =
        let inner (ts: Type seq) = ts |> Seq.tryPick (problem seen)

        if not (seen.Add t) then
            None
        elif t.IsPointer || t.IsByRef || t.IsByRefLike then
            Some(t, "pointers, by-ref and ref struct types cannot be serialized")
        elif typeof<Delegate>.IsAssignableFrom t then
            Some(t, "a delegate is code, not data")
        elif
            t.IsGenericType
            && t.GetGenericTypeDefinition() = typedefof<FSharpFunc<int, int>>
            || (not (isNull t.BaseType)
                && t.BaseType.IsGenericType
                && t.BaseType.GetGenericTypeDefinition() = typedefof<FSharpFunc<int, int>>)
        then
            Some(t, "an F# function value is code, not data")
        elif t = typeof<obj> then
            Some(t, "the receiving side cannot know the value's type (it would get a JsonElement)")
        elif t.ContainsGenericParameters then
            Some(t, "an open generic type")
        elif t = typeof<IntPtr> || t = typeof<UIntPtr> then
            Some(t, "a native pointer means nothing in another process")
        elif typeof<MemberInfo>.IsAssignableFrom t || typeof<Assembly>.IsAssignableFrom t then
            Some(t, "a reflection object cannot be serialized")
        elif
            t.IsGenericType
            && (t.GetGenericTypeDefinition() = typedefof<Stack<int>>
                || t.GetGenericTypeDefinition() = typedefof<Collections.Concurrent.ConcurrentStack<int>>)
        then
            Some(t, "a stack comes back in reverse order")
        elif t.IsPrimitive || t.IsEnum || simple.Contains t then
            None
        elif t.IsGenericType && t.GetGenericTypeDefinition() = typedefof<Nullable<int>> then
            inner (t.GetGenericArguments())
        elif t.IsArray then
            if t.GetArrayRank() > 1 then
                Some(t, "multi-dimensional arrays are not supported (use an array of arrays)")
            else
                inner [ t.GetElementType() ]
        elif Wire.isFSharpConverted t then
            if FSharpType.IsTuple t then
                inner (FSharpType.GetTupleElements t)
            elif FSharpType.IsRecord(t, true) then
                inner (FSharpType.GetRecordFields(t, true) |> Seq.map (fun p -> p.PropertyType))
            elif FSharpType.IsUnion(t, true) then
                FSharpType.GetUnionCases(t, true)
                |> Seq.collect (fun c -> c.GetFields() |> Seq.map (fun p -> p.PropertyType))
                |> inner
            else
                inner (t.GetGenericArguments()) // maps and sets
        else
            let info =
                try
                    Ok(Wire.options.GetTypeInfo t)
                with e ->
                    Error e.Message

            match info with
            | Error why -> Some(t, why)
            | Ok info ->
                match info.Kind with
                | JsonTypeInfoKind.None -> inner (t.GetGenericArguments())
                | JsonTypeInfoKind.Enumerable ->
                    match cannotCreate t "[]" with
                    | Some why -> Some(t, why)
                    | None -> inner [ info.ElementType ]
                | JsonTypeInfoKind.Dictionary ->
                    if not (keyTypes.Contains info.KeyType || info.KeyType.IsEnum) then
                        Some(t, $"its keys ({info.KeyType}) cannot be JSON property names")
                    else
                        match cannotCreate t "{}" with
                        | Some why -> Some(t, why)
                        | None -> inner [ info.ElementType ]
                | _ -> objectProblem seen t info

    /// A class or struct: it must be creatable, and every bit of its state must be written and read back.
    and private objectProblem seen t (info: JsonTypeInfo) =
        match cannotCreate t "{}" with
        | Some why -> Some(t, $"the serializer cannot create one ({why})")
        | None ->
            let restorable =
                info.Properties
                |> Seq.filter (fun p ->
                    not (isNull p.Get) && (not (isNull p.Set) || not (isNull p.AssociatedParameter)))
                |> Seq.map (fun p -> p.Name.ToLowerInvariant())
                |> HashSet

            // Member names as declared (a JSON name may be renamed by an attribute).
            for p in info.Properties do
                match p.AttributeProvider with
                | :? MemberInfo as m when restorable.Contains(p.Name.ToLowerInvariant()) ->
                    restorable.Add(m.Name.ToLowerInvariant()) |> ignore
                | _ -> ()

            let lost =
                info.Properties
                |> Seq.tryFind (fun p -> not (isNull p.Get) && isNull p.Set && isNull p.AssociatedParameter)
                |> Option.filter (fun p ->
                    // A get-only property loses data only if it stores some (a computed one does not).
                    let mutable b = t

                    let fields =
                        seq {
                            while not (isNull b) && b <> typeof<obj> && b <> typeof<ValueType> do
                                yield! b.GetFields instanceFields
                                b <- b.BaseType
                        }

                    fields |> Seq.exists (fun f -> stem f.Name = p.Name.ToLowerInvariant()))

            match lost with
            | Some p ->
                Some(
                    t,
                    $"its property {p.Name} has no setter and no matching constructor parameter, so its value would be lost"
                )
            | None ->
                let mutable b = t
                let mutable hidden = None

                while hidden.IsNone && not (isNull b) && b <> typeof<obj> && b <> typeof<ValueType> do
                    hidden <-
                        b.GetFields instanceFields
                        |> Array.tryFind (fun f -> not (restorable.Contains(stem f.Name)))

                    b <- b.BaseType

                match hidden with
                | Some f ->
                    Some(
                        t,
                        $"its field {f.Name} is neither a public field nor stored by a public property with a setter or constructor parameter, so its value would be lost"
                    )
                | None ->
                    info.Properties
                    |> Seq.map (fun p -> p.PropertyType)
                    |> Seq.tryPick (problem seen)

    /// Throws an ArgumentException naming the stage when values of `t` (the function's `role`)
    /// cannot cross to or from a worker process exactly.
    let check (stage: string) (role: string) (t: Type) =
        match problem (HashSet()) t with
        | None -> ()
        | Some(bad, why) ->
            let where = if bad = t then "" else $" (in {t})"

            raise (
                ArgumentException(
                    $"{stage}: cannot run in worker processes: the function's {role} type {bad}{where} cannot cross the process boundary: {why}. Use a type of public properties or fields with setters or constructor parameters (or F# records, unions, tuples, arrays, lists, dictionaries), or run the stage on threads (without multiprocess).",
                    "f"
                )
            )
