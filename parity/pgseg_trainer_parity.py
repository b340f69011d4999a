"""`train-pgseg`, the whole trainer, against PGSeg's and GroupViT's own training loops: every weight after >= 20
optimiser steps, in one process and in two (gloo, CPU).

    python parity/pgseg_trainer_parity.py --ref PGSEG_CLONE --groupvit GROUPVIT_CLONE --work W > out.json
    python parity/pgseg_trainer_parity.py --quick                  (no clone: the trainer against a restated loop)

The data: ``--photos`` of the parity photos (``bench/bench_cam.py``, scikit-image's) with a caption each, written as
two webdataset shards (``KEY.jpg`` + ``KEY.txt``, img2dataset's layout), and a noun file (the photos' class names).
Two cases, each in one process (batch ``B``) and in two (``B / 2`` each, the same global batch):

* ``pgseg``: Ferenas/PGSeg (9f167cd) ``main_pg_seg.py``'s loop on its PGSeg model (I-NPR, T-NPR and its text
  prototype buffer; its config has no multi-label loss, and cannot take one: its T-NPR matches ``B (1 + K)`` text
  prototypes against ``B`` images), against ``train-pgseg --init ref_checkpoint.pth``;
* ``groupvit``: NVlabs/GroupViT (13b7861) ``main_group_vit.py``'s loop (the same ``train_one_epoch`` body) on its
  GroupViT with the multi-label loss, ``K`` noun prompts per caption, against ``train-pgseg --no-npr --multi-label K
  --nouns FILE``.

Both sides start from the reference's model (seed 0, seeded noise: the runner's ``ref_checkpoint.pth``), take the same
samples in the same order with the crop and flip of each drawn from the same seed, the same texts (vpltool's loader
makes them; the reference tokenises them with its own ``Tokenize``), and seed each step's gumbel noise and drop path
by ``(seed, iteration, rank)``. The schedule is warm-up then cosine within the run, the clip binds on some steps
(counted), the AdamW groups are compared by name. vpltool runs as users run it: ``python -m vpltool train-pgseg``
(two processes: ``torchrun --nproc-per-node 2 -m vpltool train-pgseg``); its final state is read from its last
checkpoint (model and AdamW state). Bar: every weight and buffer <= 1e-5.

``--quick`` (no clone, seconds): ``run_train_text`` on a tiny model against a loop restated from the reference's
recipe with other code (timm's ``CosineLRScheduler`` stepped as ``step_update(epoch * steps + idx)``, AdamW over
``set_weight_decay``'s two groups, ``clip_grad_norm_``), on the same batches (tests/test_pgseg_trainer_parity.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "bench"))
BAR = 1e-5
TEMPLATES = ("a photo of {}.", "{} in a picture.", "there is {} here.", "an image showing {}.")
CASES = {"pgseg": {"npr": True, "multi_label": 0}, "groupvit": {"npr": False, "multi_label": 3}}


def caption_of(labels: tuple[str, ...], i: int) -> str:
    return TEMPLATES[i % len(TEMPLATES)].format(" and ".join(f"a {c}" for c in labels))


def make_shards(work: Path, n: int, reuse: bool = False) -> tuple[Path, Path]:
    """``n`` parity photos with captions as two shards ``pairs/0000{0,1}.tar``, and ``nouns.txt`` (``reuse``: those
    already in ``work``)."""
    import bench_cam

    if reuse and (work / "nouns.txt").is_file() and len(list((work / "pairs").glob("*.tar"))) == 2:
        return work / "pairs", work / "nouns.txt"
    voc = work / "voc"
    if len(list((voc / "JPEGImages").glob("*.jpg"))) != n:
        bench_cam.make_voc(voc, n)
    shards = work / "pairs"
    shards.mkdir(parents=True, exist_ok=True)
    nouns = set()
    for s in range(2):
        with tarfile.open(shards / f"{s:05d}.tar", "w") as tar:
            for i in range(s, n, 2):
                labels = bench_cam.PHOTOS[i % len(bench_cam.PHOTOS)][3]
                nouns.update(labels)
                key = f"{i:06d}"
                tar.add(voc / "JPEGImages" / f"img_{i:03d}.jpg", arcname=f"{key}.jpg")
                text = (work / f"{key}.txt")
                text.write_text(caption_of(labels, i))
                tar.add(text, arcname=f"{key}.txt")
                text.unlink()
    (work / "nouns.txt").write_text("\n".join(sorted(nouns)) + "\n")
    return shards, work / "nouns.txt"


def train_config(args, case: str, world: int):
    from vpltool.config.pgseg import pgseg_recipe

    return pgseg_recipe("reference", preset="tiny", npr=CASES[case]["npr"], batch_size=args.batch // world,
                        epochs=args.epochs, warmup_epochs=args.warmup_epochs, lr=args.lr, warmup_lr=args.warmup_lr,
                        min_lr=args.min_lr, weight_decay=0.05, clip_grad=args.clip, crop_size=32,
                        min_scale=args.min_scale, seed=args.seed, log_every=1,
                        multi_label=CASES[case]["multi_label"])


def make_plan(shards: Path, nouns: Path, cfg, world: int, port: int) -> dict:
    """Per iteration, per rank: the samples vpltool's sampler gives (``GlobalBatches``), each with its shard, key,
    crop seed and the texts vpltool's loader makes of it (``PairViews``' tokenizer call, recorded)."""
    import numpy as np

    from vpltool.data.nouns import noun_source
    from vpltool.data.pairs import open_pairs
    from vpltool.stages.train_text import GlobalBatches, PairViews, steps_per_epoch

    pairs = open_pairs(shards, None)
    said: list[list[str]] = []

    def record(texts):
        said.append(list(texts))
        return np.zeros((len(texts), 1))

    find = noun_source(nouns)[0] if cfg.multi_label else None
    views = PairViews(pairs, record, cfg, find)
    per_epoch = steps_per_epoch(len(pairs.pairs), cfg.batch_size, world)
    total = cfg.epochs * per_epoch
    iterations = [[None] * world for _ in range(total)]
    for rank in range(world):
        for it, batch in enumerate(GlobalBatches(len(pairs.pairs), cfg.batch_size, world, rank, cfg.seed, 0, total)):
            samples = []
            for index, epoch in batch:
                said.clear()
                views[(index, epoch)]
                pair = pairs.pairs[index]
                shard, key = pair.key.split(":", 1)
                samples.append({"shard": str(Path(pair.source).resolve()), "key": key, "texts": said[0],
                                "seed": int(np.random.SeedSequence([cfg.seed, epoch, index]).generate_state(1)[0])})
            iterations[it][rank] = samples
    config = {
        "data": {"batch_size": cfg.batch_size,
                 "img_aug": {"deit_aug": False, "img_size": cfg.crop_size, "img_scale": [cfg.min_scale, 1.0],
                             "interpolation": "bilinear"},
                 "text_aug": {"max_seq_len": 77, "multi_label": cfg.multi_label, "word_type": "noun"}},
        "train": {"start_epoch": 0, "epochs": cfg.epochs, "warmup_epochs": cfg.warmup_epochs, "base_lr": cfg.lr,
                  "weight_decay": cfg.weight_decay, "warmup_lr": cfg.warmup_lr, "min_lr": cfg.min_lr,
                  "clip_grad": cfg.clip_grad, "accumulation_steps": 0, "amp_opt_level": "O0",
                  "lr_scheduler": {"name": "cosine"},
                  "optimizer": {"name": "adamw", "eps": cfg.eps, "betas": [cfg.beta1, cfg.beta2]}},
        "print_freq": 10, "wandb": False}
    return {"config": config, "seed": cfg.seed, "world": world, "steps_per_epoch": per_epoch,
            "multi_label": cfg.multi_label, "iterations": iterations, "port": port}


def timm_0412(work: Path) -> Path:
    """timm 0.4.12 (both references pin it) in a folder of its own, installed once with pip."""
    target = work / "timm-0.4.12"
    if not (target / "timm" / "version.py").is_file():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                        "timm==0.4.12"], check=True, stdout=sys.stderr)
    return target


def run_reference(args, clone: Path, case: str, world: int, plan_path: Path, out: Path, timm: Path, port: int):
    runner = [str(HERE / "pgseg_trainer_ref_runner.py"), "--clone", str(clone), "--plan", str(plan_path),
              "--out", str(out), "--timm", str(timm), "--threads", "1"] + (["--groupvit"] if case == "groupvit" else [])
    cmd = [sys.executable] + runner if world == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world), "--master-port", str(port)] \
        + runner
    env = {"OMP_NUM_THREADS": "1", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    subprocess.run(cmd, check=True, stdout=sys.stderr, env=env)


def run_vpltool(shards: Path, nouns: Path, init: Path, out: Path, cfg, world: int, port: int) -> None:
    cli = ["-m", "vpltool", "train-pgseg", str(shards), "--out", str(out), "--overwrite", "--init", str(init),
           "--batch-size", str(cfg.batch_size), "--epochs", str(cfg.epochs), "--warmup-epochs",
           str(cfg.warmup_epochs), "--lr", repr(cfg.lr), "--warmup-lr", repr(cfg.warmup_lr), "--min-lr",
           repr(cfg.min_lr), "--weight-decay", repr(cfg.weight_decay), "--clip-grad", repr(cfg.clip_grad),
           "--crop-size", str(cfg.crop_size), "--min-scale", repr(cfg.min_scale), "--seed", str(cfg.seed),
           "--log-every", "1", "--workers", "1", "--device", "cpu"] + ([] if cfg.npr else ["--no-npr"])
    if cfg.multi_label:
        cli += ["--multi-label", str(cfg.multi_label), "--nouns", str(nouns)]
    cmd = [sys.executable] + cli if world == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world), "--master-port", str(port)] \
        + cli
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run(cmd, check=True, stdout=sys.stderr, stderr=sys.stderr, env=env)


def max_abs(a, b) -> float:
    import torch

    a, b = torch.as_tensor(a), torch.as_tensor(b)
    if a.shape != b.shape:
        return float("inf")
    if not a.is_floating_point():
        return float((a != b).sum())
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


LOSS_TERMS = {"loss": "total", "contrastive": "loss", "npr": "loss_pg", "multi_label": "multi_label_loss"}


def same_number(a: float, b: float) -> float:
    """``|a - b|``, 0 when both are NaN (T-NPR's term is NaN on a batch where HRS keeps no row: the reference's
    arithmetic, on both sides)."""
    return 0.0 if math.isnan(a) and math.isnan(b) else abs(a - b)


def optimizer_names(cfg, init: Path) -> list[str]:
    """The parameter name of each index of vpltool's AdamW state (its groups' order, :func:`make_optimizer`)."""
    from dataclasses import replace

    from vpltool.models.text.pgseg import PGSeg, load_checkpoint
    from vpltool.stages.train_text import make_optimizer

    init_cfg, _ = load_checkpoint(init)
    model = PGSeg(replace(init_cfg, npr=cfg.npr, multi_label=cfg.multi_label))
    names = {id(p): n for n, p in model.named_parameters()}
    groups = [[names[id(p)] for p in g["params"]] for g in make_optimizer(model, cfg).param_groups]
    return groups


def compare(ref_dir: Path, vt_dir: Path, cfg, world: int) -> dict:
    """Every tensor of rank 0's final state (the reference's model vs vpltool's last checkpoint), AdamW's moments by
    parameter name, the per-step losses (mean over the ranks), rate and gradient norm, the weight-decay groups."""
    import torch

    from vpltool import io

    refs = [torch.load(ref_dir / f"rank{r}.pt") for r in range(world)]
    ref = refs[0]
    vt_state, vt_optim, _ = io.read_checkpoint(vt_dir / "checkpoints" / "last.safetensors", kind="pgseg-checkpoint")
    rs = ref["state"]
    common = sorted(set(rs) & set(vt_state))
    per = {k: max_abs(rs[k], vt_state[k]) for k in common}
    buffers = {k for k in common if k.endswith(".mu") or "running_" in k or "num_batches" in k}
    params = set(common) - buffers
    worst = max(per, key=per.get)
    groups = optimizer_names(cfg, ref_dir / "ref_checkpoint.pth")
    order = groups[0] + groups[1]
    moments = {}
    for index, slot in vt_optim["state"].items():
        name = order[index]
        for k in ("exp_avg", "exp_avg_sq"):
            moments[f"{name}.{k}"] = max_abs(ref["adamw"][name][k], slot[k])
    log = [json.loads(line) for line in (vt_dir / "log.jsonl").read_text().splitlines()]
    steps = []
    for i, rec in enumerate(log):
        r = [rr["steps"][i] for rr in refs]
        row = {"iter": rec["iter"], "lr_vpltool": rec["lr"], "lr_reference": r[0]["lr"][0]}
        for ours, theirs in LOSS_TERMS.items():
            if ours in rec:
                row[f"{ours}_vpltool"] = rec[ours]
                row[f"{ours}_reference"] = sum(x[theirs] for x in r) / world
        row.update(grad_norm_vpltool=rec["grad_norm"], grad_norm_reference=r[0]["grad_norm"],
                   clipped=r[0]["grad_norm"] > cfg.clip_grad)
        steps.append(row)
    terms = [t for t in LOSS_TERMS if f"{t}_vpltool" in steps[0]]
    first = ref["first_batch"]
    return {
        "world_size": world, "batch_per_process": cfg.batch_size, "steps": len(steps),
        "steps_reference": len(ref["steps"]), "warmup_steps": cfg.warmup_epochs * len(steps) // cfg.epochs,
        "first_batch": {"images": list(first["image"].shape), "texts": list(first["text"].shape)},
        "tensors_compared": len(common), "parameters_compared": len(params), "buffers_compared": len(buffers),
        "only_reference": sorted(set(rs) - set(vt_state)), "only_vpltool": sorted(set(vt_state) - set(rs)),
        "max_abs_parameters": max(per[k] for k in params), "max_abs_buffers": max(per[k] for k in buffers),
        "max_abs_all": per[worst], "worst_tensor": worst,
        "buffers": {k: per[k] for k in sorted(buffers) if not k.endswith("num_batches_tracked")},
        "adamw_moments_compared": len(moments), "max_abs_adamw_moments": max(moments.values()),
        "weight_decay_groups_equal": sorted(groups[0]) == sorted(ref["weight_decay"]["decay"])
        and sorted(groups[1]) == sorted(ref["weight_decay"]["no_decay"]),
        "weight_decay_group_sizes": [len(ref["weight_decay"]["decay"]), len(ref["weight_decay"]["no_decay"])],
        "lr_max_abs": max(abs(s["lr_vpltool"] - s["lr_reference"]) for s in steps),
        "loss_max_abs": {t: max(same_number(s[f"{t}_vpltool"], s[f"{t}_reference"]) for s in steps) for t in terms},
        "steps_with_nan_loss": sum(math.isnan(s["loss_reference"]) for s in steps),
        "grad_norm_max_abs": max(abs(s["grad_norm_vpltool"] - s["grad_norm_reference"]) for s in steps),
        "clip": cfg.clip_grad, "clipped_steps": sum(s["clipped"] for s in steps),
        "per_step": steps,
        "bar_met": per[worst] <= BAR and max(moments.values()) <= BAR and not (set(rs) ^ set(vt_state))
        and len(steps) == len(ref["steps"]),
    }


def run_case(args, case: str, clone: Path, world: int, shards: Path, nouns: Path, timm: Path) -> dict:
    import torch

    cfg = train_config(args, case, world)
    base = args.work / f"{case}-w{world}"
    base.mkdir(parents=True, exist_ok=True)
    port = 29600 + 10 * world + (0 if case == "pgseg" else 5)
    plan = make_plan(shards, nouns, cfg, world, port)
    torch.save(plan, base / "plan.pt")
    if not (args.reuse and all((base / "ref" / f"rank{r}.pt").is_file() for r in range(world))):
        run_reference(args, clone, case, world, base / "plan.pt", base / "ref", timm, port + 1)
    if not (args.reuse and (base / "vpltool" / "checkpoints" / "last.safetensors").is_file()):
        run_vpltool(shards, nouns, base / "ref" / "ref_checkpoint.pth", base / "vpltool", cfg, world, port + 2)
    return compare(base / "ref", base / "vpltool", cfg, world)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ref", type=Path, help="a clone of Ferenas/PGSeg (9f167cd)")
    ap.add_argument("--groupvit", type=Path, help="a clone of NVlabs/GroupViT (13b7861)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/pgseg_trainer_parity"))
    ap.add_argument("--quick", action="store_true", help="no clone: the trainer against a restated loop")
    ap.add_argument("--reuse", action="store_true", help="keep outputs already in --work")
    ap.add_argument("--worlds", default="1,2")
    ap.add_argument("--photos", type=int, default=24)
    ap.add_argument("--batch", type=int, default=8, help="the global batch")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--warmup-epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup-lr", type=float, default=1e-5)
    ap.add_argument("--min-lr", type=float, default=1e-4)
    ap.add_argument("--clip", type=float, default=50.0, help="binds on about half the steps")
    ap.add_argument("--min-scale", type=float, default=0.08)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timm", type=Path, help="a folder holding timm 0.4.12 (default: pip-installed into --work)")
    args = ap.parse_args(argv)
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.quick:
        from pgseg_trainer_quick import quick

        print(json.dumps(quick(args.work), indent=1))
        return
    shards, nouns = make_shards(args.work, args.photos, args.reuse)
    timm = args.timm or timm_0412(args.work)
    result = {"bar": BAR, "machine": "CPU, fp32, OMP_NUM_THREADS=1",
              "settings": {k: getattr(args, k) for k in ("photos", "batch", "epochs", "warmup_epochs", "lr",
                                                         "warmup_lr", "min_lr", "clip", "min_scale", "seed")},
              "cases": {}}
    worlds = [int(w) for w in args.worlds.split(",")]
    for case, clone in (("pgseg", args.ref), ("groupvit", args.groupvit)):
        if clone is None:
            continue
        for world in worlds:
            result["cases"][f"{case}-w{world}"] = run_case(args, case, clone.resolve(), world, shards, nouns, timm)
    result["bar_met"] = bool(result["cases"]) and all(c["bar_met"] for c in result["cases"].values())
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
