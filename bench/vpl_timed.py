"""Runs ``vpltool ARGS`` and appends one JSON line to ``$VPL_TIMED_LOG``: the command, its arguments, its CPU
seconds (user + system, children included) and its peak RSS. ``bench_demo.py --per-command`` passes it as the
Makefile's ``VPL`` so that every stage process `make demo` starts is timed on its own (where the time goes). A ``VPL``
given on make's command line bypasses `make demo`'s fork server (vpltool/runtime/forkserver.py): each command is a
process of its own again, its imports included, so these figures are the plain processes' (FORK_SERVER=0's).

    VPL_TIMED_LOG=FILE python -S bench/vpl_timed.py VPLTOOL ARGS...

Started with ``-S`` (no site imports: ~10 ms), so its own cost is small beside a stage's.
"""

import json
import os
import resource
import subprocess
import sys


def main() -> int:
    vpltool, *args = sys.argv[1:]
    rc = subprocess.call([vpltool, *args])
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    record = {"command": args[0] if args else "", "args": " ".join(args[1:4]), "rc": rc,
              "cpu_s": round(use.ru_utime + use.ru_stime, 2), "rss_mib": round(use.ru_maxrss / 1024, 1)}
    with open(os.environ["VPL_TIMED_LOG"], "a") as log:  # one short line: appends from parallel stages don't mix
        log.write(json.dumps(record) + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
