"""`train-pgseg`'s training step against the reference's (Ferenas/PGSeg at 9f167cd) on the same model and threads,
and its loader's images per second per core; prints ONE JSON object.

    python bench/bench_train_pgseg.py --ref DIR [--configs tiny small] [--pairs 7] [--steps 3] [--threads 1]
    python bench/bench_train_pgseg.py --quick        # tiny, vpltool's side alone (no clone): the plumbing

Each side runs in its own long-lived process (the reference's code and vpltool's never share one), on one batch of
random images and captions that both read from the same file:

* ``ref``: the reference's ``MultiLabelContrastive`` built by its own code under seed 0 and perturbed as the parity
  builds it (``parity/pgseg_ref_runner.py``: its stubs, ``perturb``), its AdamW from its ``utils/optimizer.py``
  (the weight-decay groups) and its cosine scheduler from ``utils/lr_scheduler.py``; one step is the body of
  ``main_pg_seg.py``'s ``train_one_epoch`` at ``amp_opt_level O0`` (fp32): ``model(image, text)``,
  ``parse_losses`` (restated: its module imports the data pipeline), ``zero_grad``, ``backward``,
  ``clip_grad_norm_`` (5.0), ``step``, ``step_update``, the meters' ``loss.item()`` (``torch.cuda.synchronize``,
  a CUDA call, is left out on the CPU);
* ``vpltool``: the same weights read from the reference's checkpoint through the family's key map; one step is
  `train-pgseg`'s iteration (:func:`vpltool.stages.train_text.train_step`: the iteration's seed, its rate, forward,
  backward, clipping, the optimizer of :func:`~vpltool.stages.train_text.make_optimizer`), the losses read on every
  ``log_every``-th step as the command logs them. ``vpltool-fused`` (``--fused``): the same with the family's
  ``fused_attention=True`` (PyTorch's fused attention; not the default, see docs/pgseg.md), to show what it buys.

Timing: after ``--warmup`` steps each, ``--pairs`` rounds; in each, every side runs ``--steps`` steps in turn (the
order alternating between rounds). A round's figure is the process's CPU-seconds (user + sys) per step, which the
other processes on a shared host do not inflate as they inflate wall time (wall is recorded too). ``ratio`` is the
median over rounds of vpltool's step over the reference's in the same round: < 1 is faster.

``loader``: `train-pgseg`'s data path (:class:`vpltool.stages.train_text.PairViews` through its DataLoader in-process:
JPEG decode, RandomResizedCrop, flip, normalisation, tokenisation) on synthetic 500x375 JPEGs, images per
CPU-second = images per second per core, at the reference's crop (224) and at the tiny model's (32).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

EOT, SOT = 49407, 49406
# the reference's MultiLabelContrastive specs: the parity's tiny one, and a GroupViT-S-like one (its 196 patches and
# 64 -> 8 groups at a third of its width and fewer blocks; heads 64 wide, as the family reads them back)
SPECS = {
    "tiny": {"batch": 32, "spec": "tiny"},
    "small": {"batch": 16, "spec": dict(
        type="MultiLabelContrastive",
        img_encoder=dict(type="PGSeg", img_size=112, patch_size=8, embed_dim=128, embed_factors=[1, 1, 1],
                         num_heads=[2, 2, 2], depths=[2, 1, 1], num_group_tokens=[64, 8, 0],
                         num_output_groups=[64, 8], drop_rate=0.0, drop_path_rate=0.1, return_attn_o=True),
        text_encoder=dict(type="TextTransformer", context_length=77, width=128, layers=3, vocab_size=49408),
        contrast_temperature=0.07, proj_num_layers=2, output_dim=128, multi_label=0)},
}
CLIP_GRAD = 5.0  # default_pgseg.yml train.clip_grad


def make_batch(path: Path, batch: int, size: int, seed: int = 0) -> None:
    """``batch`` random normalised images ``[B, 3, size, size]`` and CLIP-like token rows (SOT, ids, EOT, zeros)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=g)
    tokens = torch.zeros(batch, 77, dtype=torch.long)
    for i in range(batch):
        n = int(torch.randint(4, 20, (1,), generator=g))
        tokens[i, 0], tokens[i, n + 1] = SOT, EOT
        tokens[i, 1:n + 1] = torch.randint(1, 49000, (n,), generator=g)
    torch.save({"images": images, "tokens": tokens}, path)


