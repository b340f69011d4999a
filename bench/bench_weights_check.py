"""What the registry's weights rule costs on the largest model file at hand: a ViT-B/16-sized CLIP.

    python bench/bench_weights_check.py [--repeats 5] [--model ViT-B-16]

Saves seeded random fp32 weights of the open_clip architecture ``--model`` (ViT-B/16: 150 M weights, 0.6 GB) as a
``local-dir`` folder, then, with one thread, in CPU-seconds (user + sys, this process), the minimum and median of
``--repeats`` runs of:

* ``load_model``: the whole load through the registry (open_clip builds the model, the file is read into the
  process's own memory by ``io.read_safetensors``, the weights rule, the files' stamps), the page cache warm;
* ``certify``: the rule alone (``torch.aminmax`` over every floating-point tensor of the loaded model's state);
* ``isfinite_all``: the same check written as ``torch.isfinite(t).all()`` (what ``io.check_weights`` did), for
  comparison;
* ``load_file_mapped``: ``safetensors.torch.load_file`` (the file mapped, what open_clip did) against
  ``read_safetensors`` (read into memory), each followed by one pass over every tensor (so the mapped pages are
  read too).

Prints one JSON object (``bench/results/weights_check.json`` holds a run).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

from benchlib import machine


def cpu_s(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    """Min and median CPU-seconds (user + sys of this process) of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_SELF)
        fn()
        after = resource.getrusage(resource.RUSAGE_SELF)
        times.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return {"min_cpu_s": round(min(times), 3), "median_cpu_s": round(statistics.median(times), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from safetensors.torch import load_file, save_file

    from vpltool.io import read_safetensors
    from vpltool.models import ModelSpec, load_model
    from vpltool.models.backbones.loading import import_open_clip
    from vpltool.models.registry import certify

    open_clip = import_open_clip()
    with tempfile.TemporaryDirectory(prefix="vpltool-weights-check-") as tmp:
        folder = Path(tmp) / "clip"
        folder.mkdir()
        torch.manual_seed(0)
        model = open_clip.create_model(args.model, pretrained=None)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(folder / "open_clip_model.safetensors"))
        (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": open_clip.get_model_config(
            args.model), "preprocess_cfg": {}}))
        del model
        weights = folder / "open_clip_model.safetensors"
        spec = ModelSpec(f"local-dir:{folder}")
        load_model("clip", spec)  # warm: the page cache and the imports
        loaded = load_model("clip", spec).model

        def floats(tensors) -> None:
            for t in tensors.values():
                if t.is_floating_point():
                    t.sum()

        out = {
            "machine": machine(), "model": args.model, "repeats": args.repeats, "threads": 1,
            "weights": sum(v.numel() for v in state.values()), "file_bytes": weights.stat().st_size,
            "load_model": cpu_s(lambda: load_model("clip", spec), args.repeats),
            "certify": cpu_s(lambda: certify(loaded, str(folder)), args.repeats),
            "isfinite_all": cpu_s(lambda: all(bool(torch.isfinite(t).all()) for t in loaded.state_dict().values()
                                              if t.is_floating_point()), args.repeats),
            "load_file_mapped_and_read": cpu_s(lambda: floats(load_file(str(weights))), args.repeats),
            "read_safetensors_and_read": cpu_s(lambda: floats(read_safetensors(weights)), args.repeats),
        }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
