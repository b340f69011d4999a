"""One-image `cam`'s start-up, phase by phase, in this fresh process; prints ONE JSON object (bench_cam.py runs it).

    python bench/startup_phases.py VOC_ROOT PROTOTYPES OUT [--device cuda]

What a user's ``vpltool cam VOC_ROOT --split train -p PROTOTYPES -o OUT`` on one image spends before its image's
own work, in the order the command meets it (each phase's seconds, measured from the end of the one before):

* ``import_torch``, ``import_open_clip`` (with what it imports: timm, torchvision), ``import_vpltool`` (the CLI);
* ``device_init``: the device's context and its first kernel and matrix product (CUDA: the context, the kernels'
  lazy loading, cuBLAS's handle; 0 on a CPU);
* ``load_backbone``: the model built and its weights read onto the device;
* ``first_call``: the stage's library call on the one image (its loading process, every kernel's first launch);
* ``second_call``: the same call again in the same process, warm: ``first_call - second_call`` is what the
  stage's first call pays once.

The process's start (the interpreter, before its first line) is the parent's wall time less ``total``.
"""

from __future__ import annotations

import time

START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("voc")
    ap.add_argument("prototypes")
    ap.add_argument("out")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto")
    args = ap.parse_args(argv)
    phases: dict[str, float] = {}
    last = [START]

    def mark(name: str) -> None:
        now = time.perf_counter()
        phases[name] = round(now - last[0], 3)
        last[0] = now

    import torch

    mark("import_torch")
    from vpltool.models.backbones.loading import import_open_clip

    import_open_clip()
    mark("import_open_clip")
    import vpltool.cli  # noqa: F401  (what the command imports before it runs)
    from vpltool import io
    from vpltool.config import RuntimeConfig
    from vpltool.device import resolve_device
    from vpltool.models import ModelSpec, load_backbone
    from vpltool.stages.cam import run_cam

    mark("import_vpltool")
    device = resolve_device(args.device)
    if device.type == "cuda":
        x = torch.ones(64, 64, device=device)
        (x @ x).sum().item()
    mark("device_init")
    bb = load_backbone(ModelSpec.from_identity(io.read_prototypes(args.prototypes).model), device)
    mark("load_backbone")
    runtime = RuntimeConfig(device=args.device, precision=args.precision, overwrite=True)
    for name in ("first_call", "second_call"):
        run_cam(args.voc, args.prototypes, args.out, runtime=runtime, split="train", backbone=bb)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        mark(name)
    json.dump({"phases_s": phases, "total_s": round(time.perf_counter() - START, 3),
               "once_in_first_call_s": round(phases["first_call"] - phases["second_call"], 3)}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