# ------------------------------------------------------------------------------------------------ the two sides
def reference_side(clone: Path, spec, work: Path):
    """The reference's model (saved as ``work/ref_checkpoint.pth``), optimizer and scheduler; returns step(i)."""
    import importlib
    import types

    import torch

    sys.path.insert(0, str(ROOT / "parity"))
    import pgseg_ref_runner as rr

    clone = clone.resolve()
    sys.path.insert(0, str(clone))
    os.chdir(clone)
    rr.install_stubs()
    models = importlib.import_module("models")
    spec = dict(rr.MODEL_TINY if spec == "tiny" else spec)
    torch.manual_seed(0)
    model = models.MultiLabelContrastive(**{k: v for k, v in spec.items() if k != "type"})
    rr.perturb(model)
    torch.save({"model": {k: v.clone() for k, v in model.state_dict().items()}}, work / "ref_checkpoint.pth")
    config = types.SimpleNamespace(
        optimizer=types.SimpleNamespace(name="adamw", eps=1e-8, betas=(0.9, 0.999)), base_lr=1e-4,
        weight_decay=0.05, epochs=30, warmup_epochs=10, min_lr=1e-5, warmup_lr=1e-6,
        lr_scheduler=types.SimpleNamespace(name="cosine"))
    optimizer = rr.load_file_module("pgseg_ref_optimizer", clone / "utils" / "optimizer.py").build_optimizer(
        config, model)
    steps_per_epoch = 1000
    try:
        scheduler = rr.load_file_module("pgseg_ref_lr", clone / "utils" / "lr_scheduler.py").build_scheduler(
            config, optimizer, steps_per_epoch)
    except TypeError:  # timm >= 0.5 renamed t_mul to cycle_mul: the same scheduler, built with today's name
        from timm.scheduler.cosine_lr import CosineLRScheduler

        scheduler = CosineLRScheduler(optimizer, t_initial=30 * steps_per_epoch, cycle_mul=1.0, lr_min=1e-5,
                                      warmup_lr_init=1e-6, warmup_t=10 * steps_per_epoch, cycle_limit=1,
                                      t_in_epochs=False)
    data = torch.load(work / "batch.pt")
    images, tokens = data["images"], data["tokens"]
    model.train()
    meters: dict = {"count": 0, "loss": 0.0}

    def step(idx: int) -> None:
        losses = model(image=images, text=tokens)
        log_vars = {k: v.mean() for k, v in losses.items()}  # utils/misc.py parse_losses
        loss = sum(v for k, v in log_vars.items() if "loss" in k)
        optimizer.zero_grad()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_GRAD)
        optimizer.step()
        scheduler.step_update(idx)
        n = images.shape[0]  # the AverageMeters: loss.item(), then the log_vars and the norm as tensors
        meters["count"] += n
        meters["loss"] += loss.item() * n
        for k, v in [*log_vars.items(), ("norm", grad_norm)]:
            meters[k] = meters.get(k, 0) + v * n
            meters[f"{k}_avg"] = meters[k] / meters["count"]

    return step


def vpltool_side(work: Path, fused: bool):
    """vpltool's model from the reference's checkpoint, `train-pgseg`'s optimizer and iteration; returns step(i)."""
    from dataclasses import replace

    import torch

    from vpltool.config.pgseg import PGSegTrainConfig
    from vpltool.models.text.pgseg import load_checkpoint, model_from_state
    from vpltool.stages import train_text as tp

    cfg, state = load_checkpoint(work / "ref_checkpoint.pth")
    model = model_from_state(replace(cfg, fused_attention=fused), state).train()
    train_cfg = PGSegTrainConfig(clip_grad=CLIP_GRAD)
    optimizer = tp.make_optimizer(model, train_cfg)
    step_module = tp.TrainStep(model, None)
    data = torch.load(work / "batch.pt")
    images, tokens = data["images"], data["tokens"]
    per_epoch = 1000

    def step(it: int) -> None:
        torch.manual_seed(tp._iteration_seed(train_cfg.seed, it, 0))
        losses, norm = tp.train_step(step_module, model, optimizer, images, tokens, tp.lr_at(train_cfg, it, per_epoch),
                                     train_cfg.clip_grad)
        if (it + 1) % train_cfg.log_every == 0:  # what the command reads when it logs
            tp._mean_losses(losses, 1)
            float(norm)

    return step


