"""``pgseg_trainer_parity.py --quick``: `train-pgseg` against the reference's recipe restated with other code, no clone.

``run_train_text`` (the library behind the command) trains a tiny PGSeg with I-NPR, T-NPR and a multi-label loss on
a shard of 8 drawn pictures; the restated loop trains the same starting weights on the same batches with the
reference's loop as ``main_pg_seg.py`` writes it, built from other code than the trainer's: AdamW over
``utils/optimizer.py``'s two groups (no weight decay for 1-d parameters and biases), timm's own
``CosineLRScheduler`` stepped by ``step_update(epoch * steps + idx)`` after each step, ``clip_grad_norm_`` between
backward and step, each step's RNG seeded by ``(seed, iteration, rank)``. Both final states must agree within 1e-5.
A negative control runs the restated loop with the schedule one step ahead (``step_update(... + idx + 1)``): it must
NOT agree, so that the comparison can fail.
"""

from __future__ import annotations

import tarfile
from dataclasses import replace
from pathlib import Path

SHAPES = ("square", "circle", "triangle", "star")
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220), "yellow": (230, 220, 40)}


def make_shard(work: Path, n: int = 8) -> tuple[Path, Path]:
    """``n`` 48 px pictures of one or two coloured blobs, captioned, as ``pairs/00000.tar``; ``nouns.txt``."""
    import io

    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.RandomState(0)
    folder = work / "pairs"
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / "00000.tar", "w") as tar:
        for i in range(n):
            img = Image.fromarray(rng.randint(0, 60, (48, 48, 3)).astype(np.uint8))
            draw, words = ImageDraw.Draw(img), []
            for _ in range(1 + i % 2):
                colour, shape = list(COLOURS)[rng.randint(4)], SHAPES[rng.randint(4)]
                x, y = rng.randint(0, 28, 2)
                draw.ellipse((x, y, x + 20, y + 20), fill=COLOURS[colour])
                words.append(f"a {colour} {shape}")
            for name, data in ((f"{i:04d}.png", _png(img, io)), (f"{i:04d}.txt", " and ".join(words).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (work / "nouns.txt").write_text("\n".join(SHAPES) + "\n")
    return folder, work / "nouns.txt"


def _png(img, io) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def restated_loop(init: Path, pairs_path: Path, nouns: Path, cfg, ahead: int = 0) -> dict:
    """The reference's loop on vpltool's model and batches (module doc); ``ahead``: the schedule that many steps
    ahead (the negative control). Returns the final state dict."""
    import numpy as np
    import torch
    from timm.scheduler.cosine_lr import CosineLRScheduler

    from vpltool.data.nouns import noun_source
    from vpltool.data.pairs import open_pairs
    from vpltool.models.text.pgseg import PGSeg, load_checkpoint, tokenizer
    from vpltool.stages.train_text import GlobalBatches, PairViews

    model_cfg, state = load_checkpoint(init)
    model_cfg = replace(model_cfg, npr=cfg.npr, multi_label=cfg.multi_label)
    model = PGSeg(model_cfg)
    model.load_state_dict(state, strict=False)
    decay, plain = [], []
    for name, p in model.named_parameters():  # utils/optimizer.py set_weight_decay
        (plain if len(p.shape) == 1 or name.endswith(".bias") else decay).append(p)
    optimizer = torch.optim.AdamW([{"params": decay}, {"params": plain, "weight_decay": 0.0}], eps=cfg.eps,
                                  betas=(cfg.beta1, cfg.beta2), lr=cfg.lr, weight_decay=cfg.weight_decay)
    pairs = open_pairs(pairs_path, None)
    per_epoch = len(pairs.pairs) // cfg.batch_size
    scheduler = CosineLRScheduler(optimizer, t_initial=cfg.epochs * per_epoch, lr_min=cfg.min_lr,
                                  warmup_lr_init=cfg.warmup_lr, warmup_t=cfg.warmup_epochs * per_epoch,
                                  cycle_limit=1, t_in_epochs=False)  # utils/lr_scheduler.py (t_mul 1: the default)
    views = PairViews(pairs, tokenizer(model_cfg), cfg, noun_source(nouns)[0] if cfg.multi_label else None)
    batches = GlobalBatches(len(pairs.pairs), cfg.batch_size, 1, 0, cfg.seed, 0, cfg.epochs * per_epoch)
    model.train()
    lrs = []
    for it, keys in enumerate(batches):
        epoch, idx = divmod(it, per_epoch)
        items = [views[k] for k in keys]
        images, tokens = torch.stack([i[0] for i in items]), torch.stack([i[1] for i in items])
        torch.manual_seed(int(np.random.SeedSequence([cfg.seed, it, 0]).generate_state(1)[0]))
        loss = model.forward_train(images, tokens)["loss"]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step_update(epoch * per_epoch + idx + ahead)
    return {"state": {k: v.detach().clone() for k, v in model.state_dict().items()}, "lr": lrs}


def quick(work: Path) -> dict:
    import torch

    from vpltool import io
    from vpltool.config import RuntimeConfig
    from vpltool.config.pgseg import pgseg_recipe
    from vpltool.models.text.pgseg import build_model, save_checkpoint, tiny_config
    from vpltool.stages.train_text import run_train_text

    torch.set_num_threads(1)
    pairs, nouns = make_shard(work)
    cfg = pgseg_recipe("reference", preset="tiny", batch_size=4, epochs=6, warmup_epochs=2, lr=1e-3, warmup_lr=1e-5,
                       min_lr=1e-4, clip_grad=400.0, crop_size=32, min_scale=0.5, log_every=1, multi_label=2)
    init = save_checkpoint(work / "init.safetensors", build_model(tiny_config(multi_label=2), seed=3))
    logged: list[dict] = []
    run_train_text(pairs, work / "run", cfg, RuntimeConfig(device="cpu", workers=1, overwrite=True), init=init,
                    nouns=nouns, split=None, on_iter=lambda n, rec: logged.append(rec))
    trained, _, _ = io.read_checkpoint(work / "run" / "checkpoints" / "last.safetensors", kind="pgseg-checkpoint")
    out = {"steps": len(logged), "clip": cfg.clip_grad,
           "clipped_steps": sum(rec["grad_norm"] > cfg.clip_grad for rec in logged),
           "grad_norms": [round(rec["grad_norm"], 4) for rec in logged]}
    for name, ahead in (("restated", 0), ("schedule_one_step_ahead", 1)):
        ref = restated_loop(init, pairs, nouns, cfg, ahead)
        diff = max(float((ref["state"][k].double() - trained[k].double()).abs().max()) for k in ref["state"])
        out[name] = {"max_abs_state": diff, "same_keys": sorted(ref["state"]) == sorted(trained),
                     "lr_max_abs": max(abs(a - rec["lr"]) for a, rec in zip(ref["lr"], logged, strict=True))}
    out["bar_met"] = (out["restated"]["max_abs_state"] <= 1e-5 and out["restated"]["same_keys"]
                      and out["schedule_one_step_ahead"]["max_abs_state"] > 1e-5)
    return out
