"""Run TextRegion's OWN segmentor (avaxiao/TextRegion ``model_semantic.py``, ``CLIPWithSAM2ForSegmentation``) from a
clone, on the CPU in fp32 arithmetic (its weights rounded to fp16 values: 3. below), without mmseg / mmengine / SAM 2:
the reference half of ``textregion_parity.py``.

    python textregion_ref_runner.py --clone TextRegion --clip-weights W.pt --masks NPZ_DIR --out OUT \\
        PHOTO.jpg ... [--config configs/cfg_ds/cfg_voc21.py] [--threads 1]

It imports nothing from vpltool. Around the clone's unchanged code:

1. ``dense_ref_runner.py``'s OpenMMLab stubs (``BaseSegmentor``, ``SegDataPreProcessor``, ``MODELS``,
   ``PixelData``); ``matplotlib`` (its visualisation helpers, not run) and ``pkg_resources`` (its CLIP copy's
   version check) stubbed where missing;
2. ``sam2`` stubbed: ``build_sam2`` builds nothing and ``CustomAutomaticMaskGenerator.generate_for_batch`` returns
   the photo's masks read from ``--masks`` (``<stem>.npz``, key ``masks``: ``[R, H0, W0]``, as its generator's
   ``segmentations`` are, float16) so that both sides pool over the same regions; its ``predictor._transforms`` (the
   image's SAM 2 input) is the identity, which only that generator reads;
3. ``clip_pretrained='openai'`` with ``clip_architecture`` = ``--clip-weights`` (a state dict in OpenAI's layout),
   which its ``custom_clip.load`` builds with OpenAI's ``build_model``: that converts the linear, convolution and
   attention weights and ``proj`` / ``text_projection`` to fp16 (``convert_weights``), and ``load`` then calls
   ``model.float()`` on the CPU. So "fp32" here is the arithmetic: the weights are the file's rounded to fp16
   values (the parity's are fp16 values already, ``bench_cam.make_weights``; with an fp32 checkpoint its logits
   move from vpltool's, which keeps the file's values: ``textregion_parity.py --rounding-images``);
4. the hard-coded ``.to(device="cuda")`` of its ``predict`` goes to the CPU, and ``torch.cuda.is_bf16_supported``
   is False there, so its autocast is fp32;
5. the segmentor's arguments are ``--config``'s (``_base_`` first, ``sam2_cfg`` merged as mmengine merges it),
   with ``config`` the config's path (its ``"city_scape" in self.config`` test), ``device='cpu'``, ``dtype='fp32'``;
6. each photo goes through mmseg's test pipeline restated (``dense_ref_runner.mmseg_input``: its ``Resize`` scale,
   ``SegDataPreProcessor(bgr_to_rgb=True)``: RGB 0..255, no mean or std).

With ``--generator``, the masks instead: its SAM 2 generator itself (no stub; the clone's ``sam2`` fork, which needs
``hydra-core``), made by its own ``load_sam2`` with the config's ``sam2_cfg`` on ``--sam2-config`` and
``--sam2-checkpoint``, run on each photo as its ``predict`` runs it (the resized input, its ``sam_transform``,
``generate_for_batch`` for the photo's original size; ``--points-per-batch`` in place of its 2048, which needs
~10 GB on a CPU); ``masks_NNN.pt`` holds the stacked ``segmentations``
``[R, H0, W0]``. CLIP is not built.

Outputs in ``--out``: ``meta.json`` (the arguments, the query words and their classes, the photos' sizes),
``text.pt`` (``query_features``) and per photo ``photo_NNN.pt``: the input ``[1, 3, H, W]``, ``region_logits``
``[R', Q]`` and the kept ``region_masks`` ``[R', H0, W0]`` and ``clip_logits`` ``[1, Q, h, w]`` (what ``predict``
hands ``postprocess_result``), ``logits`` ``[1, Q, H0, W0]`` (what its softmax receives, divided by its
``region_logit_scale``), ``probs`` ``[1, C, H0, W0]`` and ``pred`` ``[H0, W0]`` (what ``postprocess_result``
returns) and ``pred_argmax`` (its ``postprocess_result`` again with ``prob_thd`` 0). ``meta.json`` also holds each
photo's ``predict`` CPU-seconds (its masks handed over at once: ``bench/bench_textregion.py`` reads them) and the
process's peak resident memory (``rss_peak_mib``: Linux's ``VmHWM``, its building included). ``--count-flops``: each
photo's ``predict`` once more after its outputs are saved, untimed, under torch's FLOP counter
(``bench/sidebyside.py``'s ``count_flops``): ``predict_gflop``, the arithmetic the bench's floor is made of.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dense_ref_runner import (  # noqa: E402
    STUBBED,
    Sample,
    install_openmmlab_stubs,
    install_pkg_resources_stub,
    mmseg_input,
    stub_if_missing,
)
from refstubs import MmcvConfig, in_clone, stub_module  # noqa: E402


class FedMasks:
    """The stand-in of TextRegion's ``CustomAutomaticMaskGenerator`` (point 2): it returns :attr:`current`."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.current = None
        self.predictor = type("Predictor", (), {"_transforms": staticmethod(lambda x: x)})()

    def generate_for_batch(self, image_tensor_for_sam2=None, size_hw_list=None, image=None):
        return [[{"segmentations": m} for m in self.current]]


