namespace Pyper

open System
open System.Reflection
open System.Threading

/// Where a process stage's function lives, so that a worker process can re-create it:
/// a method of a type in a compiled assembly, called on a fresh instance of the type
/// (a closure or lambda class that captures nothing) or statically.
type internal FunctionRef =
    {
        Assembly: string
        TypeToken: int
        MethodToken: int
        Instance: bool
        /// The type arguments of a generic type (assembly-qualified names), else empty.
        TypeArgs: string[]
        /// The type arguments of a generic method (assembly-qualified names), else empty.
        MethodArgs: string[]
    }

    /// As sent to a worker: plain text, so a worker's start-up needs no serializer set-up.
    /// Lines: type token, method token, instance, type arguments, method arguments (tab-separated), assembly.
    member r.Encode() =
        let args (a: string[]) = String.Join('\t', a)

        Text.Encoding.UTF8.GetBytes
            $"{r.TypeToken}\n{r.MethodToken}\n{r.Instance}\n{args r.TypeArgs}\n{args r.MethodArgs}\n{r.Assembly}"

    /// (Int32.Parse rather than F#'s `int`: one method instead of four to compile in a fresh worker process.)
    static member Decode(payload: byte[]) =
        let parts = Text.Encoding.UTF8.GetString(payload).Split('\n', 6)

        let args (s: string) = if s = "" then [||] else s.Split '\t'

        {
            TypeToken = Int32.Parse(parts[0], Globalization.CultureInfo.InvariantCulture)
            MethodToken = Int32.Parse(parts[1], Globalization.CultureInfo.InvariantCulture)
            Instance = bool.Parse parts[2]
            TypeArgs = args parts[3]
            MethodArgs = args parts[4]
            Assembly = parts[5]
        }

    /// The type and method, closed over their type arguments (in the worker).
    member r.Resolve(assembly: Assembly) : Type * MethodInfo =
        let load (names: string[]) =
            names |> Array.map (fun n -> Type.GetType(n, true))

        let t = assembly.ManifestModule.ResolveType r.TypeToken

        let t =
            if r.TypeArgs.Length = 0 then
                t
            else
                t.MakeGenericType(load r.TypeArgs)

        let m =
            if r.MethodToken = 0 then
                t.GetMethods()
                |> Array.find (fun m -> m.Name = "Invoke" && m.GetParameters().Length = 1)
            else
                let m = assembly.ManifestModule.ResolveMethod r.MethodToken

                let m =
                    if r.TypeArgs.Length = 0 then
                        m :?> MethodInfo
                    else
                        MethodBase.GetMethodFromHandle(m.MethodHandle, t.TypeHandle) :?> MethodInfo

                if r.MethodArgs.Length = 0 then
                    m
                else
                    m.MakeGenericMethod(load r.MethodArgs)

        t, m


/// Finds, in the parent, how a worker process can re-create a function; explains why not when it cannot.
module internal FunctionRefs =
    let private instanceFields =
        BindingFlags.Instance ||| BindingFlags.Public ||| BindingFlags.NonPublic

    let private loadable (a: Assembly) =
        not a.IsDynamic && not (String.IsNullOrEmpty a.Location)

    let private advice =
        "make it a module function or static method in a compiled assembly (in FSI: #r the assembly) that gets everything it needs from its input, or run the stage on threads (without multiprocess)"

    /// The static method a closure's Invoke only forwards to (`ldarg.1; [tail.] call m; ret`), if any.
    let private forwardee (closure: Type) : MethodInfo option =
        let invoke =
            closure.GetMethods(BindingFlags.Instance ||| BindingFlags.Public)
            |> Array.tryFind (fun m -> m.Name = "Invoke" && m.GetParameters().Length = 1)

        let il =
            try
                invoke
                |> Option.bind (fun m -> Option.ofObj (m.GetMethodBody()))
                |> Option.map (fun b -> b.GetILAsByteArray())
            with _ ->
                None

        let token =
            match il with
            | Some [| 0x03uy; 0x28uy; a; b; c; d; 0x2Auy |]
            | Some [| 0x03uy; 0xFEuy; 0x14uy; 0x28uy; a; b; c; d; 0x2Auy |] ->
                Some(BitConverter.ToInt32([| a; b; c; d |], 0))
            | _ -> None

        token
        |> Option.bind (fun t ->
            try
                match closure.Module.ResolveMethod t with
                | :? MethodInfo as m when
                    m.IsStatic
                    && not m.ContainsGenericParameters
                    && not m.DeclaringType.ContainsGenericParameters
                    && loadable m.Module.Assembly
                    ->
                    Some m
                | _ -> None
            with _ ->
                None)

    /// The type arguments of a closed generic type or method, as a worker loads them.
    let private names (args: Type[]) =
        args |> Array.map (fun a -> a.AssemblyQualifiedName)

    let private typeArgs (t: Type) =
        if t.IsGenericType then
            names (t.GetGenericArguments())
        else
            [||]

    let private ofMethod (m: MethodInfo) =
        {
            Assembly = m.Module.Assembly.Location
            TypeToken = m.DeclaringType.MetadataToken
            MethodToken = m.MetadataToken
            Instance = false
            TypeArgs = typeArgs m.DeclaringType
            MethodArgs =
                if m.IsGenericMethod then
                    names (m.GetGenericArguments())
                else
                    [||]
        }

    /// How a worker re-creates an F# function value.
    let ofFunction (f: obj) : Result<FunctionRef, string> =
        let t = f.GetType()
        let fields = t.GetFields instanceFields

        if fields.Length = 0 && loadable t.Assembly && not t.ContainsGenericParameters then
            Ok
                {
                    Assembly = t.Assembly.Location
                    TypeToken = t.MetadataToken
                    MethodToken = 0
                    Instance = true
                    TypeArgs = typeArgs t
                    MethodArgs = [||]
                }
        else
            match forwardee t with
            | Some m -> Ok(ofMethod m)
            | None when not (loadable t.Assembly) ->
                Error
                    $"the function value was made in an FSI session (or another dynamic assembly), which a worker process cannot load; a small compiled function may have been inlined into it, which [<MethodImpl(MethodImplOptions.NoInlining)>] on that function prevents: {advice}"
            | None ->
                let captured = fields |> Array.map (fun f -> f.Name) |> String.concat ", "

                Error
                    $"the function is a closure that captures values ({captured}), which a worker process cannot re-create: {advice}"

    /// How a worker re-creates a delegate (the C# facade's functions).
    let ofDelegate (d: Delegate) : Result<FunctionRef, string> =
        let m = d.Method

        match d.Target with
        | null when loadable m.Module.Assembly -> Ok(ofMethod m)
        | null -> Error $"the method is in a dynamic assembly, which a worker process cannot load: {advice}"
        | target when
            (target.GetType().GetFields instanceFields).Length = 0
            && loadable m.Module.Assembly
            ->
            Ok
                {
                    Assembly = m.Module.Assembly.Location
                    TypeToken = target.GetType().MetadataToken
                    MethodToken = m.MetadataToken
                    Instance = true
                    TypeArgs = typeArgs (target.GetType())
                    MethodArgs =
                        if m.IsGenericMethod then
                            names (m.GetGenericArguments())
                        else
                            [||]
                }
        | _ -> Error $"the lambda captures variables, which a worker process cannot re-create: {advice}"
