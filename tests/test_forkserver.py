"""vpltool/runtime/forkserver.py, the fork server `make demo` (and test_demo_quality) runs the Makefile's commands
through: a command's exit code, output and files are the CLI's; a command under another load-time environment is
refused in one line (exit 3) or, with a fallback, run as a process of its own; a child starts torch's threads as a
new process does; a server killed outright leaves no socket; the make wrapper leaves no server behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from vpltool.runtime import forkserver

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ROOT = Path(__file__).resolve().parents[1]


def _client(server: forkserver.Server, *args: str, env: dict[str, str] = ENV, fallback: str | None = None
            ) -> subprocess.CompletedProcess:
    return subprocess.run(f"{server.client_command(fallback)} {' '.join(args)}", shell=True, env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_command_through_the_server_is_the_cli_and_another_environment_is_refused(tmp_path):
    world = tmp_path / "world"
    with forkserver.Server(tmp_path / "sock", ENV, preload=("vpltool.cli",)) as server:
        made = _client(server, "make-world", str(world), "--train", "2", "--val", "1")
        missing = _client(server, "eval", str(tmp_path / "nothing"))
        version = _client(server, "--version")
        other = _client(server, "--version", env={**ENV, "OMP_NUM_THREADS": "2"})
        # with a fallback, the refused command runs as a process of its own: the same answer
        fell_back = _client(server, "--version", env={**ENV, "OMP_NUM_THREADS": "2"},
                            fallback=str(Path(sys.executable).parent / "vpltool"))
    assert made.returncode == 0 and "✓ make-world: 2 train + 1 val scenes" in made.stderr + made.stdout
    assert (world / "classes.txt").is_file() and len(list((world / "images").iterdir())) == 3
    assert missing.returncode == 2 and missing.stderr.strip().splitlines()[-1].startswith("error: ")
    assert version.returncode == 0 and version.stdout.startswith("vpltool ")  # stdout is the client's (a pipe here)
    assert other.returncode == forkserver.REFUSED and not other.stdout
    assert other.stderr.strip().splitlines() == [other.stderr.strip()] and "OMP_NUM_THREADS" in other.stderr
    assert fell_back.returncode == 0 and fell_back.stdout == version.stdout and not fell_back.stderr
    assert not (tmp_path / "sock").exists()  # the server removed its socket when it stopped


# a stand-in CLI: torch's threads and a parallel operator's result, as a child sees them
PROBE = textwrap.dedent("""\
    import sys, torch

    def main():
        torch.manual_seed(0)
        x = torch.randn(300, 400)
        print(torch.get_num_threads(), float((x @ x.T).sum()), " ".join(sys.argv[1:]))
    """)


def test_a_child_starts_torchs_threads_as_a_new_process_does(tmp_path):
    """The server's imports start no OpenMP pool (one thread in it when it forks); a child's torch threads and its
    figures are a new process's, under OMP_NUM_THREADS=2."""
    (tmp_path / "probe.py").write_text(PROBE)
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    fresh = subprocess.run([sys.executable, "-c", "import probe, sys; sys.argv=['x', 'a']; probe.main()"], env=env,
                           capture_output=True, text=True, check=True).stdout
    with forkserver.Server(tmp_path / "sock", env, preload=("torch",), entry="probe:main") as server:
        child = _client(server, "a", env=env)
        threads = int(Path(f"/proc/{server.proc.pid}/status").read_text().split("Threads:")[1].split()[0])
    assert child.returncode == 0, child.stderr
    assert child.stdout == fresh and fresh.startswith("2 ")
    assert threads == 1


def test_a_killed_server_leaves_no_socket_and_its_client_falls_back(tmp_path):
    with forkserver.Server(tmp_path / "sock", ENV, preload=()) as server:
        server.proc.kill()
        server.proc.wait()
        gone = _client(server, "--version", fallback=str(Path(sys.executable).parent / "vpltool"))
    assert gone.returncode == 0 and gone.stdout.startswith("vpltool ")
    assert not (tmp_path / "sock").exists()


def test_make_interrupted_stops_its_server_and_removes_the_socket(tmp_path):
    """The make wrapper on a make whose command hangs: Ctrl-C (SIGINT to the whole process group) ends the command,
    make, the server and the wrapper; nothing is left in TMPDIR, no process of the run is left."""
    (tmp_path / "hang.py").write_text("import time\n\ndef main():\n    print('started', flush=True)\n"
                                      "    time.sleep(600)\n")
    (tmp_path / "Makefile").write_text("all:\n\t@$(VPL) x\n")
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "TMPDIR": str(tmp_path / "tmp")}
    env = {k: v for k, v in env.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    wrapper = [sys.executable, "-S", forkserver.__file__, "make", "--python", sys.executable, "--fallback", "false",
               "--entry", "hang:main", "--", "make", "-C", str(tmp_path), "--no-print-directory"]
    proc = subprocess.Popen(wrapper, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own group: the "terminal" the test presses Ctrl-C in
    assert proc.stdout.readline().strip() == "started"  # the command runs, in a child of the server
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    # the command got it (forwarded by its client) and ended as an interpreter does on it; make ended interrupted
    assert err.count("KeyboardInterrupt") == 1 and proc.returncode == -signal.SIGINT, err
    assert list((tmp_path / "tmp").iterdir()) == []  # the socket's folder is gone
    time.sleep(0.5)
    left = [p for p in Path("/proc").iterdir() if p.name.isdigit() and str(tmp_path).encode() in _cmdline(p)]
    assert left == []


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""