def install_sam2_stub() -> None:
    stub_module("sam2")
    stub_module("sam2.build_sam", build_sam2=lambda *a, **k: None)
    stub_module("sam2.custom_automatic_mask_generator", CustomAutomaticMaskGenerator=FedMasks)
    STUBBED.append("sam2")


@contextlib.contextmanager
def cuda_to_cpu():
    """Point 4: ``Tensor.to`` with a CUDA device (positional or ``device=``) moves to the CPU."""
    import torch

    to = torch.Tensor.to

    def cpu_to(self, *a, **k):
        a = tuple("cpu" if isinstance(x, str) and x.startswith("cuda") else x for x in a)
        if isinstance(k.get("device"), str) and k["device"].startswith("cuda"):
            k["device"] = "cpu"
        return to(self, *a, **k)

    torch.Tensor.to = cpu_to
    try:
        yield
    finally:
        torch.Tensor.to = to


@contextlib.contextmanager
def softmax_seen(seen: dict, scale: float):
    """What ``postprocess_result``'s ``torch.softmax`` receives, divided by ``scale`` (its ``region_logit_scale``)."""
    import torch

    softmax = torch.softmax

    def recorded(x, *a, **k):
        seen["logits"] = (x / scale).detach().clone()
        return softmax(x, *a, **k)

    torch.softmax = recorded
    try:
        yield
    finally:
        torch.softmax = softmax


def read_config(clone: Path, config: str) -> dict:
    """The ``model`` dict (nested dicts merged, as mmengine merges ``_base_``) and the ``Resize`` scale."""
    path = (clone / config).resolve()
    chain = []
    while True:
        chain.append(path)
        ns: dict = {}
        exec(compile(path.read_text(), str(path), "exec"), ns)  # noqa: S102 - the clone's own config file
        if not ns.get("_base_"):
            break
        path = (path.parent / ns["_base_"]).resolve()
    model, scale = {}, None
    for p in reversed(chain):
        ns = {}
        exec(compile(p.read_text(), str(p), "exec"), ns)  # noqa: S102
        for k, v in ns.get("model", {}).items():
            model[k] = {**model.get(k, {}), **v} if isinstance(v, dict) else v
        for step in ns.get("test_pipeline", []):
            if step.get("type") == "Resize":
                scale = tuple(step["scale"])
    return {"model": model, "scale": scale}


