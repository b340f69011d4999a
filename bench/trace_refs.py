"""Which files of the reference clones a command's Python processes open: the list ``bench/gpu_session.sh refs``
carries (``bench/refs_manifest.txt``), so that a machine without network gets only what the references' arithmetic
reads (their code, configs, class files and vocabularies), not their images, notebooks and other models.

    python bench/trace_refs.py --refs DIR -- python bench/bench_vs_reference.py --refs DIR --pairs 0 --methods M

runs the command with an audit hook in every Python process it starts (a ``sitecustomize`` on ``PYTHONPATH``; the
``open`` event, which imports raise too) and prints, one a line and sorted, the paths relative to ``DIR`` of the
files under it that were opened (compiled caches left out). Each run adds to ``--log`` (default: a temporary file),
so several commands' files add up. Exits with the command's status.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HOOK = '''
import os, sys
_LOG, _ROOT = os.environ["VPLTOOL_TRACE_LOG"], os.environ["VPLTOOL_TRACE_ROOT"]
def _opened(event, args):
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        try:
            path = os.path.realpath(os.fsdecode(args[0]))
        except (TypeError, ValueError, OSError):
            return
        if path.startswith(_ROOT + os.sep):
            with open(_LOG, "a") as f:
                f.write(path + "\\n")
sys.addaudithook(_opened)
'''


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--refs", type=Path, required=True, help="the folder of the clones")
    ap.add_argument("--log", type=Path, help="the opened paths, one a line (added to)")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ...")
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("give the command after --")
    root = os.path.realpath(args.refs)
    with tempfile.TemporaryDirectory(prefix="trace_refs_") as tmp:
        (Path(tmp) / "sitecustomize.py").write_text(HOOK)
        log = args.log or Path(tmp) / "opened.txt"
        log.touch()
        env = {**os.environ, "VPLTOOL_TRACE_LOG": str(log.resolve()), "VPLTOOL_TRACE_ROOT": root,
               "PYTHONPATH": os.pathsep.join(filter(None, [tmp, os.environ.get("PYTHONPATH")]))}
        status = subprocess.call(command, env=env)
        opened = {os.path.relpath(p, root) for p in log.read_text().splitlines()
                  if p and os.path.isfile(p) and "__pycache__" not in p}
    print("\n".join(sorted(opened)))
    return status


if __name__ == "__main__":
    sys.exit(main())
