"""Run several benchmark scripts one after the other in this one process, each as ``python bench/SCRIPT ARGS``.

    python bench/run_scripts_in_one.py OUT_DIR SCRIPTS.json

``SCRIPTS.json``: a list of ``[name, script path, arg, ...]``. Each script's stdout (file descriptor 1, so its
child processes' too) goes to ``OUT_DIR/<name>.stdout``, its exit status to ``OUT_DIR/<name>.status`` (0, or the
traceback that ended it), and a script that fails does not stop the next one.

For the ``--quick`` smoke tests of tests/test_benchmarks.py: each script in its own process paid 3-5 CPU-s of
start-up (torch, open_clip) to run a few seconds of tiny stages; here that start-up is paid once. Between scripts the
environment, the working folder, ``sys.argv``, ``sys.path`` and torch's thread count are put back as they were, so
that one script's settings (bench_host's test switch, a thread count) do not reach the next; a script still meets
the modules the ones before it imported. The full benchmarks keep one process per script.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import traceback
from pathlib import Path


def run_one(name: str, script: Path, args: list[str], out: Path) -> None:
    """``script`` with ``args`` as ``__main__``, its stdout in ``out/<name>.stdout``, its status in ``.status``."""
    import torch

    saved = (dict(os.environ), os.getcwd(), list(sys.argv), list(sys.path), torch.get_num_threads())
    sys.stdout.flush()
    real_stdout = os.dup(1)
    status = "0"
    with open(out / f"{name}.stdout", "wb") as stdout:
        os.dup2(stdout.fileno(), 1)
        try:
            sys.argv, sys.path[0] = [str(script), *args], str(script.parent)  # as `python SCRIPT ARGS` sets them
            runpy.run_path(str(script), run_name="__main__")
        except SystemExit as stop:
            status = "0" if stop.code in (0, None) else f"exit {stop.code}"
        except BaseException:  # noqa: BLE001 (recorded for the test, which names the script)
            status = traceback.format_exc()
        finally:
            sys.stdout.flush()
            os.dup2(real_stdout, 1)
            os.close(real_stdout)
    environ, cwd, sys.argv, sys.path[:], threads = saved
    os.environ.clear()
    os.environ.update(environ)
    os.chdir(cwd)
    torch.set_num_threads(threads)
    (out / f"{name}.status").write_text(status)


def main() -> None:
    out, scripts = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
    for name, script, *args in scripts:
        run_one(name, Path(script), args, out)


if __name__ == "__main__":
    main()
