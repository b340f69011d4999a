"""The reference half of ``pgseg_trainer_parity.py``: PGSeg's (or GroupViT's) OWN training loop from a clone, fp32 on
the CPU, for one or several processes (gloo).

    python pgseg_trainer_ref_runner.py --clone DIR --plan plan.pt --out OUT [--groupvit] [--timm DIR]
    torchrun --nproc-per-node 2 pgseg_trainer_ref_runner.py ...          (two processes)

It imports nothing from vpltool; its model is the one pgseg_ref_runner.py builds (``reference_model``: seed 0 and
seeded noise, ``multi_label_logit_scale`` left at 1 / 0.07). What runs is the clone's code: ``main_pg_seg.py``
(``--groupvit``: ``main_group_vit.py``) imported as a module and its ``train_one_epoch`` called once per epoch as its
``train()`` does, with the clone's ``utils.build_optimizer`` (AdamW, weight decay off for 1-d parameters and biases)
and ``utils.build_scheduler`` (timm's ``CosineLRScheduler``, stepped by ``step_update(epoch * steps + idx)``), its
``parse_losses``, its gradient clipping, its ``MultiLabelContrastive`` with ``dist_collect`` through the real
``diffdist`` all-gather, its image transform (``datasets/builder.py build_img_transform``, ``deit_aug: false``) and
``Tokenize``. ``--timm DIR``: a folder holding timm 0.4.12 (the version both repositories pin; its
``CosineLRScheduler`` takes ``t_mul``, which timm 1.x renamed), put first on ``sys.path``.

Stubbed or changed, none of it in the compared arithmetic:

1. imports the loop never reaches (mmcv, mmseg, omegaconf, termcolor, nltk, the segmentation evaluation package,
   matplotlib) and mmcv's logger (``logging``);
2. ``torch.cuda.synchronize`` / ``max_memory_allocated`` (called by ``train_one_epoch`` for its timing log);
3. what the CPU forces: ``MMDistributedDataParallel(device_ids=[gpu])`` is torch's ``DistributedDataParallel``
   (``broadcast_buffers=False, find_unused_parameters=True`` as there, no device ids; MMDDP differs only in
   scattering mmcv DataContainers); the projectors' ``SyncBatchNorm`` is turned back into ``BatchNorm1d``
   (SyncBatchNorm refuses CPU tensors once a process group exists; with one process it IS BatchNorm, with two each
   rank normalises its own batch, as vpltool does off CUDA); apex is absent, so ``amp_opt_level`` is ``O0``;
4. the data: the plan (written by the parity driver) names each iteration's samples per rank, in the order and
   with the per-sample seeds vpltool's sampler uses, and the texts (``[caption, K noun prompts]``) its loader made;
   the loader here reads the images from the same shards (PIL, RGB, as webdataset's ``pil`` decoder), runs the
   clone's transform under ``torch.manual_seed(sample seed)`` and the clone's ``Tokenize``, then seeds torch's
   global RNG by ``SeedSequence([seed, iteration, rank])`` (the gumbel noise and drop path of the step), just
   before ``train_one_epoch`` calls the model.

Observed, not changed: ``clip_grad_norm_``'s returned norm, ``parse_losses``' terms and the rate of each
``optimizer.step``. Outputs: ``OUT/ref_checkpoint.pth`` (rank 0: the starting weights, seed 0 + seeded noise, in the
releases' layout) and ``OUT/rank{R}.pt`` (``state``: the state dict after the last step; ``steps``: per step the
losses, gradient norm and rate; ``adamw``: AdamW's state per parameter name; ``weight_decay``: the parameter names of
each AdamW group; ``first_batch``: the first batch as the model received it).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import io
import logging
import os
import sys
import tarfile
from pathlib import Path

from pgseg_ref_runner import MODEL_TINY, reference_model  # parity/ is the script's folder
from refstubs import MmcvConfig, MmcvRegistry, stub_module


def install_stubs() -> None:
    import torch
    from torch import nn

    def never(*a, **k):
        raise RuntimeError("stubbed: not on the training loop's path")

    mmcv = stub_module("mmcv", Config=MmcvConfig)
    mmcv.utils = stub_module("mmcv.utils", Registry=MmcvRegistry, get_logger=lambda *a, **k: logging.getLogger("ref"),
                             collect_env=never, get_git_hash=never)
    mmcv.image = stub_module("mmcv.image", tensor2imgs=None)
    mmcv.parallel = stub_module("mmcv.parallel", collate=never, DataContainer=never,
                                MMDistributedDataParallel=never)
    mmcv.runner = stub_module("mmcv.runner", CheckpointLoader=None, get_dist_info=never, init_dist=never,
                              set_random_seed=never)

    class EncoderDecoder(nn.Module):
        pass

    stub_module("mmseg")
    stub_module("mmseg.models", EncoderDecoder=EncoderDecoder)
    stub_module("mmseg.apis", multi_gpu_test=never, single_gpu_test=never)
    stub_module("omegaconf", OmegaConf=type("OmegaConf", (), {}), read_write=never)
    stub_module("termcolor", colored=lambda text, *a, **k: text)
    stub_module("nltk")
    stub_module("matplotlib")
    stub_module("matplotlib.pyplot")
    stub_module("segmentation")
    stub_module("segmentation.evaluation", build_seg_dataloader=never, build_seg_dataset=never,
                build_seg_inference=never)
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.max_memory_allocated = lambda *a, **k: 0


class Attr(dict):
    """A config node with attribute access (OmegaConf's, for what ``train_one_epoch`` and the builders read)."""

    def __getattr__(self, name):
        value = self[name]
        return Attr(value) if isinstance(value, dict) else value


def plain_batchnorm(module):
    """``SyncBatchNorm`` -> ``BatchNorm1d`` with the same parameters and buffers (what the CPU forces)."""
    import torch
    from torch import nn

    for name, child in module.named_children():
        if isinstance(child, nn.SyncBatchNorm):
            bn = nn.BatchNorm1d(child.num_features, child.eps, child.momentum, child.affine,
                                child.track_running_stats)
            with torch.no_grad():
                bn.load_state_dict(child.state_dict())
            setattr(module, name, bn)
        else:
            plain_batchnorm(child)


class PlanLoader:
    """``len()`` = iterations per epoch; iterating yields this rank's ``{'image', 'text'}`` of each iteration of the
    epoch set by :meth:`set_epoch` (module docstring, 4)."""

    def __init__(self, plan: dict, rank: int, transform, tokenize):
        self.plan, self.rank, self.transform, self.tokenize = plan, rank, transform, tokenize
        self.epoch, self.images, self.first = 0, {}, None

    def __len__(self) -> int:
        return self.plan["steps_per_epoch"]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def image(self, shard: str, key: str):
        from PIL import Image

        if (shard, key) not in self.images:
            with tarfile.open(shard) as tar:
                for m in tar.getmembers():
                    base, ext = m.name.split(".", 1) if "." in m.name else (m.name, "")
                    if base == key and ext in ("jpg", "png", "jpeg"):
                        self.images[shard, key] = tar.extractfile(m).read()
        with Image.open(io.BytesIO(self.images[shard, key])) as im:
            im.load()
            return im.convert("RGB")

    def __iter__(self):
        import numpy as np
        import torch

        n = self.plan["steps_per_epoch"]
        for idx in range(n):
            it = self.epoch * n + idx
            images, texts = [], []
            for sample in self.plan["iterations"][it][self.rank]:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(sample["seed"])
                    images.append(self.transform(self.image(sample["shard"], sample["key"])))
                tok = self.tokenize(sample["texts"])  # [1 + K, L]
                texts.append(tok if len(sample["texts"]) > 1 else tok[0])
            batch = {"image": torch.stack(images), "text": torch.stack(texts)}
            if self.first is None:
                self.first = {k: v.clone() for k, v in batch.items()}
            torch.manual_seed(int(np.random.SeedSequence([self.plan["seed"], it, self.rank]).generate_state(1)[0]))
            yield batch


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clone", required=True, type=Path)
    ap.add_argument("--plan", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--groupvit", action="store_true", help="the clone is NVlabs/GroupViT (main_group_vit.py)")
    ap.add_argument("--timm", type=Path, help="a folder holding timm 0.4.12, put first on sys.path")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.timm is not None:
        sys.path.insert(0, str(args.timm.resolve()))
    import torch
    import torch.distributed as dist

    torch.set_num_threads(args.threads)
    plan = torch.load(args.plan.resolve())
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if "RANK" not in os.environ:  # one process: a gloo group of one (the reference always runs distributed)
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(plan["port"]))
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == plan["world"], (world, plan["world"])
    clone = args.clone.resolve()
    sys.path.insert(0, str(clone))
    os.chdir(clone)
    install_stubs()
    main_mod = importlib.import_module("main_group_vit" if args.groupvit else "main_pg_seg")
    builder = importlib.import_module("datasets.builder")
    utils = importlib.import_module("utils")

    # multi_label_logit_scale kept at 1 / 0.07: vpltool's --init starts that scale afresh (GroupViT's releases are
    # read for inference)
    model, _ = reference_model(MODEL_TINY, groupvit=args.groupvit, multi_label=plan["multi_label"],
                               kept=("multi_label_logit_scale",))
    if rank == 0:
        torch.save({"model": {k: v.clone() for k, v in model.state_dict().items()}}, out / "ref_checkpoint.pth")
    plain_batchnorm(model)
    cfg = Attr(plan["config"])  # data / train / print_freq / wandb: default_pgseg.yml's keys, the run's values
    optimizer = utils.build_optimizer(cfg.train, model)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]
    ddp = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False, find_unused_parameters=True)
    transform = builder.build_img_transform(True, cfg.data.img_aug)
    tokenize = builder.Tokenize(importlib.import_module("datasets.tokenizer").SimpleTokenizer(),
                                max_seq_len=cfg.data.text_aug.max_seq_len)
    data = PlanLoader(plan, rank, transform, tokenize)
    lr_scheduler = utils.build_scheduler(cfg.train, optimizer, len(data))

    steps: list[dict] = []
    clip, parse = torch.nn.utils.clip_grad_norm_, main_mod.parse_losses
    step = optimizer.step

    def clip_seen(*a, **k):
        norm = clip(*a, **k)
        steps[-1]["grad_norm"] = float(norm)
        return norm

    def parse_seen(losses):
        loss, log_vars = parse(losses)
        steps.append({k: float(v) for k, v in log_vars.items()} | {"total": float(loss)})
        return loss, log_vars

    def step_seen(*a, **k):
        steps[-1]["lr"] = [g["lr"] for g in optimizer.param_groups]
        return step(*a, **k)

    torch.nn.utils.clip_grad_norm_, main_mod.parse_losses, optimizer.step = clip_seen, parse_seen, step_seen
    for epoch in range(cfg.train.start_epoch, cfg.train.epochs):  # main_pg_seg.py train()'s loop, less eval/saving
        data.set_epoch(epoch)
        main_mod.train_one_epoch(cfg, ddp, data, optimizer, epoch, lr_scheduler)
    moments = {names[id(p)]: {k: v.clone() for k, v in optimizer.state[p].items()} for g in optimizer.param_groups
               for p in g["params"] if p in optimizer.state}
    torch.save({"state": {k: v.detach().clone() for k, v in model.state_dict().items()}, "steps": steps,
                "adamw": moments,
                "weight_decay": {"decay": groups[0], "no_decay": groups[1]}, "world": world, "first_batch": data.first,
                "timm": importlib.import_module("timm").__version__}, out / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
    print(f"rank {rank}: wrote {out / f'rank{rank}.pt'} ({len(steps)} steps)")


if __name__ == "__main__":
    main()