def worker(args) -> None:
    """One side in its own process: build, warm up, then ``N`` on stdin -> N steps, their CPU and wall seconds."""
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    spec = json.loads(args.spec)
    step = reference_side(Path(args.clone), spec, work) if args.worker == "ref" else \
        vpltool_side(work, fused=args.worker == "vpltool-fused")
    it = 0
    for _ in range(args.warmup):
        step(it)
        it += 1
    print("ready", flush=True)
    for line in sys.stdin:
        n = int(line)
        if n <= 0:
            break
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            step(it)
            it += 1
        print(json.dumps({"cpu_s": (time.process_time() - c0) / n, "wall_s": (time.perf_counter() - w0) / n}),
              flush=True)


# ------------------------------------------------------------------------------------------------ the parent
def start(side: str, args, work: Path, spec) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", side, "--work", str(work), "--spec",
           json.dumps(spec), "--threads", str(args.threads), "--warmup", str(args.warmup)]
    if args.ref is not None:
        cmd += ["--clone", str(args.ref)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        raise SystemExit(f"bench_train_pgseg: the {side} worker did not start (said {line!r})")
    return proc


def ask(proc: subprocess.Popen, steps: int) -> dict:
    proc.stdin.write(f"{steps}\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


def compare(name: str, args, root: Path) -> dict:
    """Alternating rounds of the sides on config ``name``; per-step medians and the per-round ratios."""
    import torch

    work = root / name
    work.mkdir(parents=True, exist_ok=True)
    conf = SPECS[name]
    size = 32 if conf["spec"] == "tiny" else conf["spec"]["img_encoder"]["img_size"]
    make_batch(work / "batch.pt", conf["batch"], size)
    sides = (["ref"] if args.ref is not None else []) + ["vpltool"] + (["vpltool-fused"] if args.fused else [])
    if args.ref is None:  # --quick without a clone: vpltool's own tiny model stands in for the reference's file
        from vpltool.models.text.pgseg import build_model, tiny_config

        torch.save({"model": build_model(tiny_config(proj_inner_dim=4096)).state_dict()}, work / "ref_checkpoint.pth")
    procs = {}
    try:
        for side in sides:  # the reference first: it writes the checkpoint the others read
            procs[side] = start(side, args, work, conf["spec"])
        rounds = []
        for r in range(args.pairs):
            order = sides if r % 2 == 0 else sides[::-1]
            rounds.append({side: ask(procs[side], args.steps) for side in order})
            print(json.dumps({"config": name, "round": r, **rounds[-1]}), file=sys.stderr, flush=True)
    finally:
        for proc in procs.values():  # done with them: no need to wait for an interpreter's teardown on a busy host
            proc.kill()
            proc.wait()
    out = {"batch": conf["batch"], "image_size": size,
           "model": "the parity's tiny MultiLabelContrastive (pgseg_ref_runner.MODEL_TINY)" if conf["spec"] == "tiny"
           else {k: v for k, v in conf["spec"]["img_encoder"].items() if k != "type"} | {
               "text_width": conf["spec"]["text_encoder"]["width"],
               "text_layers": conf["spec"]["text_encoder"]["layers"], "output_dim": conf["spec"]["output_dim"]},
           "rounds": rounds}
    for side in sides:
        out[f"{side}_cpu_s_per_step_median"] = statistics.median(r[side]["cpu_s"] for r in rounds)
        out[f"{side}_wall_s_per_step_median"] = statistics.median(r[side]["wall_s"] for r in rounds)
    if "ref" in sides:
        for side in sides[1:]:
            ratios = [r[side]["cpu_s"] / r["ref"]["cpu_s"] for r in rounds]
            out[f"{side}_over_ref_cpu"] = {"median": statistics.median(ratios), "min": min(ratios),
                                           "max": max(ratios)}
            out[f"{side}_over_ref_wall_median"] = statistics.median(r[side]["wall_s"] / r["ref"]["wall_s"]
                                                                    for r in rounds)
    return out


def write_jpegs(folder: Path, n: int) -> None:
    """``n`` synthetic 500x375 JPEGs (smooth colour fields with noise, VOC's usual size) and a caption each."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:375, 0:500].astype(np.float32)
    captions = {}
    for i in range(n):
        base = np.stack([np.sin(xx / rng.uniform(20, 80) + c) * np.cos(yy / rng.uniform(20, 80)) for c in range(3)], -1)
        img = np.clip(127 + 100 * base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / "images" / f"im{i:04d}.jpg", quality=90)
        captions[f"im{i:04d}"] = f"a photo of a red circle and a blue square number {i}."
    (folder / "captions.json").write_text(json.dumps(captions))


def loader_rate(folder: Path, crop: int, batch: int, steps: int) -> dict:
    """`train-pgseg`'s data path in this process (one core): images per CPU-second."""
    from vpltool.config.pgseg import PGSegTrainConfig
    from vpltool.data.pairs import open_pairs
    from vpltool.models.text.pgseg import tiny_config, tokenizer
    from vpltool.stages import train_text as tp

    pairs = open_pairs(folder, None)
    cfg = PGSegTrainConfig(crop_size=crop, batch_size=batch)
    views = tp.PairViews(pairs, tokenizer(tiny_config()), cfg)
    batches = tp.loader(views, tp.GlobalBatches(len(pairs.pairs), batch, 1, 0, cfg.seed, 0, steps), workers=1)
    n, c0, w0 = 0, time.process_time(), time.perf_counter()
    for images, _ in batches:
        n += images.shape[0]
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    return {"crop": crop, "images": n, "cpu_s": round(cpu, 3), "wall_s": round(wall, 3),
            "images_per_s_per_core": round(n / cpu, 1)}


def main(argv: list[str] | None = None) -> None:
    import benchlib

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    benchlib.add_common_args(ap, "tiny only, 2 rounds of 1 step, vpltool's side alone unless --ref; a small loader")
    ap.add_argument("--ref", type=Path, help="a clone of Ferenas/PGSeg (commit 9f167cd)")
    ap.add_argument("--configs", nargs="+", default=["tiny", "small"], choices=sorted(SPECS))
    ap.add_argument("--pairs", type=int, default=7, help="alternating rounds (each side --steps steps per round)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fused", action="store_true", help="also vpltool with fused_attention=True")
    ap.add_argument("--loader-images", type=int, default=256)
    ap.add_argument("--work", type=Path)
    ap.add_argument("--worker", choices=["ref", "vpltool", "vpltool-fused"], help=argparse.SUPPRESS)
    ap.add_argument("--clone", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return
    if args.device != "cpu":
        raise SystemExit("bench_train_pgseg: CPU only (the reference's fp32 loop; a GPU run would need apex O1)")
    benchlib.apply_quick(args, {"configs": ["tiny"], "pairs": 2, "steps": 1, "warmup": 1, "loader_images": 16})
    import torch

    torch.set_num_threads(args.threads)
    root = args.work or Path(tempfile.mkdtemp(prefix="bench_train_pgseg_"))
    try:
        run(args, root)
    finally:
        if args.work is None:  # a folder of its own (28 MB of checkpoints and photos a quick run): removed
            shutil.rmtree(root, ignore_errors=True)


def run(args, root: Path) -> None:
    """The configs' rounds and the loader's rates in ``root``; prints the JSON object."""
    import benchlib  # beside this script (main's sys.path)

    t0 = time.time()
    peaks = benchlib.PeakMemory("cpu")
    result = {"benchmark": "train-pgseg", "quick": args.quick, "machine": benchlib.machine("cpu"),
              "reference": None if args.ref is None else "Ferenas/PGSeg@9f167cd (main_pg_seg.py train_one_epoch, "
                                                         "fp32)",
              "threads": args.threads, "precision": "fp32", "clip_grad": CLIP_GRAD,
              "measure": "CPU-seconds (user + sys) of each side's process per step; ratio = vpltool / reference "
                         "in the same round, median over alternating rounds",
              "pairs": args.pairs, "steps_per_round": args.steps, "configs": {}}
    for name in args.configs:
        result["configs"][name] = compare(name, args, root)
    with peaks.stage("loader"):
        folder = root / "jpegs"
        write_jpegs(folder, args.loader_images)
        batch = min(32, args.loader_images)
        result["loader"] = [loader_rate(folder, crop, batch, args.loader_images // batch) for crop in (224, 32)]
    ratios = {n: c["vpltool_over_ref_cpu"]["median"] for n, c in result["configs"].items()
              if "vpltool_over_ref_cpu" in c}
    result["ratio"] = ratios or None
    result["bar"] = "vpltool's step / the reference's < 1.0 on every config (median CPU-seconds, alternating rounds)"
    result["bar_met"] = all(r < 1.0 for r in ratios.values()) if ratios else None
    result["peak_memory"] = peaks.as_list()
    result["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
