namespace Pyper

open System
open System.Diagnostics
open System.IO
open System.Net.Sockets
open System.Reflection
open System.Runtime.InteropServices
open System.Runtime.Loader
open System.Text.Json
open System.Text.Json.Serialization
open System.Threading
open System.Threading.Tasks

/// Where a process stage's function lives, so that a worker process can re-create it:
/// a method of a type in a compiled assembly, called on a fresh instance of the type
/// (a closure or lambda class that captures nothing) or statically.
type internal FunctionRef =
    {
        Assembly: string
        TypeToken: int
        MethodToken: int
        Instance: bool
    }

    /// As sent to a worker: plain text, so a worker's start-up needs no serializer set-up.
    member r.Encode() =
        Text.Encoding.UTF8.GetBytes $"{r.TypeToken}|{r.MethodToken}|{r.Instance}|{r.Assembly}"

    static member Decode(payload: byte[]) =
        let parts = Text.Encoding.UTF8.GetString(payload).Split('|', 4)

        {
            TypeToken = int parts[0]
            MethodToken = int parts[1]
            Instance = bool.Parse parts[2]
            Assembly = parts[3]
        }


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
                | :? MethodInfo as m when m.IsStatic && not m.ContainsGenericParameters && loadable m.Module.Assembly ->
                    Some m
                | _ -> None
            with _ ->
                None)

    let private ofMethod (m: MethodInfo) =
        {
            Assembly = m.Module.Assembly.Location
            TypeToken = m.DeclaringType.MetadataToken
            MethodToken = m.MetadataToken
            Instance = false
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
                }
        | _ -> Error $"the lambda captures variables, which a worker process cannot re-create: {advice}"