def run_generator(args, mod, cfg: dict, out: Path) -> list[dict]:
    """``--generator``: the clone's own SAM 2 generator on each photo, as its ``predict`` calls it."""
    import torch

    gen = mod.load_sam2(MmcvConfig(cfg["model"]["sam2_cfg"]), "hiera_t", args.sam2_config,
                        str(args.sam2_checkpoint.resolve()))
    if args.points_per_batch:  # its 2048 repeats the image's features 2048 times: ~10 GB on a CPU
        gen.points_per_batch = args.points_per_batch
    pre = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "bgr_to_rgb": True}
    shapes = []
    for i, path in enumerate(args.photos):
        x, ori = mmseg_input(path.resolve(), cfg["scale"], pre)
        with torch.inference_mode():
            image = x[0].permute(1, 2, 0).to(dtype=torch.float32)
            masks = gen.generate_for_batch(gen.predictor._transforms(torch.stack([image])), [ori], None)
        stacked = torch.stack([m["segmentations"] for m in masks[0]]) if masks[0] else torch.zeros(0, *ori)
        torch.save({"masks": stacked.clone()}, out / f"masks_{i:03d}.pt")
        shapes.append({"file": path.name, "ori_shape": list(ori), "input_shape": list(x.shape[-2:]),
                       "regions": int(len(stacked))})
    return shapes


