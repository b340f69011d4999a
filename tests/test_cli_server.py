"""tests/cli_server.py, the fork server test_demo_quality runs the Makefile's commands through: a command's exit
code, output and files are the CLI's, and a command it would run under another load-time environment is refused."""

from __future__ import annotations

import os
import subprocess

import cli_server  # tests/ is on sys.path

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _client(server: cli_server.Server, *args: str, env: dict[str, str] = ENV) -> subprocess.CompletedProcess:
    return subprocess.run(f"{server.client_command()} {' '.join(args)}", shell=True, env=env, capture_output=True,
                          text=True, timeout=120)


def test_a_command_through_the_server_is_the_cli_and_another_environment_is_refused(tmp_path):
    world = tmp_path / "world"
    with cli_server.Server(tmp_path / "sock", ENV, preload=("vpltool.cli",)) as server:
        made = _client(server, "make-world", str(world), "--train", "2", "--val", "1")
        missing = _client(server, "eval", str(tmp_path / "nothing"))
        version = _client(server, "--version")
        other = _client(server, "--version", env={**ENV, "OMP_NUM_THREADS": "2"})
    assert made.returncode == 0 and "✓ make-world: 2 train + 1 val scenes" in made.stderr + made.stdout
    assert (world / "classes.txt").is_file() and len(list((world / "images").iterdir())) == 3
    assert missing.returncode == 2 and missing.stderr.strip().splitlines()[-1].startswith("error: ")
    assert version.returncode == 0 and version.stdout.startswith("vpltool ")  # stdout is the client's (a pipe here)
    assert other.returncode == cli_server.REFUSED and "OMP_NUM_THREADS" in other.stderr and not other.stdout
    assert not (tmp_path / "sock").exists()  # the server removed its socket when it stopped
