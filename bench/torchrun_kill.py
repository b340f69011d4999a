"""Kill one of two torchrun nodes mid-stage, and show what the other node says and how soon it ends (issue 38).

    python bench/torchrun_kill.py [--stage extract|train-decoder] [--victim 0|1]

Two ``torchrun --nnodes 2 --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:PORT`` agents on this machine (gloo, the
tests' tiny world and model, CPU), as tests/test_torchrun.py starts them; once the stage has written its first file
the victim node (its agent and worker, as a machine that dies) gets SIGKILL. The other node's worker notices the
closed connection (vpltool's one ``error:`` line, exit 2); where the victim is node 0, which hosts the rendezvous,
node 1's agent may stop its worker first (vpltool's SIGTERM line). The test covers node 1 killed during extract;
this script the four cases, by hand. Prints the surviving node's vpltool lines, its exit code and the seconds from
the kill to its end.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import robustness_cases as rc  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", choices=("extract", "train-decoder"), default="extract")
    ap.add_argument("--victim", type=int, choices=(0, 1), default=1)
    args = ap.parse_args()
    rc.configure_environment()
    import test_torchrun as tt  # after the environment: it imports vpltool

    from vpltool.demo.make_world import write_dataset

    with tempfile.TemporaryDirectory(prefix="vpltool-torchrun-kill-") as tmp:
        root = Path(tmp)
        world = write_dataset(root / "world", n_train=6, n_val=3, seed=0)
        rc.cli_ok("extract", world, "-o", root / "features", *rc.TINY, *rc.CPU, "--workers", "1")
        rc.cli_ok("text-prototypes", root / "features", "-o", root / "text.safetensors", *rc.TEXT_ARGS, *rc.CPU)
        if args.stage == "extract":
            command = [sys.executable, "-c", rc.PACED_CLI, "extract", str(world), "-o", str(root / "out"), *rc.TINY,
                       *rc.CPU, "--workers", "1"]
            started = lambda: any((root / "out").glob("*.safetensors"))  # noqa: E731
        else:
            pseudo = root / "pseudo"
            for stage in (["cam", root / "features", "-p", root / "text.safetensors", "-o", root / "cams"],
                          ["crf", root / "cams", "-o", pseudo, "--backend", "torch"]):
                rc.cli_ok(*stage, *rc.CPU, "--workers", "1")
            command = [sys.executable, "-m", "vpltool", "train-decoder", str(pseudo), "-p",
                       str(root / "text.safetensors"), "-o", str(root / "out"), "--iters", "5000", "--batch-size",
                       "1", "--dim", "16", "--layers", "1", "--heads", "2", "--crop-size", "64",
                       "--checkpoint-every", "5", *rc.CPU, "--workers", "1"]
            started = (root / "out" / "checkpoints" / "last.safetensors").is_file
        nodes = tt._nodes(command, root / "logs")
        deadline = time.monotonic() + tt.AGENT_TIMEOUT_S
        while not started():
            if time.monotonic() > deadline or any(node.poll() is not None for node in nodes):
                sys.exit(f"the stage did not start: {(root / 'logs' / 'node0.log').read_text()[-2000:]}")
            time.sleep(0.05)
        tt._kill_node(nodes[args.victim])
        start = time.monotonic()
        survivor = 1 - args.victim
        code = tt._wait(nodes[survivor], timeout=tt.AGENT_TIMEOUT_S)
        print(f"node {args.victim} killed during {args.stage}; node {survivor}'s torchrun exited {code} after "
              f"{time.monotonic() - start:.1f} s; vpltool said:")
        for line in tt._vpltool_lines(root / "logs" / f"node{survivor}.log"):
            print(f"  {line}")


if __name__ == "__main__":
    main()