def peak_rss_mib() -> float | None:
    """This process's peak resident memory in MiB: ``VmHWM`` of its own address space (``ru_maxrss`` would count
    the parent's at the fork), None where there is no ``/proc``."""
    try:
        with open("/proc/self/status") as f:
            return round(next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024, 1)
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def run(args) -> None:
    import numpy as np
    import torch

    if args.count_flops:  # the bench's FLOP counter (bench/sidebyside.py: no vpltool import), imported once
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
        from sidebyside import count_flops

    torch.set_num_threads(args.threads)
    install_openmmlab_stubs()
    install_pkg_resources_stub()
    if not args.generator:
        install_sam2_stub()
    clone = args.clone.resolve()
    photos = [p.resolve() for p in args.photos]
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with in_clone(clone):
        stub_if_missing("matplotlib.pyplot")
        stub_if_missing("matplotlib.patches", Patch=None)
        cfg = read_config(clone, args.config)
        if args.scale:
            cfg["scale"] = tuple(json.loads(args.scale))
        mod = importlib.import_module("model_semantic")
        if args.generator:
            meta = {"photos": run_generator(args, mod, cfg, out), "resize_scale": list(cfg["scale"]),
                    "sam2_cfg": cfg["model"]["sam2_cfg"], "stubbed": STUBBED,
                    "seconds": round(time.perf_counter() - start, 1), "torch": torch.__version__}
            (out / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
            return
        kwargs = {k: v for k, v in cfg["model"].items() if k != "type"}
        names = args.name_path or clone / kwargs["name_path"]  # --name-path: the merge's parity
        kwargs.update(name_path=str(names.resolve()), clip_pretrained="openai",
                      clip_architecture=str(args.clip_weights.resolve()), clip_download_root=None,
                      config=args.config, device="cpu", dtype="fp32", sam2_cfg=MmcvConfig(kwargs["sam2_cfg"]),
                      **json.loads(args.overrides))
        with torch.no_grad():
            seg = mod.CLIPWithSAM2ForSegmentation(**kwargs).eval()
        torch.save({"query_features": seg.query_features.float().clone()}, out / "text.pt")
        words, idx = mod.get_cls_idx(kwargs["name_path"])
        pre = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "bgr_to_rgb": True}  # SegDataPreProcessor(bgr_to_rgb)
        shapes = []
        for i, path in enumerate(photos):
            x, ori = mmseg_input(path, cfg["scale"], pre)
            with np.load(args.masks / f"{path.stem}.npz") as f:
                seg.sam2_generator.current = torch.from_numpy(f["masks"])
            sample = Sample({"ori_shape": ori, "img_shape": tuple(x.shape[-2:]), "img_path": str(path)})
            sample.ori_shape = ori  # mmseg's SegDataSample reads its metainfo as attributes
            seen: dict = {}
            post = seg.postprocess_result

            def recorded(region_logits, region_masks, shape, ori_shape, clip_logits=None, **k):
                seen.update(region_logits=region_logits.clone(), region_masks=region_masks.clone(),
                            clip_logits=clip_logits.clone())
                return post(region_logits, region_masks, shape, ori_shape, clip_logits, **k)

            seg.postprocess_result = recorded
            cpu = time.process_time()
            with torch.no_grad(), cuda_to_cpu(), softmax_seen(seen, seg.region_logit_scale):
                seg.predict(x, [sample])
            cpu = time.process_time() - cpu
            seg.postprocess_result = post
            threshold, seg.prob_thd = seg.prob_thd, 0.0  # its post-processing again: the argmax alone
            with torch.no_grad(), cuda_to_cpu():
                _, pred_argmax = seg.postprocess_result(seen["region_logits"], seen["region_masks"], None, ori,
                                                        seen["clip_logits"])
            seg.prob_thd = threshold
            torch.save({"input": x, "region_logits": seen["region_logits"], "region_masks": seen["region_masks"],
                        "clip_logits": seen["clip_logits"], "logits": seen["logits"],
                        "probs": sample.data["seg_logits"].data, "pred": sample.data["pred_sem_seg"].data,
                        "pred_argmax": pred_argmax}, out / f"photo_{i:03d}.pt")
            shapes.append({"file": path.name, "ori_shape": list(ori), "input_shape": list(x.shape[-2:]),
                           "regions_fed": int(len(seg.sam2_generator.current)),
                           "regions_kept": int(len(seen["region_logits"])), "predict_cpu_seconds": round(cpu, 3)})
            if args.count_flops:  # after the outputs are saved: the same predict again, untimed, counted
                again = Sample({"ori_shape": ori, "img_shape": tuple(x.shape[-2:]), "img_path": str(path)})
                again.ori_shape = ori
                with torch.no_grad(), cuda_to_cpu():
                    shapes[-1]["predict_gflop"] = round(count_flops(lambda: seg.predict(x, [again]))[1]["gflop"], 3)
    meta = {"kwargs": {k: (dict(v) if isinstance(v, dict) else v) for k, v in kwargs.items()},
            "resize_scale": list(cfg["scale"]), "query_words": list(words), "query_idx": [int(i) for i in idx],
            "photos": shapes, "stubbed": STUBBED,
            "effective": {k: getattr(seg, k) for k in ("region_logit_scale", "prob_thd", "crop_size",
                                                       "global_patch_threshold", "remove_global_patch",
                                                       "resize_method", "mask_type", "pool_feature")},
            "seconds": round(time.perf_counter() - start, 1), "torch": torch.__version__, "threads": args.threads,
            "rss_peak_mib": peak_rss_mib()}
    (out / "meta.json").write_text(json.dumps(meta, indent=1, default=str))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photos", type=Path, nargs="+")
    ap.add_argument("--clone", type=Path, required=True, help="a clone of avaxiao/TextRegion")
    ap.add_argument("--config", default="configs/cfg_ds/cfg_voc21.py")
    ap.add_argument("--clip-weights", type=Path, help="a CLIP state dict in OpenAI's layout (.pt)")
    ap.add_argument("--masks", type=Path, help="the region masks' folder (<stem>.npz, key masks)")
    ap.add_argument("--generator", action="store_true", help="run its SAM 2 generator instead (module docstring)")
    ap.add_argument("--sam2-config", default="configs/sam2.1/sam2.1_hiera_t.yaml")
    ap.add_argument("--sam2-checkpoint", type=Path, help="SAM 2's weights ({'model': state dict})")
    ap.add_argument("--points-per-batch", type=int, default=0, help="its generator's points a decoder call (its "
                    "load_sam2's 2048 when 0)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--name-path", type=Path, default=None, help="a class file in place of the config's "
                    "(the merge's parity: synonyms on other rows than the background's)")
    ap.add_argument("--scale", default="", help="JSON [long, short]: the Resize scale in place of the config's")
    ap.add_argument("--overrides", default="{}", help="JSON: segmentor keyword arguments over the config's")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--count-flops", action="store_true",
                    help="each photo's predict once more, untimed, under torch's FLOP counter (predict_gflop)")
    run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
