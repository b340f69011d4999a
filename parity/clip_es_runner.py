"""Run the ORIGINAL CLIP-ES CAM script, unmodified, on a CPU in fp32 (or on CUDA as it is): the other side of
`bench_cam.py`.

    python clip_es_runner.py --clip-es /path/to/CLIP-ES --voc VOC_ROOT --model W.pt --out CAM_DIR [--threads 1]
    python clip_es_runner.py ... --device cuda     # on the GPU, unpatched (only 1, 5 and 6 below)

Run it with a Python that has CLIP-ES's requirements (torch, ftfy, regex, lxml, ttach, opencv, ``setuptools<81``
for ``pkg_resources``). CLIP-ES's code is never copied or edited (it cannot enter this repository); its
``generate_cams_voc12.py`` runs through ``runpy`` with ``sys.argv`` as its README writes it, and only what a CPU run
needs is patched around it, undone afterwards:

1. ``torch.set_num_threads(threads)`` (and OpenCV's), as the vpltool side of the benchmark;
2. ``torch.cuda.is_available -> False``: on a GPU machine ``clip.load`` would otherwise keep the model in fp16;
3. ``torch.cuda.device_count -> 1``: ``perform()`` computes ``process_id % n_gpus`` (a division by zero without one);
4. ``Tensor.to`` / ``Module.to`` send a ``cuda*`` device to the CPU: ``perform()`` moves everything to ``"cuda:0"``;
5. ``sys.path[0]`` and the working directory are the clone (its ``clip``, ``utils``, ``clip_text`` and
   ``pytorch_grad_cam`` are top-level imports), ``--num_workers 1`` (``perform`` is called in-process);
6. ``np.loadtxt`` returns at least one dimension: the script reads its split with it, and a one-line split file
   would be a 0-d array it cannot iterate (the one-image timing needs one).

Script limit worth knowing: the output size comes from the XML ``<size>``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import runpy
import sys
from pathlib import Path


@contextlib.contextmanager
def cpu_patches(clone: Path, argv: list[str], threads: int, device: str = "cpu"):
    """The patches of the module docstring; with ``device`` cuda only 1, 5 and 6: CLIP-ES runs on the GPU as its
    README runs it (fp16 model, ``cuda:0``), unpatched."""
    import torch

    torch.set_num_threads(threads)
    if device != "cpu":
        with _path_patches(clone, argv):
            yield
        return
    with contextlib.suppress(ImportError):
        import cv2

        cv2.setNumThreads(threads)

    def cpu(dev):
        if isinstance(dev, str) and dev.startswith("cuda"):
            return "cpu"
        return torch.device("cpu") if isinstance(dev, torch.device) and dev.type == "cuda" else dev

    def moved(to):
        def patched(self, *args, **kwargs):
            if "device" in kwargs:
                kwargs["device"] = cpu(kwargs["device"])
            return to(self, *(cpu(a) for a in args), **kwargs)
        return patched

    saved = (torch.Tensor.to, torch.nn.Module.to, torch.cuda.device_count, torch.cuda.is_available)
    torch.Tensor.to, torch.nn.Module.to = moved(saved[0]), moved(saved[1])
    torch.cuda.device_count, torch.cuda.is_available = (lambda: 1), (lambda: False)
    try:
        with _path_patches(clone, argv):
            yield
    finally:
        torch.Tensor.to, torch.nn.Module.to, torch.cuda.device_count, torch.cuda.is_available = saved


@contextlib.contextmanager
def _path_patches(clone: Path, argv: list[str]):
    """Patches 5 and 6: the clone first on ``sys.path`` and as the working directory, its argv, a 1-d loadtxt."""
    import numpy as np

    saved = (list(sys.path), list(sys.argv), os.getcwd(), np.loadtxt)
    np.loadtxt = lambda *a, **k: np.atleast_1d(saved[3](*a, **k))
    sys.path.insert(0, str(clone))
    sys.argv = argv
    os.chdir(clone)
    try:
        yield
    finally:
        sys.path[:], sys.argv = saved[0], saved[1]
        os.chdir(saved[2])
        np.loadtxt = saved[3]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clip-es", type=Path, required=True, help="a clone of linyq2117/CLIP-ES")
    ap.add_argument("--voc", type=Path, required=True, help="a VOC root: JPEGImages, Annotations, ImageSets")
    ap.add_argument("--model", type=Path, required=True, help="CLIP weights clip.load accepts (a .pt)")
    ap.add_argument("--out", type=Path, required=True, help="where its .npy CAM files go")
    ap.add_argument("--split", default="train")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu (patched onto the CPU, fp32) | cuda (unpatched, its fp16)")
    args = ap.parse_args(argv)
    clone, voc = args.clip_es.resolve(), args.voc.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    script = ["generate_cams_voc12.py", "--img_root", str(voc / "JPEGImages"), "--split_file",
              str(voc / "ImageSets" / "Segmentation" / f"{args.split}.txt"), "--model", str(args.model.resolve()),
              "--num_workers", "1", "--cam_out_dir", str(args.out.resolve())]
    with cpu_patches(clone, script, args.threads, args.device):
        runpy.run_path(str(clone / "generate_cams_voc12.py"), run_name="__main__")


if __name__ == "__main__":
    main()
