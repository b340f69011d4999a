"""Run several vpltool commands one after the other in this one process; write each one's seconds and peak memory.

    python bench/run_in_one.py RESULT.json COMMANDS.json

``COMMANDS.json``: a list of vpltool argument lists (``[["extract", "world", ...], ["cam", ...]]``). ``RESULT.json``
gets ``[[wall seconds, peak RSS MiB], ...]``, one pair per command, in order. The peak is per command where Linux
lets the counter be reset (``sidebyside.reset_peak``), else this process's peak so far.

For the benchmarks' ``--quick`` smoke tests (:func:`benchlib.run_children_in_one`): each vpltool process pays
3-4 CPU-s of start-up (torch, open_clip), more than a tiny quick stage itself; the full benchmarks keep one process
per stage, since that start-up is part of what they measure. A command that fails stops the run (exit status 1,
its traceback on stderr).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from sidebyside import peak_rss_mib, reset_peak


def main() -> None:
    result, commands = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
    from vpltool.cli import app

    measured = []
    for args in commands:
        reset_peak()
        start = time.perf_counter()
        try:
            app(args=[str(a) for a in args], prog_name="vpltool", standalone_mode=False)
        except SystemExit as stop:  # friendly_errors' one-line refusal (exit 2), or a command's own exit
            if stop.code not in (0, None):
                raise
        measured.append([time.perf_counter() - start, peak_rss_mib() or 0.0])
    result.write_text(json.dumps(measured))


if __name__ == "__main__":
    main()
