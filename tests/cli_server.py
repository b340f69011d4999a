"""The tests' fork server for torchrun ranks: vpltool's own (vpltool/runtime/forkserver.py), its children running a
Python file as ``python SCRIPT ARGS`` would, instead of the CLI.

A torchrun rank is a new process that imports torch, torch.distributed, dynamo (DistributedDataParallel) and the
family's libraries (~5-6 CPU-s) before a few iterations. With ``torchrun --no-python`` and
:meth:`ScriptServer.script_command` as its program, each rank is a client of one server that imported them once: the
rank itself is a fork of the server, with the environment torchrun's agent gave it (a load-time variable other than
the server's is refused, as in `make demo`'s use). The server imports this module (the children's entry,
:func:`run_script`) from tests/, so its environment and the ranks' carry ``PYTHONPATH`` = tests/ (:func:`rank_env`).
"""

from __future__ import annotations

import os
import runpy
import sys

from vpltool.runtime import forkserver

TESTS = os.path.dirname(os.path.abspath(__file__))


def run_script() -> None:
    """The children's entry: ``sys.argv`` = ``["vpltool", SCRIPT, *ARGS]`` (the server's), run as ``python SCRIPT
    ARGS``."""
    script, *args = sys.argv[1:]
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


def rank_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` with tests/ first on ``PYTHONPATH``: the server's and the ranks' (both must be the same)."""
    return {**env, "PYTHONPATH": os.pathsep.join(p for p in (TESTS, env.get("PYTHONPATH")) if p)}


class ScriptServer(forkserver.Server):
    """A fork server whose children run :func:`run_script`; ``env`` from :func:`rank_env`."""

    def __init__(self, sock_path: os.PathLike, env: dict[str, str], preload: tuple[str, ...]):
        super().__init__(sock_path, env, preload, entry="cli_server:run_script")

    def script_command(self, script: os.PathLike) -> list[str]:
        """``python SCRIPT`` through the server: a program for ``torchrun --no-python``."""
        return [self.python, "-S", os.path.abspath(forkserver.__file__), "client", self.sock_path, os.fspath(script)]
