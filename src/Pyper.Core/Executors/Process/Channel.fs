namespace Pyper

open System
open System.Diagnostics
open System.IO
open System.Net.Sockets
open System.Runtime.InteropServices
open System.Security.Cryptography
open System.Threading
open System.Threading.Tasks

/// Where a parent listens for the worker process it starts.
type internal ChannelKind =
    /// A Linux abstract socket: a name, no file (nothing to leave behind, no path length limit
    /// beyond 107 bytes of name, no umask). Who is served is decided by the peer check.
    | Abstract
    /// A socket file in a new directory of mode 0700 under this folder (other systems).
    | InFolder of folder: string

module internal ChannelNative =
    [<DllImport("libc", EntryPoint = "geteuid")>]
    extern uint32 geteuid()

/// A listening socket for one worker process: `Address` goes on the worker's command line, and
/// `AcceptFrom` takes the first connection of that process, dropping any other unread.
[<Sealed>]
type internal ChannelListener(socket: Socket, address: string, dir: string) =
    static let userId = lazy (ChannelNative.geteuid ())

    let mutable removed = 0

    /// The socket's folder goes as soon as the worker is in (or the listener is closed).
    let remove () =
        if not (isNull dir) && Interlocked.Exchange(&removed, 1) = 0 then
            try
                Directory.Delete(dir, true)
            with _ ->
                ()

    /// The peer's (pid, uid) from `SO_PEERCRED` (Linux), or None elsewhere.
    static member PeerCredentials(s: Socket) =
        if OperatingSystem.IsLinux() then
            let cred = Array.zeroCreate<byte> 12 // struct ucred { pid_t pid; uid_t uid; gid_t gid; }

            s.GetRawSocketOption(1 (* SOL_SOCKET *) , 17 (* SO_PEERCRED *) , Span cred)
            |> ignore

            Some(BitConverter.ToInt32(cred, 0), BitConverter.ToUInt32(cred, 4))
        else
            None

    /// What the worker is given: `@name` for an abstract socket, else the socket file's path.
    member _.Address = address

    /// The first connection made by process `pid` under our user. Any other connection is
    /// closed without a byte read from it or sent to it, and accepting goes on.
    member _.AcceptFrom(pid: int, token: CancellationToken) : Task<Socket> =
        task {
            let mutable found: Socket = null

            while isNull found do
                let! s = socket.AcceptAsync token

                match ChannelListener.PeerCredentials s with
                | Some(p, uid) when p <> pid || uid <> userId.Value -> s.Dispose()
                | _ -> found <- s

            remove ()
            return found
        }

    interface IDisposable with
        member _.Dispose() =
            socket.Dispose()
            remove ()

/// The parent/worker channel of a process stage.
module internal WorkerChannel =
    /// Abstract sockets on Linux; a private folder under the temp folder elsewhere.
    let defaultKind () =
        if OperatingSystem.IsLinux() then
            Abstract
        else
            InFolder(Path.GetTempPath())

    let private newSocket () =
        new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified)

    let private token () =
        Convert.ToHexString(RandomNumberGenerator.GetBytes 8).ToLowerInvariant()

    /// sun_path: 108 bytes on Linux, 104 on macOS and the BSDs, including the closing NUL.
    let private maxPath = if OperatingSystem.IsLinux() then 107 else 103

    let private isAlive (pid: int) =
        try
            use p = Process.GetProcessById pid
            not p.HasExited
        with _ ->
            false

    /// Removes `pyper-<pid>-*` entries of `folder` whose process is dead: folders of parents that
    /// were killed before their workers connected (and socket files of older versions).
    let sweep (folder: string) =
        for entry in Directory.EnumerateFileSystemEntries(folder, "pyper-*") do
            match Path.GetFileName(entry).Split('-') with
            | [| _; pid; _ |] ->
                match Int32.TryParse pid with
                | true, pid when pid <> Environment.ProcessId && not (isAlive pid) ->
                    try
                        let info = FileInfo entry

                        if info.Attributes.HasFlag FileAttributes.Directory && isNull info.LinkTarget then
                            Directory.Delete(entry, true)
                        else
                            File.Delete entry
                    with _ ->
                        () // another user's, or being removed by someone else
                | _ -> ()
            | _ -> ()

    let private swept = Collections.Concurrent.ConcurrentDictionary<string, bool>()

    /// A new directory of mode 0700 (whatever the umask: it only takes bits away), checked.
    let private privateFolder (folder: string) =
        if not (Directory.Exists folder) then
            raise (
                IOException(
                    $"Process stages need a folder for their worker sockets: '{folder}' (the temp folder, TMPDIR) does not exist."
                )
            )

        if swept.TryAdd(folder, true) then
            sweep folder

        let dir = Path.Combine(folder, $"pyper-{Environment.ProcessId}-{token ()}")

        if OperatingSystem.IsWindows() then
            Directory.CreateDirectory dir |> ignore // the temp folder is the user's own there
        else
            let mode =
                UnixFileMode.UserRead ||| UnixFileMode.UserWrite ||| UnixFileMode.UserExecute

            Directory.CreateDirectory(dir, mode) |> ignore
            let info = DirectoryInfo dir

            if not (isNull info.LinkTarget) || File.GetUnixFileMode dir <> mode then
                raise (IOException $"The worker socket folder '{dir}' is not a private directory (mode 0700).")

        dir

    /// Binds and listens: an abstract socket, or a socket file in a new private folder.
    let listen (kind: ChannelKind) : ChannelListener =
        let socket = newSocket ()

        try
            match kind with
            | Abstract ->
                let name = $"pyper-{Environment.ProcessId}-{token ()}"
                socket.Bind(UnixDomainSocketEndPoint("\000" + name))
                socket.Listen 8
                new ChannelListener(socket, "@" + name, null)
            | InFolder folder ->
                let dir = privateFolder folder

                try
                    let path = Path.Combine(dir, "s")
                    let length = Text.Encoding.UTF8.GetByteCount path

                    if length > maxPath then
                        raise (
                            IOException(
                                $"The worker socket path '{path}' is {length} bytes, more than the {maxPath} a Unix socket allows: set TMPDIR to a shorter folder."
                            )
                        )

                    socket.Bind(UnixDomainSocketEndPoint path)
                    socket.Listen 8
                    new ChannelListener(socket, path, dir)
                with _ ->
                    Directory.Delete(dir, true)
                    reraise ()
        with _ ->
            socket.Dispose()
            reraise ()

    /// The worker's side: connects to the address its parent gave it.
    let connect (address: string) : Socket =
        let socket = newSocket ()

        let endPoint =
            if address.StartsWith '@' then
                UnixDomainSocketEndPoint("\000" + address.Substring 1)
            else
                UnixDomainSocketEndPoint address

        try
            socket.Connect endPoint
            socket
        with _ ->
            socket.Dispose()
            reraise ()
