"""The vpltool CLI as a fork server: one process imports torch, open_clip and the stages once, and forks a child per
command. `make demo` runs its recursive make's commands through it (``VPL`` = the client), tests/test_demo_quality.py
the Makefile's pipeline.

Why: each command of a ``make`` run is a process of its own, and each spent ~2.8 CPU-s importing torch and the
stage's libraries before its work (41 commands in `make demo`). Here the server pays that once; a child is the
real CLI (``ENTRY``, ``vpltool.cli:main``) on the command's arguments, in a process of its own, so the Makefile's
recipes, files, output and exit codes are those a plain run gives.

This file runs as a script, never as ``python -m`` (``import vpltool`` would run reproducible mode's pins in the
wrong process), and its top level is the standard library alone: the client and the make wrapper start with
``python -S`` (~0.02 CPU-s). Three modes::

    python -S forkserver.py make --python PY --fallback VPLTOOL [--entry E] -- MAKE ARGS...  # make ARGS VPL=<client>
    python -S forkserver.py client SOCK [--fallback VPLTOOL] ARGS...               # vpltool ARGS through SOCK
    PY forkserver.py serve SOCK ENTRY MODULE...                   # the server (ENTRY: what a child runs; preloads)

The protocol, on a Unix socket: the client sends an 8-byte big-endian length with its fds 0, 1, 2 (SCM_RIGHTS),
then that many bytes of JSON ``{"argv": [str], "cwd": str, "env": {str: str}}``. The child answers with lines:
``pid N`` (the command's process; the client forwards SIGINT, SIGQUIT to its process group, SIGTERM, SIGHUP to it),
then one of ``exit N`` (its exit code), ``signal N`` (it died of signal N: the server reaps it and says so; the
client then kills itself with N, as make would have seen the command die) or ``refused VARS`` (below).

Load time: a variable read when a library loads (threads, instruction caps, reproducible mode, the Hub's offline
switch: ``LOAD_TIME_PREFIXES``) cannot change in a fork. The server imports at its first command, under that
command's environment; a later command whose load-time variables differ is refused before anything runs: its
client runs ``--fallback`` (the plain ``vpltool``) in its own place, or without one prints one line and exits 3.
The server starts no thread pool before it forks (its imports compute nothing: torch's OpenMP pool starts in each
child, at its first parallel operator, with the child's ``OMP_NUM_THREADS``).

Ending: the server stops when its stdin closes (its parent, the wrapper or :class:`Server`, ended) or on SIGTERM: a
command still running is killed with its process group and reaped, the socket removed. SIGINT (Ctrl-C, sent to the
terminal's whole process group) it ignores: each command's client forwards it to its command, make ends, then the
wrapper stops the server. A server killed outright leaves its socket: :class:`Server` removes it (and its folder).
The server's CPU time, its children's included, reaches its parent's ``RUSAGE_CHILDREN`` when it is waited for
(bench/bench_demo.py's and tests/conftest.py's accounting).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys

# the variables a library reads when it loads (or vpltool when it is imported): a command's must be the server's
LOAD_TIME_PREFIXES = ("VPLTOOL_", "OMP_", "MKL_", "ONEDNN_", "DNNL_", "ATEN_", "OPENCV_", "OPENBLAS_", "KMP_",
                      "PYTORCH_", "TORCH_", "PYTHON", "HF_", "CUDA_", "TRANSFORMERS_")
# the modules the demo pipeline's commands load, imported once by the server (vpltool first: reproducible mode
# pins each library's instructions before it loads)
PRELOAD = ("vpltool", "vpltool.cli", "torch", "numpy", "PIL.Image", "safetensors.torch", "open_clip", "cv2",
           "vpltool.stages.extract", "vpltool.stages.text_prototypes", "vpltool.stages.cam", "vpltool.stages.crf",
           "vpltool.stages.learn_prototypes", "vpltool.stages.train_decoder", "vpltool.stages.predict")
ENTRY = "vpltool.cli:main"  # what a child runs, with sys.argv = ["vpltool", *argv]
REFUSED = 3  # the exit code of a refused command (another load-time environment) when its client has no fallback
FORWARDED = {signal.SIGINT: True, signal.SIGQUIT: True, signal.SIGTERM: False, signal.SIGHUP: False}  # True: group


def _load_time(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(LOAD_TIME_PREFIXES)}


def _differ(a: dict[str, str], b: dict[str, str]) -> list[str]:
    return sorted({k for k, v in set(_load_time(a).items()) ^ set(_load_time(b).items())})


# --------------------------------------------------------------------------------------------- the client
def client(sock_path: str, argv: list[str], fallback: str | None = None) -> int:
    """Run ``vpltool ARGV`` through the server at ``sock_path`` on this process's stdio; its exit code. With
    ``fallback`` (the plain vpltool's path), a command the server refuses or cannot take (no server there) runs as
    a process of its own in this one's place (exec)."""
    child, pending = [0], []

    def forward(signum, frame) -> None:
        if not child[0]:
            pending.append(signum)
        else:
            try:
                os.killpg(child[0], signum) if FORWARDED[signum] else os.kill(child[0], signum)
            except ProcessLookupError:
                pass

    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(sock_path)
    except OSError:
        conn.close()
        if fallback:
            os.execv(fallback, [fallback, *argv])
        raise
    previous = {s: signal.signal(s, forward) for s in FORWARDED}
    request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    socket.send_fds(conn, [len(request).to_bytes(8, "big")], [0, 1, 2])
    conn.sendall(request)
    replies = conn.makefile("r")
    kind, _, value = replies.readline().strip().partition(" ")
    if kind == "pid":
        child[0] = int(value)
        for signum in pending:
            forward(signum, None)
        kind, _, value = replies.readline().strip().partition(" ")
    conn.close()
    for signum, handler in previous.items():
        signal.signal(signum, handler)
    if kind == "refused":
        if fallback:
            os.execv(fallback, [fallback, *argv])
        print(f"forkserver: refused, a load-time variable differs from the server's: {value}", file=sys.stderr)
        return REFUSED
    if kind == "signal":
        signal.signal(int(value), signal.SIG_DFL)
        os.kill(os.getpid(), int(value))
    return int(value) if kind == "exit" else 1  # nothing back: the server ended under it


# --------------------------------------------------------------------------------------------- the server
def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    head, fds, _, _ = socket.recv_fds(conn, 8, 3)
    size, body = int.from_bytes(head, "big"), b""
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise EOFError("the client hung up")
        body += chunk
    return json.loads(body), fds


def _run_command(conn: socket.socket, request: dict, fds: list[int], added: dict[str, str], entry: str) -> None:
    """In the forked child: a process group of its own (the client forwards the terminal's signals to it), the
    client's stdio, folder and environment (with what the server's imports ``added`` to their own, as they would in
    the command's process) and the signal handlers a new interpreter has; run the CLI, send the exit code."""
    os.setpgid(0, 0)
    for signum in FORWARDED:
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    conn.sendall(f"pid {os.getpid()}\n".encode())
    for target, fd in zip((0, 1, 2), fds):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdout.reconfigure(line_buffering=os.isatty(1))  # as a new interpreter sets it up on this fd 1
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update({**request["env"], **added})
    module, _, function = entry.partition(":")
    main = getattr(sys.modules[module], function)
    if "vpltool" in sys.modules:  # the process that started this one is the server (vpltool.cli.errors' check)
        sys.modules["vpltool"].LAUNCHED_BY = os.getppid()
    sys.argv = ["vpltool", *request["argv"]]
    code, interrupted = 0, False
    try:
        main()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except KeyboardInterrupt:  # as an interpreter ends on one: the traceback, then death by SIGINT (the server
        sys.excepthook(*sys.exc_info())  # tells the client, which dies of it in turn)
        interrupted = True
    except BaseException:  # noqa: BLE001 - as an interpreter ends on any other: the traceback, exit 1
        sys.excepthook(*sys.exc_info())
        code = 1
    _as_at_exit()
    if interrupted:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    conn.sendall(f"exit {code}\n".encode())
    conn.close()
    os._exit(code)


def _as_at_exit() -> None:
    """What the interpreter does when a command's process ends (its threads joined, its atexit handlers run, its
    output flushed), before the child leaves with ``os._exit`` (the server's loop must not run on in it)."""
    import atexit
    import threading

    threading._shutdown()  # the interpreter's own join of non-daemon threads at exit
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()


def _load(request: dict, preload: list[str]) -> dict[str, str]:
    """At the first command: take its environment, import ``preload`` (the entry's module last) under it; what the
    imports set in the environment (reproducible mode's pins, set by ``import vpltool``), which a command's process
    sets too."""
    import importlib

    os.environ.clear()
    os.environ.update(request["env"])
    base = dict(os.environ)
    for name in preload:
        importlib.import_module(name)
    return {k: v for k, v in os.environ.items() if base.get(k) != v}


def serve(sock_path: str, preload: list[str], entry: str = ENTRY) -> None:
    """Fork a child per connection until stdin closes or SIGTERM comes, each running ``entry`` (``MODULE:FUNCTION``);
    import ``preload`` and the entry's module at the first one. Every child is reaped (its CPU time then counts in
    this process's ``RUSAGE_CHILDREN``)."""
    import selectors

    own = dict(os.environ)  # PYTHON* made this interpreter's sys.path: a command's must be these
    first: dict[str, str] | None = None
    added: dict[str, str] = {}
    broken = ""  # why the imports failed: every command is then refused (its client's fallback runs it)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal's Ctrl-C: the commands' and make's to act on
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    listener.listen(64)
    children: dict[int, socket.socket] = {}  # pid -> the connection its reply goes to if it dies of a signal
    try:
        print("ready", flush=True)
        with selectors.DefaultSelector() as sel:
            sel.register(listener, selectors.EVENT_READ)
            sel.register(sys.stdin, selectors.EVENT_READ)
            while True:
                ready = {key.fileobj for key, _ in sel.select(timeout=0.2)}
                _reap(children, os.WNOHANG)
                if sys.stdin in ready and not sys.stdin.readline():
                    break
                if listener not in ready:
                    continue
                conn, _ = listener.accept()
                try:
                    request, fds = _receive(conn)
                except (OSError, EOFError, ValueError):
                    conn.close()
                    continue
                differ = _differ(request["env"], first) if first is not None else \
                    [k for k in _differ(request["env"], own) if k.startswith("PYTHON")]
                if first is None and not differ:
                    first = request["env"]
                    try:
                        added = _load(request, [*preload, entry.partition(":")[0]])
                    except Exception as e:  # noqa: BLE001 - any failure to import: no command runs here
                        broken = f"imports-failed:{type(e).__name__}"
                if differ or broken:
                    conn.sendall(f"refused {','.join(differ) or broken}\n".encode())
                    for fd in fds:
                        os.close(fd)
                    conn.close()
                    continue
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    try:
                        listener.close()
                        _run_command(conn, request, fds, added, entry)
                    finally:  # whatever happened, this child never returns into the server's loop
                        os._exit(1)
                for fd in fds:
                    os.close(fd)
                children[pid] = conn
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for pid in children:  # the run is over (or was stopped): a command still running is ended, then reaped
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        _reap(children, 0)
        listener.close()
        os.unlink(sock_path)


def _reap(children: dict[int, socket.socket], flags: int) -> None:
    """Wait for the children that ended (all of them with ``flags`` 0); tell the client of one a signal killed."""
    for pid in list(children):
        try:
            done, status = os.waitpid(pid, flags)
        except ChildProcessError:
            done, status = pid, 0
        if not done:
            continue
        conn = children.pop(pid)
        if os.WIFSIGNALED(status):
            try:
                conn.sendall(f"signal {os.WTERMSIG(status)}\n".encode())
            except OSError:
                pass
        conn.close()


class Server:
    """The fork server as a context manager: started with ``env`` by ``python`` (default: this interpreter) on the
    socket ``sock_path``, stopped and waited for on exit; a socket its death left behind is removed."""

    def __init__(self, sock_path: os.PathLike, env: dict[str, str], preload: tuple[str, ...] = PRELOAD,
                 python: str = sys.executable, entry: str = ENTRY):
        self.sock_path, self.env, self.preload, self.python = os.fspath(sock_path), env, preload, python
        self.entry = entry

    def __enter__(self) -> Server:
        import subprocess

        self.proc = subprocess.Popen([self.python, os.path.abspath(__file__), "serve", self.sock_path, self.entry,
                                      *self.preload],
                                     env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            self.proc.wait()
            raise RuntimeError(f"the fork server did not start (exit {self.proc.returncode})")
        return self

    def client_command(self, fallback: str | None = None) -> str:
        """The ``VPL`` of a make run: ``python`` without site packages, running :func:`client`."""
        return " ".join([self.python, "-S", os.path.abspath(__file__), "client", self.sock_path,
                         *(["--fallback", fallback] if fallback else [])])

    def __exit__(self, *exc: object) -> None:
        import subprocess

        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        if os.path.exists(self.sock_path):  # the server was killed before it could remove it
            os.unlink(self.sock_path)


# --------------------------------------------------------------------------------------------- make's wrapper
def _dry_run() -> bool:
    """Whether the make that runs this recipe only prints or checks (-n, -q, -t): then no server."""
    flags = os.environ.get("MAKEFLAGS", "").split()
    return bool(flags) and not flags[0].startswith("-") and any(f in flags[0] for f in "nqt")


def run_make(python: str, fallback: str, command: list[str], entry: str = ENTRY) -> int:
    """Run ``COMMAND VPL=<client>`` (a recursive make) with one server (``python``) for its commands; stop the
    server when it ends, however it ends. Without ``python`` (no venv yet) or in a dry run: the command alone.
    ``entry`` other than the CLI's (tests/test_make_targets.py's stand-in) preloads nothing but its own module."""
    import shutil
    import subprocess
    import tempfile

    if _dry_run() or not os.access(python, os.X_OK):
        os.execvp(command[0], command)
    folder = tempfile.mkdtemp(prefix="vpltool-fork-")
    try:
        with Server(os.path.join(folder, "sock"), dict(os.environ), PRELOAD if entry == ENTRY else (), python,
                    entry) as server:
            # Ctrl-C reaches make itself (the terminal's group): this process waits for it (a Python handler, not
            # SIG_IGN, which make would inherit)
            signal.signal(signal.SIGINT, lambda signum, frame: None)
            # the jobserver's pipes stay open for a make with -j (close_fds=False: as make passes them)
            proc = subprocess.Popen([*command, f"VPL={server.client_command(fallback)}"], close_fds=False)
            signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signum))  # make's on a failure
            signal.signal(signal.SIGHUP, lambda signum, frame: proc.send_signal(signum))
            code = proc.wait()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if code < 0:  # make died of a signal: so does this wrapper
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


def _main(argv: list[str]) -> int:
    mode, rest = argv[0], argv[1:]
    if mode == "serve":
        serve(rest[0], rest[2:], rest[1])
        return 0
    if mode == "client":
        sock, args = rest[0], rest[1:]
        fallback = args[1] if args[:1] == ["--fallback"] else None
        return client(sock, args[2:] if fallback else args, fallback)
    if mode == "make":  # make --python PY --fallback VPLTOOL [--entry E] -- COMMAND...
        split = rest.index("--")
        options = dict(zip(rest[:split:2], rest[1:split:2]))
        return run_make(options["--python"], options["--fallback"], rest[split + 1:], options.get("--entry", ENTRY))
    raise SystemExit(f"forkserver: unknown mode {mode!r} (serve, client or make)")


if __name__ == "__main__":
    # a script: its own folder is no place to import from (vpltool/runtime's modules are not top-level ones)
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]
    sys.exit(_main(sys.argv[1:]))
