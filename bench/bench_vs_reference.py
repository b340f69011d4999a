"""vpltool against each reference's OWN code, side by side on the same weights and inputs (fp32, CPU, one thread);
prints ONE JSON object.

    python bench/bench_vs_reference.py --refs DIR [--methods talk2dino,talk2dino_step,talk2dino_run,corrclip,proxyclip]
        [--pairs 5] [--work DIR]
    python bench/bench_vs_reference.py --floor-from RESULT.json --work DIR

``--refs DIR`` holds the clones the parity runners read (names as :data:`CLONES`): Talk2DINO (lorebianchi98,
4918c2d) with facebookresearch/dinov2 (b8931f7) as ``dinov2``; CorrCLIP (zdk258, 103bc18); ProxyCLIP (mc-lan,
e7b767f); facebookresearch/dino (7c446df) as ``dino``, the DINO ViT-B/8 both CorrCLIP and ProxyCLIP load.

Each side is a process of its own, built once (``sidebyside.py``): vpltool's is this script with ``--worker``, the
reference's ``vs_reference_ref.py`` (the clone's code, imports nothing from vpltool). The unit of work, the same on
both sides:

* ``talk2dino``: (a) one training step of a batch of the 6 parity photos (image files) and their captions: the
  DINO's training features (a DINOv2 ViT-B/14 with 4 registers, 12 blocks, seeded random weights: Talk2DINO's
  default ``dinov2_vitb14_reg``; 448-pixel view), the toy CLIP's text features, the loss, its backward and one Adam
  step. Reference: ``run_dinov2_extraction`` on the files, ``encode_text``, ``train`` on that batch. vpltool:
  ``train_view`` of the files, ``Talk2DINO.forward_train``, backward, step. With it, the DINO's GEMM roofline
  (:func:`roofline`): both sides spend the unit in the same DINO arithmetic.
* ``talk2dino_step``: (b) the training step proper, :data:`T2D_STEPS` steps a unit on features extracted once:
  the reference's ``train`` over its saved features; vpltool's ``train-text`` step reading them from its feature
  cache on disk (:func:`talk2dino_step`).
* ``talk2dino_run``: (c) a whole short run of :data:`T2D_EPOCHS` epochs of the 6 photos at batch 6: the reference's
  extraction, caption features, then ``train`` per epoch; vpltool's ``run_train_text`` (:func:`talk2dino_run`).
* ``corrclip`` and ``proxyclip``: one photo (the parity photo 0, 375x500) through the segmentor at its VOC21
  config (short side 336, windows 336 / 112), random ViT-B/16 (one text block) and DINO ViT-B/8 weights, the
  normalised input made once: the reference's ``predict``; vpltool's ``segment_logits`` then the probabilities (and
  CorrCLIP's ``postprocess``), as `segment` runs them. CorrCLIP reads the parity's region-mask file each unit on
  both sides.

Timing: one warm-up unit each, then ``--pairs`` pairs in alternation, the order swapped every pair; per unit the
process's CPU-seconds (user + sys) and its wall time. The figure is the median over the pairs of vpltool's
CPU-seconds over the reference's (``ratio_median``); the bar: at most :data:`BAR`. The last unit's outputs of the
two sides are compared (``outputs``), so that the figure is of the same arithmetic. The machine is shared with
other work: its load average is recorded before and after each method.

The **floor** beside each ratio (:func:`floor_of`): after its timed units the reference's worker runs one more unit,
untimed, under torch's FLOP counter (``sidebyside``'s ``flops``: every matrix product, convolution and attention
from its shapes); once every method has run, this CPU's fp32 GEMM rate is probed (``benchlib.gemm_rates``: MKL,
oneDNN, MKL's packed product); the floor is the reference's FLOPs at the fastest rate measured (unit (a)'s roofline
shapes included), all other work free, over the reference's median CPU-seconds: the least ratio the same arithmetic
allows on this CPU. ``--floor-from JSON --work DIR``: the floors of an earlier result alone, nothing timed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT / "parity")]
from sidebyside import Side, alternate, claim_stdout, serve  # noqa: E402

import benchlib  # noqa: E402

BAR = 0.8
CLONES = {"talk2dino": "Talk2DINO", "dinov2": "dinov2", "corrclip": "CorrCLIP", "proxyclip": "ProxyCLIP",
          "dino": "dino"}
# Talk2DINO's default DINO (dinov2_vitb14_reg) in talk2dino_parity's terms, all 12 blocks
DINO_B = {"name": "dinov2_vitb14_reg", "width": 768, "heads": 12, "timm": "vit_base_patch14_reg4_dinov2",
          "img_size": 518, "patch_size": 14, "depth": 12, "registers": 4, "antialias": True, "offset": 0.0}
T2D_SIDE = 448  # Talk2DINO's train view (resize_dim / crop_dim)
SDPA_OP = "aten._scaled_dot_product_flash_attention_for_cpu"  # torch's fused attention, as its FLOP counter names it
T2D_STEPS = 20  # (b): training steps a unit, so that a unit's CPU-seconds are well above the clock's noise
T2D_EPOCHS = 3  # (c): the whole short run's epochs
SEG = {"short_side": 336, "slide_crop": 336, "slide_stride": 112}  # both references' configs/cfg_voc21.py
PRE = {"mean": [122.771, 116.746, 104.094], "std": [68.501, 66.632, 70.323], "bgr_to_rgb": True}  # their own
MODEL = "ViT-B-16-quickgelu"


def clone(refs: Path, key: str) -> Path:
    found = next((p for p in refs.iterdir() if p.name.lower() == CLONES[key].lower()), None)
    if found is None:
        raise SystemExit(f"--refs {refs}: no clone named {CLONES[key]}")
    return found.resolve()


def query_rows(path: Path) -> tuple[list[str], list[int]]:
    """The clone's class file read as its ``get_cls_idx`` reads it: each line's names split at ``'; '``."""
    words, idx = [], []
    for i, line in enumerate(path.read_text().splitlines()):
        for w in line.split("; "):
            words.append(w)
            idx.append(i)
    return words, idx


# ------------------------------------------------------------------------------------------------ vpltool's side
def t2d_dino(work: Path) -> tuple:
    """Talk2DINO's DINO (:data:`DINO_B`, seeded random weights in the reference's layout, written in ``work``): (the
    weights file, the hub state dict the reference loads, vpltool's ``DinoBackbone`` over the file)."""
    import talk2dino_parity as tp

    from vpltool.models.backbones.dino import DinoSpec, load_dino

    dino_file, hub_state = tp.dino_weights(work, DINO_B)
    dino = load_dino(DinoSpec(DINO_B["timm"], str(dino_file), "bicubic-antialias"), img_size=DINO_B["img_size"],
                     depth=DINO_B["depth"], init_values=1.0)
    return dino_file, hub_state, dino


def _t2d_setup(work: Path, refs: Path) -> tuple:
    """What the three Talk2DINO units share: the photos, the DINO file, the model over the DINO and the toy CLIP,
    the captions' tokens; the reference's inputs written (``inputs.pt``, ``inputs.json``)."""
    import talk2dino_parity as tp
    import torch

    from vpltool.models.backbones.loading import ModelSpec
    from vpltool.models.registry import load_model
    from vpltool.models.text.talk2dino import build_model, config_for

    files = tp.photos(work / "photos")
    dino_file, hub_state, dino = t2d_dino(work)
    clip = load_model("clip", ModelSpec("vpltool-toy"), "cpu")
    model = build_model(config_for(dino, clip, resize_dim=T2D_SIDE), seed=0, backbones=(dino, clip))
    table = {c: clip.tokenizer([c])[0] for c in tp.CAPTIONS}
    inputs = {"photos": [str(p) for p in files], "dino": {**DINO_B, "state": hub_state},
              "clip_folder": str(ROOT / "vpltool" / "assets" / "toy-clip"), "token_table": table,
              "dinov2": str(clone(refs, "dinov2")), "captions": list(tp.CAPTIONS),
              "proj_config": {"act": "tanh", "hidden_layer": True, "dino_embed_dim": model.cfg.dino_dim,
                              "clip_embed_dim": model.cfg.text_dim},
              "proj_state": {k[len("proj."):]: v.detach().clone() for k, v in model.state_dict().items()},
              "lr": tp.LR, "resize_dim": T2D_SIDE}
    torch.save(inputs, work / "inputs.pt")
    write_inputs(work, {"inputs": str(work / "inputs.pt"), "clone": str(clone(refs, "talk2dino")),
                        "work": str(work / "ref"), "steps": T2D_STEPS, "epochs": T2D_EPOCHS})
    return tp, files, dino_file, model, torch.stack([table[c] for c in tp.CAPTIONS])


def talk2dino(work: Path, refs: Path) -> None:
    """(a) the DINO's features made in the step: ``train_view`` of the files, ``forward_train``, backward, Adam."""
    import torch

    from vpltool.models.text.talk2dino.training import make_optimizer

    tp, files, _, model, tokens = _t2d_setup(work, refs)
    optimizer = make_optimizer(model, tp.LR)

    def unit():
        pixels = torch.stack([tp.train_view(p, T2D_SIDE) for p in files])
        model.train()
        out = model.forward_train(pixels, tokens)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        return {"loss": float(out["loss"])}

    serve(unit)


def _t2d_pairs(work: Path, files: list[Path], captions) -> Path:
    """The photos as a pairs folder (``captions.json``), ids in the photos' order."""
    folder = work / "pairs"
    folder.mkdir(parents=True, exist_ok=True)
    for p in files:
        if not (folder / p.name).exists():
            (folder / p.name).symlink_to(p.resolve())
    (folder / "captions.json").write_text(json.dumps({p.stem: c for p, c in zip(files, captions)}))
    return folder


def talk2dino_step(work: Path, refs: Path) -> None:
    """(b) the training step proper, :data:`T2D_STEPS` of them a unit, on features kept by the feature cache:
    each step the stage's own path (``pair_batches``: the 6 pairs' entries held in memory by the cache, as the
    stage holds them after its first epoch; the warm-up unit reads them through the loader), the cache's batch
    (``FeatureCache.features``), ``train_step`` (``forward_train_from``, backward, AdamW with no weight decay:
    Adam). The entries are made once, before the timing, from the reference's view (``train_view``) in one batch,
    so that both sides step on the same features."""
    import torch

    from vpltool.data.pairs import open_pairs
    from vpltool.models.text.family import text_family
    from vpltool.stages.train_text import PairViews, TrainStep, loader, make_optimizer, pair_batches, train_step
    from vpltool.stages.train_text.cache import CachedPairs, FeatureCache, as_list

    tp, files, _, model, tokens = _t2d_setup(work, refs)
    fam = text_family("talk2dino")
    cfg = fam.TrainConfig(batch_size=len(files), crop_size=T2D_SIDE, lr=tp.LR, warmup_lr=tp.LR, min_lr=tp.LR)
    pairs = open_pairs(_t2d_pairs(work, files, tp.CAPTIONS))
    cache = FeatureCache(work / "cache", fam.frozen_identity(model))
    image = model.frozen_image_features(torch.stack([tp.train_view(p, T2D_SIDE) for p in files]))
    text = model.frozen_text_features(tokens)
    for i, pair in enumerate(pairs.pairs):
        ik, tk = cache.keys(pair.image_bytes(), tokens[i])
        cache.write("image", ik, {k: v[i] for k, v in image.items()})
        cache.write("text", tk, {k: v[i] for k, v in text.items()})
    cached = CachedPairs(PairViews(pairs, model.clip.tokenizer, cfg), cache)
    step = TrainStep(model, None, fam.forward_train, fam.forward_train_from)
    optimizer = make_optimizer(model, cfg)
    def plan(first, end):
        return [[(i, 0) for i in range(len(files))]] * (end - first)

    def unit():
        losses = []
        for batch in pair_batches(cached, plan, T2D_STEPS, 0, T2D_STEPS,
                                  lambda steps: loader(cached, steps, 1, collate=as_list)):
            assert all(it.image_features is not None and it.text_features is not None for it in batch), \
                "a pair not read from the cache"
            out, _ = train_step(step, model, optimizer, cached.features(batch, fam, model, torch.device("cpu")),
                                None, tp.LR, 0.0, measure=False)  # a step that is not logged: no gradient norm
            losses.append(out["loss"].item())
        return {"loss": torch.mean(torch.tensor(losses)).item()}  # as the reference's train() returns it

    serve(unit)


def talk2dino_run(work: Path, refs: Path) -> None:
    """(c) a whole short run: ``run_train_text`` of the 6 pairs, batch 6, :data:`T2D_EPOCHS` epochs, into a new
    folder each unit (the first epoch makes the cache, the others read it), its checkpoints and records written;
    the DINO and the CLIP loaded once by the process (the family keeps them, as the reference keeps its model).
    Its view is the stage's (the whole photo squeezed to 448 px, bilinear), not the reference's centre crop: the
    same work, other pixels, so the losses are not compared."""
    import shutil

    from vpltool.config import RuntimeConfig
    from vpltool.models.text.family import text_family
    from vpltool.stages.train_text import run_train_text

    tp, files, dino_file, _, _ = _t2d_setup(work, refs)
    cfg = text_family("talk2dino").TrainConfig(
        batch_size=len(files), epochs=T2D_EPOCHS, crop_size=T2D_SIDE, dino_model=DINO_B["timm"],
        dino_weights=str(dino_file), clip_model="vpltool-toy", clip_pretrained="none", log_every=1)
    pairs = _t2d_pairs(work, files, tp.CAPTIONS)
    runs = [0]

    def unit():
        out = work / f"run{runs[0] % 2}"
        runs[0] += 1
        shutil.rmtree(out, ignore_errors=True)
        s = run_train_text(pairs, out, cfg, RuntimeConfig(device="cpu", workers=1))
        assert len(list((out / "cache" / "image").glob("*/*.safetensors"))) == len(files)
        return {"loss": s.loss}

    serve(unit)


def corrclip(work: Path, refs: Path) -> None:
    import argparse as ap

    import corrclip_parity as cp
    import numpy as np
    import torch
    from dense_ref_runner import mmseg_input

    from vpltool.config.presets import IMAGENET_TEMPLATES
    from vpltool.models import ModelSpec
    from vpltool.models.backbones.prompts import encode_names

    ref = clone(refs, "corrclip") / "CorrCLIPv1"
    s = cp.setup(work, 1, 1)
    method = cp.corrclip_method(ap.Namespace(**SEG), s)
    settings = method.settings
    bb = method.load(ModelSpec(s["name"], str(s["st"]), config_dir=str(s["config_dir"])), "cpu")
    words, idx = query_rows(ref / "configs" / "cls_voc21.txt")
    with torch.no_grad():
        text = encode_names(bb, words, list(IMAGENET_TEMPLATES))
    photo, mask = s["photos"][0], s["masks"][0]
    x, ori = mmseg_input(photo, (2048, SEG["short_side"]), PRE)
    idx = torch.tensor(idx)
    write_inputs(work, {"clone": str(ref), "dino_clone": str(clone(refs, "dino")), "dino_weights": str(s["dino"]),
                        "clip_weights": str(s["pt"]), "model_config": str(Path(s["config_dir"]) / f"{s['name']}.json"),
                        "masks": str(mask.parent.resolve()), "photo": str(photo.resolve()), **SEG})

    def unit():
        ids = torch.from_numpy(np.load(mask)["instance_mask"])
        logits, _, labels = cp.vpltool_outputs(bb, x, text, idx, int(idx.max()) + 1, ids, ori, settings)
        return {"input": x, "logits": logits, "pred": labels}

    serve(unit)


def proxyclip(work: Path, refs: Path) -> None:
    from dataclasses import replace

    import dense_parity as dp
    import ovss_parity as op
    import torch
    from dense_ref_runner import mmseg_input

    from vpltool.config.dense import DENSE_SEGMENTORS
    from vpltool.models.dense.segmentor import dense_probabilities, segment_logits

    ref = clone(refs, "proxyclip")
    model, config_dir = dp.model_config(work, MODEL, 1)
    pt, st, photos = dp.setup(work, model, config_dir, 1, 1.0)
    dino = op.proxy_weights(work, 1.0)
    vt = op.Vpltool(model, st, config_dir, dino)
    bb = vt.backbone("proxyclip")
    settings = replace(DENSE_SEGMENTORS["proxyclip"], **SEG)
    words, idx = query_rows(ref / "configs" / "cls_voc21.txt")
    text = vt.rows(words)
    photo = sorted(photos.glob("*.jpg"))[0]
    x, ori = mmseg_input(photo, (2048, SEG["short_side"]), PRE)
    idx = torch.tensor(idx)
    write_inputs(work, {"clone": str(ref), "dino_clone": str(clone(refs, "dino")), "dino_weights": str(dino),
                        "clip_weights": str(pt), "photo": str(photo.resolve()), **SEG})

    def unit():
        with torch.no_grad():
            logits = segment_logits(bb, x, text, settings, [tuple(ori)])[0]
            _, labels = dense_probabilities(logits, idx, int(idx.max()) + 1, settings.logit_scale,
                                            settings.prob_threshold, settings.area_threshold)
        return {"input": x, "logits": logits, "pred": labels}

    serve(unit)


WORKERS = {"talk2dino": talk2dino, "talk2dino_step": talk2dino_step, "talk2dino_run": talk2dino_run,
           "corrclip": corrclip, "proxyclip": proxyclip}


def write_inputs(work: Path, d: dict) -> None:
    (work / "inputs.json").write_text(json.dumps(d, indent=1))


# ------------------------------------------------------------------------------------------------ the driver
def compare(method: str, ours: dict, ref: dict) -> dict:
    """The last unit's outputs of both sides: max |Δ| of the logits and the share of equal labels (segmentors),
    the losses (Talk2DINO: the same number of steps taken on each side)."""
    if method == "talk2dino_run":  # other views of the photos (the module's docstring): the losses are not compared
        return {"loss": ours["loss"], "loss_reference": ref["loss"]}
    if method.startswith("talk2dino"):
        return {"loss": ours["loss"], "loss_reference": ref["loss"], "loss_abs_diff": abs(ours["loss"] - ref["loss"])}
    logits = ref["logits"].reshape(ours["logits"].shape)
    return {"input_max_abs_diff": float((ours["input"] - ref["input"]).abs().max()),
            "logits_max_abs_diff": float((ours["logits"] - logits).abs().max()),
            "labels_equal": float((ours["pred"].reshape(-1) == ref["pred"].reshape(-1)).float().mean())}


def worker_env(threads: str) -> dict:
    """The environment of both sides' worker processes: ``threads`` threads, no GPU, no xformers, no warnings."""
    return {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONWARNINGS": "ignore",
            "CUDA_VISIBLE_DEVICES": "", "XFORMERS_DISABLED": "1"}


def measure(method: str, args) -> dict:
    import torch

    work = (args.work / method).resolve()
    work.mkdir(parents=True, exist_ok=True)
    threads = str(args.threads)
    env = worker_env(threads)
    load_before = round(os.getloadavg()[0], 2)
    start = time.perf_counter()
    ours = Side("vpltool", [sys.executable, __file__, "--worker", method, "--work", work, "--refs", args.refs,
                            "--threads", threads], work / "vpltool.log", env)
    ref = Side("reference", [sys.executable, HERE / "vs_reference_ref.py", method, "--inputs",
                             work / "inputs.json", "--threads", threads], work / "reference.log", env)
    try:
        rows = alternate(ref, ours, args.pairs)
        ours.save(work / "vpltool_out.pt")
        ref.save(work / "reference_out.pt")
        try:  # one more unit of the reference's, untimed: the arithmetic its floor is made of
            counted = ref.ask("flops")
        except SystemExit as e:  # a count that fails costs the floor, not the timed pairs
            counted = None
            print(f"{method}: the reference's FLOP count failed, no floor: {str(e)[-500:]}", file=sys.stderr)
    finally:
        ours.close()
        ref.close()
    outputs = compare(method, torch.load(work / "vpltool_out.pt", weights_only=False),
                      torch.load(work / "reference_out.pt", weights_only=False))
    ratios = [r["vpltool"]["cpu"] / r["reference"]["cpu"] for r in rows]
    med = {side: {k: round(statistics.median(r[side][k] for r in rows), 3) for k in ("cpu", "wall")}
           for side in ("vpltool", "reference")}
    return {"unit": UNITS[method], "pairs": [{side: {k: round(v, 3) for k, v in r[side].items()} for side in r}
                                             for r in rows],
            "ratios": [round(r, 3) for r in ratios], "ratio_median": round(statistics.median(ratios), 3),
            "cpu_seconds_median": {k: v["cpu"] for k, v in med.items()},
            "rss_peak_mib": {side: max(r[side].get("rss_peak_mib") or 0 for r in rows)
                             for side in ("vpltool", "reference")},
            "wall_seconds_median": {k: v["wall"] for k, v in med.items()},
            "bar": BAR, "bar_met": statistics.median(ratios) <= BAR, "outputs": outputs,
            "load_average_1min": {"before": load_before, "after": round(os.getloadavg()[0], 2)},
            "seconds": round(time.perf_counter() - start, 1), "reference_flops": counted}


UNITS = {"talk2dino": f"(a) one training step of 6 photos at {T2D_SIDE} px (DINOv2 ViT-B/14 reg4, 12 blocks; the "
                      "toy CLIP's text tower): extraction or forward, loss, backward, Adam",
         "talk2dino_step": f"(b) {T2D_STEPS} training steps proper of the 6 photos' features (extracted once): the "
                           "reference's train() on its saved features; vpltool's train-text step on them as its "
                           "feature cache holds them in memory after a first epoch: loss, backward, Adam",
         "talk2dino_run": f"(c) a whole short run, {T2D_EPOCHS} epochs of the 6 photos at batch 6: the reference's "
                          "extraction once, the captions' features once, then train() per epoch; vpltool's "
                          "run_train_text into a new folder (the first epoch fills the feature cache, the others read "
                          "it; checkpoints and records written)",
         "corrclip": "one photo (375x500, input 336x448, windows 336/112), random ViT-B/16 and DINO ViT-B/8",
         "proxyclip": "one photo (375x500, input 336x448, windows 336/112), random ViT-B/16 and DINO ViT-B/8"}


def roofline(cpu: dict, threads: int) -> dict:
    """The floor under unit (a) on this CPU. The DINO's forward FLOPs are its GEMMs (the patch embedding, each
    block's qkv, projection and MLP, the attention's q·kᵀ and ·v per image and head); each shape is timed as one
    torch ``mm`` / ``bmm`` (MKL's sgemm) and, for a linear layer's, through oneDNN, in fp32 on ``threads``
    thread(s) (best of 3, CPU-seconds). The floor is the FLOPs at the fastest of those speeds (this CPU's fp32 GEMM
    peak as torch reaches it): no side can run the same arithmetic in less.
    With it: the FLOPs over each side's median CPU-seconds (``cpu``), and the floor over the reference's."""
    import torch

    torch.set_num_threads(threads)
    d, depth, heads, grid = DINO_B["width"], DINO_B["depth"], DINO_B["heads"], (T2D_SIDE // DINO_B["patch_size"]) ** 2
    n, b = 1 + DINO_B["registers"] + grid, 6
    m = b * n
    shapes = {"patch_embed": (1, b * grid, 3 * DINO_B["patch_size"] ** 2, d, 1), "qkv": (1, m, d, 3 * d, depth),
              "attn_proj": (1, m, d, d, depth), "mlp_fc1": (1, m, d, 4 * d, depth), "mlp_fc2": (1, m, 4 * d, d, depth),
              "q_kT": (b * heads, n, d // heads, n, depth), "attn_v": (b * heads, n, n, d // heads, depth)}
    from vpltool.models.backbones import onednn

    def best_of_3(f) -> float:
        best = float("inf")
        for _ in range(3):
            t = time.process_time()
            f()
            best = min(best, time.process_time() - t)
        return best

    rows, total_flop, peak = {}, 0.0, 0.0
    for name, (batch, rows_, inner, cols, times) in shapes.items():
        x, w = torch.randn(batch, rows_, inner), torch.randn(batch, inner, cols)
        flop = 2.0 * batch * rows_ * inner * cols
        speeds = {"torch": flop / best_of_3(lambda: torch.bmm(x, w) if batch > 1 else torch.mm(x[0], w[0]))}
        if batch == 1 and onednn.available():  # a linear layer through oneDNN (vpltool's DINO: backbones.onednn)
            wt = w[0].t().contiguous()
            speeds["onednn"] = flop / best_of_3(lambda: onednn.linear(x[0], wt, None))
        rows[name] = {"shape": [batch, rows_, inner, cols], "per_forward": times, "gflop": round(flop * times / 1e9, 2),
                      **{f"gflops_per_s_{k}": round(v / 1e9, 1) for k, v in speeds.items()}}
        total_flop += flop * times
        peak = max(peak, *speeds.values())
    floor = total_flop / peak
    return {"what": f"the DINO forward's GEMMs, each shape timed alone (torch mm/bmm: MKL; a linear layer's also "
                    f"through oneDNN; fp32, {threads} thread, best of 3, CPU-seconds); the floor: their FLOPs at the "
                    "fastest speed measured, the least time unit (a)'s arithmetic can take on either side",
            "gemms": rows, "tflop_per_forward": round(total_flop / 1e12, 3), "peak_gflops_per_s": round(peak / 1e9, 1),
            "floor_seconds": round(floor, 3),
            "unit_gflops_per_s": {k: round(total_flop / v / 1e9, 1) for k, v in cpu.items()},
            "least_ratio_on_this_arithmetic": round(floor / cpu["reference"], 3)}


def floor_of(result: dict, probes: dict, roofline_peak: float | None = None,
             attention: dict[str, float] | None = None) -> dict:
    """The floor under one method's unit on this CPU (issue 79's rule): the reference's GEMM, convolution and
    attention FLOPs on a unit (``result["reference_flops"]``: its worker's ``flops``, ``sidebyside.count_flops``)
    at the fastest fp32 rate measured here (``probes``: :func:`benchlib.gemm_rates`; ``roofline_peak``: unit (a)'s
    roofline's fastest shape, GFLOP/s, where it ran), all other work free, over the reference's median CPU-seconds:
    the least ratio that arithmetic allows on this CPU. With ``attention`` (torch's fused attention on the unit's own
    shapes, :func:`benchlib.attention_rates`) beside it, ``with_torch_attention``: the same with the reference's
    fused attention at that kernel's fastest rate instead (:func:`benchlib.attention_floor`)."""
    rates = benchlib.probe_rates(probes)
    if roofline_peak:
        rates["roofline"] = roofline_peak
    counted = result["reference_flops"]
    gflop = counted["gflop"]
    peak, seconds = benchlib.at_fastest(gflop, rates)
    reference = result["cpu_seconds_median"]["reference"]
    out = {"what": "the reference's GEMM, convolution and attention FLOPs on a unit (torch's FlopCounterMode over "
                   "one more unit of its worker, untimed) at the fastest fp32 rate measured here (benchlib.gemm_rates"
                   "' probes and, for (a), its roofline's shapes; one thread), all else free, over the reference's "
                   "median CPU-seconds",
           "reference_gflop": round(gflop, 3), "rates_gflops_per_s": rates, "peak_gflops_per_s": peak,
           "floor_seconds": round(seconds, 3), "floor_over_reference": round(seconds / reference, 3)}
    attention_gflop = (counted.get("by_op_gflop") or {}).get(SDPA_OP)
    if attention and attention_gflop:
        fastest = max(attention.values())
        least = benchlib.attention_floor(gflop, attention_gflop, peak, fastest)
        out["with_torch_attention"] = {
            "what": "the reference's fused attention at the fastest rate torch's own kernel (the one both sides "
                    "call) reached on the unit's shapes, the rest of its FLOPs at the fastest GEMM rate as above",
            "attention_gflop": round(attention_gflop, 3), "attention_gflops_per_s": attention,
            "floor_seconds": round(least, 3), "floor_over_reference": round(least / reference, 3)}
    return out


def attention_shapes(method: str) -> list[tuple[int, int, int, int]]:
    """The ``(B, H, N, d)`` shapes of a unit's fused attention calls: the Talk2DINO units' DINO, vpltool's call a
    photo and the reference's the batch's; none for the others (their floor stays issue 79's alone)."""
    if not method.startswith("talk2dino"):
        return []
    n = 1 + DINO_B["registers"] + (T2D_SIDE // DINO_B["patch_size"]) ** 2
    return [(b, DINO_B["heads"], n, DINO_B["width"] // DINO_B["heads"]) for b in (1, 6)]


def floors(methods: dict, threads: int) -> dict:
    """:func:`floor_of` for each method that counted its reference's FLOPs, the GEMM probes and torch's attention on
    the units' shapes run once here (after every timed unit, the workers closed); the probes' rates as measured."""
    import torch

    torch.set_num_threads(threads)
    probes = benchlib.gemm_rates()
    peak = methods.get("talk2dino", {}).get("roofline", {}).get("peak_gflops_per_s")
    shapes = sorted({s for method in methods for s in attention_shapes(method)})
    rates = benchlib.attention_rates(shapes) if shapes else {}
    for method, result in methods.items():
        if result.get("reference_flops"):
            own = {f"{b}x{h}x{n}x{d}" for b, h, n, d in attention_shapes(method)}
            result["floor"] = floor_of(result, probes, peak, {k: v for k, v in rates.items() if k in own})
    return probes


def floor_from(path: Path, args) -> dict:
    """``--floor-from JSON``: an earlier result of this script with each method's floor added (:func:`floor_of`),
    its timed pairs as they are: per method the reference's worker alone, in that run's work folder
    (``--work``/METHOD, its ``inputs.json``), counts one unit (nothing timed), then the probes run."""
    try:
        earlier = json.loads(path.read_text())
        methods = earlier["methods"]
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"--floor-from {path}: not a result of this script ({e})") from None
    threads = str(earlier.get("threads", args.threads))
    env = worker_env(threads)
    for method, result in methods.items():
        work = (args.work / method).resolve()
        if not (work / "inputs.json").is_file():
            raise SystemExit(f"--floor-from {path}: {work / 'inputs.json'} missing; give the --work that run used")
        ref = Side("reference", [sys.executable, HERE / "vs_reference_ref.py", method, "--inputs",
                                 work / "inputs.json", "--threads", threads], work / "reference_floor.log", env)
        try:
            result["reference_flops"] = ref.ask("flops")
        finally:
            ref.close()
    probes = floors(methods, int(threads))
    earlier["floor_run"] = {"command": " ".join(["python", "bench/bench_vs_reference.py", *sys.argv[1:]]),
                            "vpltool_commit": os.popen(f"git -C {ROOT} rev-parse --short HEAD").read().strip(),
                            "machine": benchlib.machine("cpu", probes), "probes": probes}
    return earlier


def gemm_of(methods: dict) -> dict | None:
    """Each library's fastest fp32 GEMM rate the roofline measured on this CPU (GFLOP/s), for the machine's
    identity: ``{"mkl_gflops", "onednn_gflops"}``; None where no roofline ran."""
    gemms = methods.get("talk2dino", {}).get("roofline", {}).get("gemms")
    if not gemms:
        return None
    rates = {"mkl_gflops": "gflops_per_s_torch", "onednn_gflops": "gflops_per_s_onednn"}
    return {"what": "the fastest of the DINO's GEMM shapes (roofline)",
            **{name: max(g[key] for g in gemms.values() if key in g) for name, key in rates.items()
               if any(key in g for g in gemms.values())}}


def cpu_linear(threads: int) -> dict:
    """The library vpltool's frozen towers took for each fp32 product shape on this machine (``VPLTOOL_CPU_LINEAR``,
    and ``auto``'s verdicts as the workers kept them: :mod:`vpltool.models.backbones.onednn`)."""
    from vpltool.models.backbones import onednn
    from vpltool.runtime.numerics import cpu_linear_asked

    route = cpu_linear_asked()
    table = onednn.kept_verdicts(threads) if route == "auto" else {}
    products = {k: v for k, v in table.get("products", {}).items() if "/" not in k}
    packings = {k: {f: v.get(f) for f in ("onednn", "ratio", "slowest", "pairs")}
                for k, v in table.get("products", {}).items() if "/" in k}
    return {"route": route, "onednn_products": sorted(k for k, v in products.items() if v["onednn"]),
            "mkl_products": sorted(k for k, v in products.items() if not v["onednn"]),
            "packings": {"what": "KxN@rows/mkl-packed: onednn true where MKL's packed product was taken over "
                                 "oneDNN's plain call (mkl_packed.packed_over_onednn); KxN@rows/onednn-packed: onednn "
                                 "true where oneDNN's own packing was taken (mkl_packed.onednn_packing); KxN@rows/"
                                 "packed: the older rule's (oneDNN's plain call beat MKL's packed product), no longer "
                                 "read; ratio: the contender's time over its rival's", **packings},
            "libraries": {k: table[k] for k in ("mkl", "onednn") if k in table}}


def merge(paths: list[Path]) -> dict:
    """One result from several runs of this script (methods run apart, at other times or at once): the methods of
    each, in the order given, each keeping its own run's command, commit, machine and note (``run``: a merged
    file's methods keep the run they came from); the head is the first's."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    out = {**runs[0], "methods": {}, "merged_from": [Path(p).name for p in paths]}
    for d in runs:
        for method, m in d["methods"].items():
            own = {k: d.get(k) for k in ("command", "vpltool_commit", "machine", "beside", "cpu_linear") if d.get(k)}
            out["methods"][method] = {**m, "run": m.get("run") or own}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--refs", type=Path, help=f"a folder of the clones ({', '.join(CLONES.values())})")
    ap.add_argument("--methods", default=",".join(WORKERS), help="comma-separated, of " + ", ".join(WORKERS))
    ap.add_argument("--pairs", type=int, default=5, help="alternating pairs after the warm-up (medians over them)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_vs_reference"), help="weights, photos, logs")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--merge", type=Path, nargs="+", help="print the merge of these results of this script and exit")
    ap.add_argument("--floor-from", type=Path, metavar="JSON",
                    help="print this earlier result with each method's floor added (its reference's FLOPs counted "
                         "in the --work that run used, nothing timed), and exit")
    args = ap.parse_args(argv)
    if args.merge:
        print(json.dumps(merge(args.merge), indent=1))
        return
    if args.floor_from:
        print(json.dumps(floor_from(args.floor_from, args), indent=1))
        return
    if args.refs is None:
        ap.error("--refs is required")
    args.refs = args.refs.resolve()
    if args.worker:
        claim_stdout()
        import torch

        torch.set_num_threads(args.threads)
        WORKERS[args.worker](args.work, args.refs)
        return
    methods = {m: measure(m, args) for m in args.methods.split(",")}
    if "talk2dino" in methods:
        methods["talk2dino"]["roofline"] = roofline(methods["talk2dino"]["cpu_seconds_median"], args.threads)
    probes = floors(methods, args.threads)
    commit = os.popen(f"git -C {ROOT} rev-parse --short HEAD").read().strip()
    print(json.dumps({"benchmark": "vs-reference", "what": "vpltool / the reference's own code, CPU-seconds of the "
                      "same unit of work, same weights and inputs, fp32, alternating pairs, medians",
                      "command": " ".join(["python", "bench/bench_vs_reference.py", *(argv or sys.argv[1:])]),
                      "vpltool_commit": commit, "threads": args.threads, "pairs": args.pairs,
                      "shared_machine": "the CPU was shared with other work while this ran (its load average "
                                        "per method); CPU-seconds of each process, medians of alternating pairs",
                      **({"beside": os.environ["VSREF_BESIDE"]} if os.environ.get("VSREF_BESIDE") else {}),
                      "reference_commits": {k: benchlib.clone_commit(clone(args.refs, k)) for k in CLONES
                                            if any(p.name.lower() == CLONES[k].lower() for p in args.refs.iterdir())},
                      "machine": benchlib.machine("cpu", gemm_of(methods) or probes),
                      "cpu_linear": cpu_linear(args.threads),
                      "methods": methods}, indent=1))


if __name__ == "__main__":
    main()
