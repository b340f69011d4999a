"""The vpltool CLI as a fork server, for a test that runs the Makefile's pipeline (tests/test_demo_quality.py), and
a Python file's runs the same way (:meth:`Server.script_command`: the torchrun ranks of tests/test_train_pgseg.py and
tests/test_talk2dino_train.py, each a fork of a server that imported what a rank imports).

Each command of a ``make`` run is a process of its own, and each spent ~2.5 CPU-s importing torch and the stage's
libraries before its work (42 commands in the demo test's run). Here one server process imports them once, with
the environment the Makefile gives its commands, and forks a child per command: ``make VPL="$(client_command)"``
runs :func:`client` (the standard library alone, ~0.02 CPU-s), which hands the server its stdin, stdout and stderr,
its arguments, folder and environment, and exits with the command's exit code. The child is the real CLI
(``vpltool.cli.app``) on those arguments, in a process of its own, so the Makefile's recipes, files and exit codes
are the ones a plain ``make`` run gives.

A variable read when a library loads (threads, instruction caps, reproducible mode) cannot change in a fork: a
command whose environment differs from the server's there is refused (exit 3, one line), never run otherwise.
The server's CPU time, its children's included, reaches its parent's ``RUSAGE_CHILDREN`` when :meth:`Server.stop`
waits for it (tests/conftest.py's accounting).

Usage::

    with Server(sock, env) as server:
        subprocess.run(["make", f"VPL={server.client_command()}", ...], env=env)
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import sys

# the variables a library reads when it loads (or vpltool when it is imported): they must be the server's
LOAD_TIME_PREFIXES = ("VPLTOOL_", "OMP_", "MKL_", "ONEDNN_", "DNNL_", "ATEN_", "OPENCV_", "OPENBLAS_", "KMP_",
                      "PYTORCH_", "TORCH_", "PYTHON")
# the modules the demo pipeline's commands load, imported once by the server (vpltool first: reproducible mode
# pins each library's instructions before it loads)
PRELOAD = ("vpltool", "vpltool.cli", "torch", "numpy", "PIL.Image", "safetensors.torch", "open_clip", "cv2",
           "vpltool.stages.extract", "vpltool.stages.text_prototypes", "vpltool.stages.cam", "vpltool.stages.crf",
           "vpltool.stages.learn_prototypes", "vpltool.stages.train_decoder", "vpltool.stages.predict")
REFUSED = 3  # the exit code of a command the server would run under another load-time environment


def _load_time(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(LOAD_TIME_PREFIXES)}


# --------------------------------------------------------------------------------------------- the client
def client(sock_path: str, argv: list[str], script: str | None = None) -> int:
    """Run ``vpltool ARGV`` (or, given ``script``, ``python SCRIPT ARGV``) through the server at ``sock_path`` on this
    process's stdio; its exit code."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(sock_path)
        request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "script": script}).encode()
        socket.send_fds(conn, [len(request).to_bytes(8, "big")], [0, 1, 2])
        conn.sendall(request)
        reply = conn.makefile("rb").read()
    return int(reply) if reply.strip() else 1  # nothing back: the command's process died (a signal)


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


def _run_command(conn: socket.socket, base_env: dict[str, str], added: dict[str, str]) -> None:
    """In the forked child: take the client's stdio, folder and environment (with what the server's imports
    ``added`` to its own, as they would in the command's process), run the CLI, send the exit code."""
    request, fds = _receive(conn)
    for target, fd in zip((0, 1, 2), fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update({**request["env"], **added})
    code = 0
    if _load_time(request["env"]) != _load_time(base_env):
        differ = sorted(set(_load_time(request["env"]).items()) ^ set(_load_time(base_env).items()))
        print(f"cli_server: refused, a load-time variable differs from the server's: {differ}", file=sys.stderr)
        code = REFUSED
    else:
        try:
            if request.get("script"):  # a Python file, as `python SCRIPT ARGV` runs it (a torchrun rank's)
                import runpy

                sys.argv = [request["script"], *request["argv"]]
                runpy.run_path(request["script"], run_name="__main__")
            else:
                from vpltool.cli import main

                sys.argv = ["vpltool", *request["argv"]]
                main()
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except BaseException:  # what the interpreter prints of an uncaught exception, and its exit code
            import traceback

            traceback.print_exc()
            code = 1
    _as_at_exit()
    conn.sendall(str(code).encode())
    conn.close()
    os._exit(code)


def _as_at_exit() -> None:
    """What the interpreter does when a command's process ends (its threads joined, its atexit handlers run, its
    output flushed), before the child leaves with ``os._exit`` (the server's loop must not run on in it)."""
    import threading

    threading._shutdown()  # the interpreter's own join of non-daemon threads at exit
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()


def serve(sock_path: str, preload: list[str]) -> None:
    """Import ``preload``, then fork a child per connection until stdin closes; reap every child (their CPU
    time then counts in this process's ``RUSAGE_CHILDREN``)."""
    import importlib
    import selectors

    base_env = dict(os.environ)
    for name in preload:
        importlib.import_module(name)
    # what the imports set (reproducible mode's pins, set by `import vpltool`): a command's process sets them too
    added = {k: v for k, v in os.environ.items() if base_env.get(k) != v}
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    listener.listen(16)
    print("ready", flush=True)
    children: set[int] = set()
    with selectors.DefaultSelector() as sel:
        sel.register(listener, selectors.EVENT_READ)
        sel.register(sys.stdin, selectors.EVENT_READ)
        while True:
            ready = {key.fileobj for key, _ in sel.select(timeout=0.5)}
            children -= {pid for pid in list(children) if os.waitpid(pid, os.WNOHANG)[0]}
            if sys.stdin in ready and not sys.stdin.readline():
                break
            if listener in ready:
                conn, _ = listener.accept()
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    try:
                        listener.close()
                        _run_command(conn, base_env, added)
                    finally:  # whatever happened, this child never returns into the server's loop
                        os._exit(1)
                conn.close()
                children.add(pid)
    for pid in children:  # the run is over (or was stopped): a command still running is ended, then reaped
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
    listener.close()
    os.unlink(sock_path)


class Server:
    """The fork server as a context manager: started with ``env`` (the Makefile's commands' environment), stopped
    and waited for on exit."""

    def __init__(self, sock_path: os.PathLike, env: dict[str, str], preload: tuple[str, ...] = PRELOAD):
        self.sock_path, self.env, self.preload = os.fspath(sock_path), env, preload

    def __enter__(self) -> Server:
        import subprocess

        self.proc = subprocess.Popen([sys.executable, __file__, "serve", self.sock_path, *self.preload], env=self.env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            self.proc.wait()
            raise RuntimeError(f"the CLI server did not start (exit {self.proc.returncode})")
        return self

    def client_command(self) -> str:
        """The ``VPL`` of a make run: this interpreter without site packages, running :func:`client`."""
        return f"{sys.executable} -S {__file__} client {self.sock_path}"

    def script_command(self, script: os.PathLike) -> list[str]:
        """``python SCRIPT`` through the server (a program for ``torchrun --no-python``: each rank a fork of the
        server, its environment the rank's)."""
        return [sys.executable, "-S", __file__, "script", self.sock_path, os.fspath(script)]

    def __exit__(self, *exc: object) -> None:
        self.proc.stdin.close()
        self.proc.wait()
        self.proc.stdout.close()


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3:])
    elif sys.argv[1] == "script":
        sys.exit(client(sys.argv[2], sys.argv[4:], script=sys.argv[3]))
    else:
        sys.exit(client(sys.argv[2], sys.argv[3:]))
