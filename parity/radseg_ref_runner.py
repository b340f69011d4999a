"""Run RADSeg's OWN segmentor (RADSeg-OVSS/RADSeg ``evaluation/2d/radseg_segmentor.py`` over ``radseg/radseg.py``,
C-RADIOv3 built by NVlabs/RADIO's own hub code) from clones, on the CPU in fp32, without mmseg / mmcv / mmengine:
the reference half of ``radseg_parity.py``.

    python radseg_ref_runner.py --clone RADSeg --radio-clone RADIO --checkpoint radio.pth.tar \\
        --text-folder TEXT --out OUT PHOTO.jpg ... [--config ...mid_res_configs/cfg_voc20.py] [--threads 1]

It imports nothing from vpltool. Around the clones' unchanged code:

1. ``dense_ref_runner.py``'s OpenMMLab stubs (``BaseSegmentor``, ``SegDataPreProcessor``, ``MODELS``,
   ``PixelData``); segment-anything, timm, einops, transformers and scikit-image are the real ones;
2. ``torch.hub.load("NVlabs/RADIO", "radio_model", version=..., adaptor_names=[...])`` is that entry of
   ``--radio-clone`` (``source='local'``) with ``version`` the local ``--checkpoint`` (its hub code reads a file
   path as the checkpoint: ``hubconf.py`` ``radio_model``);
3. RADIO's SigLIP 2 adaptor loads ``google/siglip2-giant-opt-patch16-384`` with ``AutoModel`` / ``AutoProcessor``:
   the run's working folder holds ``google/siglip2-giant-opt-patch16-384`` (a link to ``--text-folder``), which
   transformers reads as a local folder;
4. the segmentor's arguments are the config's (``_base_`` first), ``device='cpu'``, ``name_path`` the config's
   class file (or ``--classes``: a file of the run's queries), ``--overrides`` over them;
5. each photo goes through mmseg's test pipeline restated (``dense_ref_runner.mmseg_input``; the preprocessor's
   CLIP mean / std, BGR to RGB), its ``Resize``'s short side ``--short-side`` when given.

Outputs in ``--out``: ``meta.json``, ``text.pt`` (``text_embeds``) and per photo ``photo_NNN.pt``: the normalised
input ``[1, 3, H, W]``, ``probs`` ``[Q, H0, W0]`` (``seg_logits``) and ``pred`` ``[1, H0, W0]`` (``pred_sem_seg``),
``feat`` ``[1, C, h, w]`` (the windows' features before the global aggregation), ``grid_probs`` ``[1, Q, h, w]``
(the query probabilities on the patch grid) and ``probs_plain`` / ``pred_plain``: its ``predict`` again with
``prompt_denoising_thresh`` 0.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dense_ref_runner import Sample, install_openmmlab_stubs, mmseg_input, read_config  # noqa: E402

HUB_TEXT = "google/siglip2-giant-opt-patch16-384"  # radio/siglip2_adaptor.py _VERSION_MAP['siglip2-g-384']


@contextlib.contextmanager
def local_radio_hub(radio_clone: Path, checkpoint: Path):
    """Point 2: ``torch.hub.load('NVlabs/RADIO', 'radio_model', ...)`` from the clone, on the local checkpoint."""
    import torch

    load = torch.hub.load

    def local(repo, entry, *args, version="", progress=True, skip_validation=False, **kwargs):
        assert repo == "NVlabs/RADIO" and entry == "radio_model", (repo, entry)
        return load(str(radio_clone), entry, *args, source="local", version=str(checkpoint), **kwargs)

    torch.hub.load = local
    try:
        yield
    finally:
        torch.hub.load = load


@contextlib.contextmanager
def outputs_seen(enc, seen: dict):
    """The windows' averaged features (``_sliding_inference``'s output) and the query probabilities on the patch
    grid (``_get_seg_logits``'s) recorded per photo."""
    inner = {name: getattr(enc, name) for name in ("_sliding_inference", "_get_seg_logits")}

    def recorder(name, key):
        def record(*a, **k):
            out = inner[name](*a, **k)
            seen[key] = out.detach().clone()
            return out
        return record

    enc._sliding_inference = recorder("_sliding_inference", "feat")
    enc._get_seg_logits = recorder("_get_seg_logits", "grid_probs")
    try:
        yield
    finally:
        for name, fn in inner.items():
            setattr(enc, name, fn)


@contextlib.contextmanager
def segmentor(args, out: Path):
    """Points 1-4: the clone's ``RADSegSegmentation`` built from ``args`` (this runner's options), its hub name for
    SigLIP 2 resolved in ``out / 'hub_home'``; yields ``(segmentor, config)`` with the clone on ``sys.path`` and
    that folder the working directory (its SigLIP 2 adaptor reads the folder again when it tokenizes)."""
    install_openmmlab_stubs()
    clone, radio = args.clone.resolve(), args.radio_clone.resolve()
    home = out / "hub_home"  # point 3: the hub name resolves to a local folder in the working directory
    (home / HUB_TEXT).parent.mkdir(parents=True, exist_ok=True)
    link = home / HUB_TEXT
    if not link.exists():
        link.symlink_to(args.text_folder.resolve(), target_is_directory=True)
    cfg = read_config(clone / "evaluation" / "2d", args.config)
    if args.short_side:
        cfg["scale"] = (max(cfg["scale"]), args.short_side)
    kwargs = {k: v for k, v in cfg["model"].items() if k != "type"}
    name_path = args.classes.resolve() if args.classes else (clone / "evaluation" / "2d" / kwargs["name_path"])
    kwargs.update(name_path=str(name_path.resolve()), device="cpu", **json.loads(args.overrides))
    cfg["kwargs"] = kwargs
    saved = (list(sys.path), os.getcwd())
    sys.path[:0] = [str(clone / "evaluation" / "2d"), str(clone)]
    os.chdir(home)
    try:
        mod = importlib.import_module("radseg_segmentor")
        with local_radio_hub(radio, args.checkpoint.resolve()):
            seg = mod.RADSegSegmentation(**kwargs).eval()
        yield seg, cfg
    finally:
        sys.path[:] = saved[0]
        os.chdir(saved[1])


def run(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    photos = [p.resolve() for p in args.photos]
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with segmentor(args, out) as (seg, cfg):
        enc = seg.model
        torch.save({"text_embeds": enc.text_embeds.float().clone()}, out / "text.pt")
        pre = seg.data_preprocessor.kwargs
        shapes = []
        for i, path in enumerate(photos):
            x, ori = mmseg_input(path, cfg["scale"], pre)
            sample = Sample({"ori_shape": ori, "img_shape": tuple(x.shape[-2:]), "img_path": str(path)})
            seen: dict = {}
            t0 = time.perf_counter()
            with outputs_seen(enc, seen):
                seg.predict(x, [sample])
            seconds = time.perf_counter() - t0
            # its segmentor again without the prompt denoising (threshold 0): with random weights no prompt may
            # reach 0.5 anywhere, which leaves every query probability 0 and every label its first prompt
            plain = Sample(sample.metainfo)
            threshold, enc.prompt_denoising_thresh = enc.prompt_denoising_thresh, 0.0
            seg.predict(x, [plain])
            enc.prompt_denoising_thresh = threshold
            torch.save({"input": x, "probs": sample.data["seg_logits"].data.float(),
                        "pred": sample.data["pred_sem_seg"].data, "feat": seen["feat"],
                        "grid_probs": seen["grid_probs"], "probs_plain": plain.data["seg_logits"].data.float(),
                        "pred_plain": plain.data["pred_sem_seg"].data}, out / f"photo_{i:03d}.pt")
            shapes.append({"file": path.name, "ori_shape": list(ori), "input_shape": list(x.shape[-2:]),
                           "seconds": round(seconds, 2)})
    meta = {"kwargs": cfg["kwargs"], "resize_scale": list(cfg["scale"]), "preprocessor": pre, "prompts": enc.prompts,
            "photos": shapes, "effective": {k: getattr(enc, k) for k in (
                "slide_crop", "slide_stride", "scga_scaling", "prompt_denoising_thresh", "prediction_thresh")},
            "seconds": round(time.perf_counter() - start, 1), "torch": torch.__version__, "threads": args.threads}
    (out / "meta.json").write_text(json.dumps(meta, indent=1, default=str))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photos", type=Path, nargs="+")
    ap.add_argument("--clone", type=Path, required=True, help="a clone of RADSeg-OVSS/RADSeg")
    ap.add_argument("--radio-clone", type=Path, required=True, help="a clone of NVlabs/RADIO (hubconf.py)")
    ap.add_argument("--checkpoint", type=Path, required=True, help="RADIO's checkpoint (args + state_dict)")
    ap.add_argument("--text-folder", type=Path, required=True, help="SigLIP 2's Hugging Face folder")
    ap.add_argument("--config", default="configs/mid_res_configs/cfg_voc20.py")
    ap.add_argument("--classes", type=Path, default=None, help="a class file in place of the config's name_path")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--overrides", default="{}", help="JSON: segmentor keyword arguments over the config's")
    ap.add_argument("--short-side", type=int, default=0, help="the Resize's short side in place of the config's")
    ap.add_argument("--threads", type=int, default=1)
    run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
