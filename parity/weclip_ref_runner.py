"""Run WeCLIP's OWN training and test code (zbf1991/WeCLIP, folder ``WeCLIP/``) from a clone, on the CPU in fp32,
without mmcv / ttach / omegaconf / lxml: the reference half of ``weclip_parity.py``.

    python weclip_ref_runner.py --clone DIR --weights W.pt --voc VOC_ROOT --out OUT_DIR \\
        [--crops 4] [--steps 3] [--images 12] [--threads 1] [--seed 0]

``DIR`` is the clone's root (the folder holding ``WeCLIP/`` and ``WeCLIP+/``). It imports nothing from vpltool:
run it as its own process, with a Python that has torch, torchvision, ftfy, regex, numpy, OpenCV, imageio, joblib
and pydensecrf. The clone's code is never copied or edited; it is imported with ``DIR/WeCLIP`` first on
``sys.path`` and as the working directory, and only what a CPU run without the unused packages needs is put
around it:

1. stub modules for imports whose code the arithmetic never reaches: ``mmcv.cnn.ConvModule`` (imported, unused, by
   ``segformer_head.py``), ``ttach`` (imported by ``pytorch_grad_cam.base_cam``, used only by its test-time
   augmentation, which WeCLIP does not call), ``omegaconf`` (the scripts' config reader; the config values are
   given below) and, only if missing: ``numpy.lib.utils`` (numpy 1.x's ``deprecate``, imported, unused, by
   ``datasets/voc.py``), ``joblib`` (the test script's CRF jobs, run in turn), ``matplotlib.pyplot``
   (``utils/imutils.py``'s tensorboard pictures), ``sklearn.metrics`` (``utils/evaluate.py``'s unused f1 helper),
   ``pkg_resources`` (its ``packaging``: ``clip/clip.py``'s torch version check) and ``lxml.etree`` (imported by
   ``clip/clip_tool.py``; WeCLIP reads no XML);
2. ``Tensor.cuda`` / ``Module.cuda`` are the identity (the code moves every tensor with ``.cuda()``), and
   ``Tensor.half`` is the identity (``clip/model.py:upsample_pos_emb`` rounds the resized positional embedding to
   fp16 for its fp16 GPU tower; the parity is in fp32, as ``clip.load`` on the CPU gives);
3. the model is ``WeCLIP_model.model_attn_aff_voc.WeCLIP`` as ``scripts/dist_clip_voc.py`` builds it from
   ``configs/voc_attn_reg.yaml`` (21 classes, embedding 256, in_channels [768]*4), with ``--weights`` for
   ``clip_pretrain_path`` and the decoder's default initialisation drawn after ``torch.manual_seed(--seed)``;
   **Dropout2d is off** (the model in ``eval()``): its random mask is not drawn alike by two codes;
4. the data is a VOC root written by ``weclip_parity.py``: ``JPEGImages``, ``SegmentationClassAug`` (the PNG WeCLIP
   reads the image's labels from), and ``ImageSets/Segmentation`` with ``train.txt``, ``val.txt`` and
   ``cls_labels_onehot.npy``.

5. ``--tree WeCLIP+``: the clone's ``WeCLIP+/`` code (``WeCLIP_Plus.model_attn_aff_voc.WeCLIP_Plus`` with its voc
   config's ``dinov2_vits14``, 384, 3 decoder layers, clip_flag 16, base lr 2e-5); its
   ``torch.hub.load('facebookresearch/dinov2', ...)`` builds the model from ``--dino-repo`` (a local dinov2 clone,
   ``source="local"``, ``pretrained=False``) and loads ``--dino-weights`` strictly (:func:`local_hub`). It reads an
   image's labels from ``Annotations/NAME.xml`` (``weclip_parity.py`` writes them). Its forward always refines
   (RFM), so ``pseudo.pt`` holds one pass (``rfm``) with ``seg_dino``, ``dino_tokens`` and ``dino_fts``; its
   training loop body is ``WeCLIP+/scripts/dist_clip_voc.py:260-292`` (:func:`plus_steps`). ``--parts crf`` runs the
   test script's CRF alone on a finished ``test/logit``; ``--parts batch`` writes ``batch.pt`` alone (no model).

Outputs in ``--out`` (torch files of float32 tensors and a JSON):

* ``init.pt``: the decoder's initial state dict (``decoder_fts_fuse.*``, ``decoder.*``: WeCLIP's names) and the
  text rows ``bg_text_features`` ``[25, 512]`` / ``fg_text_features`` ``[20, 512]`` ("a clean origami {}.");
* ``batch.pt``: the fixed training batch: ``inputs`` ``[B, 3, 320, 320]`` (``VOC12ClsDataset``'s own
  augmentation: scale [0.5, 2], flip, 320 crop with black padding, ImageNet normalisation; numpy / random seeded
  with ``--seed``), ``names``;
* ``pseudo.pt``: one forward of the batch, without RFM (``iter_num`` <= 15000) and with it (> 15000):
  ``fts`` ``[B, 256, 20, 20]`` (the fused features), ``seg`` ``[B, 21, 20, 20]``, ``attn_pred``
  ``[B, 400, 400]``, and per image ``keys``, ``cam_refined`` ``[K, 20, 20]`` (the propagated CAMs),
  ``refined_cam`` ``[K, 320, 320]`` (``generate_cam_label``), ``cams`` ``[K+1, 320, 320]`` (with the background
  score), ``labels`` ``[320, 320]`` (after PAR); ``clip_blocks`` ``[11, 401, B, 768]`` and ``clip_attn``
  ``[B, 11, 401, 401]`` (the frozen tower's blocks 0-10 and their attention maps: the decoder's input);
* ``train.pt``: ``--steps`` iterations of the training loop's body (``dist_clip_voc.py:235-264``: forward,
  upsample, affinity label with radius 8, ``get_aff_loss``, ``get_seg_loss``, ``seg + 0.1 * aff``, backward,
  ``PolyWarmupAdamW.step``) on the fixed batch: per step ``loss``, ``seg_loss``, ``aff_loss``, ``lr`` (per group),
  ``grads`` and ``params`` after the step (the decoder's, by name);
* ``test/``: ``test_msc_flip_voc.validate`` on ``--images`` names of ``val.txt`` from ``--skip`` on (long side 512,
  scales [1, 0.75], flip) with the initial decoder: ``logit/NAME.npy`` (``segs``, ``msc_segs``), then
  ``crf_proc`` (its DenseCRF, 10 iterations): ``prediction/NAME.png``;
* ``meta.json``: the settings, the stubs, seconds, torch's version.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
import time
from pathlib import Path

from refstubs import in_clone, stub_module, stub_pkg_resources  # parity/ is the script's folder

STUBBED: list[str] = []
CONFIG = {"num_classes": 21, "embedding_dim": 256, "in_channels": [768, 768, 768, 768], "crop_size": 320,
          "rescale_range": [0.5, 2.0], "ignore_index": 255, "lr": 2e-4, "weight_decay": 0.01, "betas": [0.9, 0.999],
          "warmup_iter": 50, "warmup_ratio": 1e-6, "power": 1.0, "max_iters": 30000, "radius": 8,
          "resize_long": 512, "test_scales": [1, 0.75]}


# --------------------------------------------------------------------------------------------- stubs
def install_stubs() -> None:
    """Point 1 of the module docstring."""
    import torch.nn as nn

    class ConvModule(nn.Module):  # imported by segformer_head.py, never built
        def __init__(self, *args, **kwargs):
            raise RuntimeError("mmcv's ConvModule is stubbed: WeCLIP's model does not build it")

    for name in ("mmcv", "ttach", "omegaconf"):
        stub_module(name)
    stub_module("mmcv.cnn", ConvModule=ConvModule)
    sys.modules["omegaconf"].OmegaConf = None
    STUBBED.extend(["mmcv", "mmcv.cnn", "ttach", "omegaconf"])
    for name in ("mmseg", "mmseg.ops"):
        stub_module(name)
    sys.modules["mmseg.ops"].resize = None
    STUBBED.append("mmseg.ops")
    try:
        importlib.import_module("numpy.lib.utils")
    except ImportError:  # datasets/voc.py imports numpy 1.x's deprecate (gone in numpy 2) and never calls it
        stub_module("numpy.lib.utils", deprecate=lambda *a, **k: None)
        STUBBED.append("numpy.lib.utils.deprecate (numpy 2)")
    try:
        importlib.import_module("sklearn.metrics")
    except ImportError:  # utils/evaluate.py: only its unused f1 helper calls it
        stub_module("sklearn")
        stub_module("sklearn.metrics", f1_score=None)
        STUBBED.append("sklearn.metrics")
    try:
        importlib.import_module("matplotlib.pyplot")
    except ImportError:  # utils/imutils.py: only its tensorboard pictures call it
        stub_module("matplotlib")
        stub_module("matplotlib.pyplot")
        STUBBED.append("matplotlib.pyplot")
    try:
        importlib.import_module("joblib")
    except ImportError:  # test_msc_flip_voc.crf_proc runs its per-image CRF jobs through joblib: run them in turn
        stub_module("joblib", Parallel=lambda *a, **k: (lambda jobs: [f(*fa, **fk) for f, fa, fk in jobs]),
                delayed=lambda f: (lambda *fa, **fk: (f, fa, fk)))
        STUBBED.append("joblib (its jobs run in turn)")
    if stub_pkg_resources():  # clip/clip.py reads packaging.version from it (a torch version check)
        STUBBED.append("pkg_resources (packaging)")
    try:
        importlib.import_module("lxml.etree")
    except ImportError:
        import xml.etree.ElementTree as ElementTree

        stub_module("lxml")
        stub_module("lxml.etree", fromstring=ElementTree.fromstring)
        STUBBED.append("lxml.etree (xml.etree.ElementTree)")


@contextlib.contextmanager
def cpu_fp32():
    """Point 2: ``.cuda()`` and ``.half()`` are the identity while the clone runs."""
    import torch

    saved = (torch.Tensor.cuda, torch.nn.Module.cuda, torch.Tensor.half)
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    torch.Tensor.half = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.nn.Module.cuda, torch.Tensor.half = saved


# --------------------------------------------------------------------------------------------- capture
class Recorder:
    """Wraps the model module's ``perform_single_voc_cam``, ``generate_cam_label`` and ``_refine_cams`` (the
    names ``model_attn_aff_voc`` calls) and the fuse head's output, keeping what each returns, image by image."""

    def __init__(self, mod, model):
        self.mod, self.model, self.images, self.fts = mod, model, [], None
        self.saved = {k: getattr(mod, k) for k in ("perform_single_voc_cam", "generate_cam_label", "_refine_cams",
                                                  "generate_clip_fts")}

    def __enter__(self):
        mod, saved = self.mod, self.saved

        def perform(*args, **kwargs):
            out = saved["perform_single_voc_cam"](*args, **kwargs)
            self.images.append({"cam_refined": [c.detach().clone() for c in out[0]], "keys": list(out[1]),
                                "rfm": bool(kwargs.get("require_seg_trans"))})
            return out

        def label(*args, **kwargs):
            out = saved["generate_cam_label"](*args, **kwargs)
            self.images[-1]["refined_cam"] = out["refined_cam"].clone()
            return out

        def refine(ref_mod, images, cams, valid_key):
            out = saved["_refine_cams"](ref_mod, images, cams, valid_key)
            self.images[-1]["cams"] = cams.detach().clone()
            self.images[-1]["labels"] = out.detach().clone()
            return out

        def clip_fts(*args, **kwargs):
            out = saved["generate_clip_fts"](*args, **kwargs)
            self.clip = ([t.detach().clone() for t in out[0]], [a.detach().clone() for a in out[1]])
            return out

        mod.perform_single_voc_cam, mod.generate_cam_label, mod._refine_cams = perform, label, refine
        mod.generate_clip_fts = clip_fts
        self.hooks = [self.model.decoder_fts_fuse.register_forward_hook(
            lambda m, i, o: setattr(self, "fts", o.detach().clone()))]
        if hasattr(self.model, "dino_encoder"):  # WeCLIP+: the DINO's patch tokens and its fused features
            self.hooks.append(self.model.dino_decoder_fts_fuse.register_forward_hook(
                lambda m, i, o: setattr(self, "dino_fts", o.detach().clone())))
            enc = self.model.dino_encoder
            self.saved_ff = enc.forward_features

            def features(*args, **kwargs):
                out = self.saved_ff(*args, **kwargs)
                self.dino_tokens = out["x_norm_patchtokens"].detach().clone()
                return out

            enc.forward_features = features
        return self

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            setattr(self.mod, k, v)
        for hook in self.hooks:
            hook.remove()
        if hasattr(self, "saved_ff"):
            del self.model.dino_encoder.forward_features  # the bound method again


# --------------------------------------------------------------------------------------------- main
TREES = {  # --tree -> (the model module, its class) as the tree's scripts build them
    "WeCLIP": ("WeCLIP_model.model_attn_aff_voc", "WeCLIP"),
    "WeCLIP+": ("WeCLIP_Plus.model_attn_aff_voc", "WeCLIP_Plus"),
}
PLUS = {"dino_model": "dinov2_vits14", "dino_fts_dim": 384, "decoder_layers": 3, "clip_flag": 16,
        "lr": 2e-5}  # WeCLIP+/configs/voc_attn_reg.yaml: dino_init, clip_init.clip_flag, optimizer.learning_rate


@contextlib.contextmanager
def local_hub(repo: Path, weights: Path):
    """Point 5: WeCLIP+'s ``torch.hub.load('facebookresearch/dinov2', name)`` builds the model from the local
    dinov2 clone ``repo`` (``source="local"``, ``pretrained=False``) and loads ``weights`` (DINOv2's own key layout)
    strictly: the same random DINO vpltool's side loads, no download."""
    import torch

    saved = torch.hub.load

    def load(repo_or_dir, model, *args, **kwargs):
        net = saved(str(repo), model, source="local", pretrained=False)
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
        return net

    torch.hub.load = load
    try:
        yield
    finally:
        torch.hub.load = saved


def build(args, mod):
    import torch

    torch.manual_seed(args.seed)
    common = {"num_classes": CONFIG["num_classes"], "clip_model": str(args.weights.resolve()),
              "embedding_dim": CONFIG["embedding_dim"], "in_channels": CONFIG["in_channels"],
              "dataset_root_path": str(args.voc.resolve()), "device": "cpu"}
    if args.tree == "WeCLIP":
        return mod.WeCLIP(**common).eval()  # point 3: Dropout2d off
    with local_hub(args.dino_repo.resolve(), args.dino_weights.resolve()):
        model = mod.WeCLIP_Plus(dino_model=PLUS["dino_model"], dino_fts_dim=PLUS["dino_fts_dim"],
                                decoder_layers=PLUS["decoder_layers"], clip_flag=PLUS["clip_flag"], **common)
    return model.eval()


DECODER_PREFIXES = ("decoder_fts_fuse.", "dino_decoder_fts_fuse.", "decoder.")


def decoder_state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(DECODER_PREFIXES)}


def make_batch(args):
    """``VOC12ClsDataset`` with the training augmentation, seeded (``--batch-seed``, else ``--seed``: the
    augmentation draws from ``random`` and ``numpy.random`` only, so the decoder's torch-seeded init does not move
    with it); the first ``--crops`` items."""
    import random

    import numpy as np
    import torch
    from datasets import voc

    seed = batch_seed(args)
    random.seed(seed)
    np.random.seed(seed)
    lists = str(args.voc.resolve() / "ImageSets" / "Segmentation")
    ds = voc.VOC12ClsDataset(root_dir=str(args.voc.resolve()), name_list_dir=lists, split="train", stage="train",
                             aug=True, rescale_range=CONFIG["rescale_range"], crop_size=CONFIG["crop_size"],
                             img_fliplr=True, ignore_index=CONFIG["ignore_index"],
                             num_classes=CONFIG["num_classes"])
    items = [ds[i] for i in range(min(args.crops, len(ds)))]
    inputs = torch.stack([torch.from_numpy(np.ascontiguousarray(it[1])) for it in items])
    return [it[0] for it in items], inputs, [np.asarray(it[3]).tolist() for it in items]


def batch_seed(args) -> int:
    return args.seed if args.batch_seed is None else args.batch_seed


def pseudo(model, mod, names, inputs, rfm: bool) -> dict:
    """One forward of the batch (point 3), with or without RFM (``iter_num`` over 15000)."""
    import torch

    model.iter_num = 15000 if rfm else 0
    with Recorder(mod, model) as rec:
        outs = model(inputs, names)
    fts, attn = rec.clip
    if len(outs) == 4:  # WeCLIP+: (seg_clip, seg_dino, labels, attn_pred)
        seg, seg_dino, labels, attn_pred = outs
    else:
        (seg, labels, attn_pred), seg_dino = outs, None
    out = {"fts": rec.fts, "seg": seg.detach().clone(), "attn_pred": attn_pred.detach().clone(),
           "labels": labels.detach().clone(), "images": rec.images,
           "clip_blocks": torch.stack(fts, 0), "clip_attn": torch.stack(attn, 0).permute(1, 0, 2, 3).contiguous()}
    if seg_dino is not None:
        out.update(seg_dino=seg_dino.detach().clone(), dino_tokens=rec.dino_tokens, dino_fts=rec.dino_fts)
    return out


def train_steps(model, mod, names, inputs, steps: int) -> dict:
    """``dist_clip_voc.py``'s optimiser (its four groups) and loop body, ``steps`` times on the fixed batch."""
    import torch
    import torch.nn.functional as F

    script = importlib.import_module("scripts.dist_clip_voc")
    from utils.camutils import cams_to_affinity_label
    from utils.losses import get_aff_loss
    from utils.optimizer import PolyWarmupAdamW

    groups = model.get_param_groups()
    lr, wd = (PLUS["lr"] if hasattr(model, "dino_encoder") else CONFIG["lr"]), CONFIG["weight_decay"]
    optimizer = PolyWarmupAdamW(
        params=[{"params": groups[0], "lr": lr, "weight_decay": wd},
                {"params": groups[1], "lr": 0.0, "weight_decay": 0.0},
                {"params": groups[2], "lr": lr * 10, "weight_decay": wd},
                {"params": groups[3], "lr": lr * 10, "weight_decay": wd}],
        lr=lr, weight_decay=wd, betas=CONFIG["betas"], warmup_iter=CONFIG["warmup_iter"],
        max_iter=CONFIG["max_iters"], warmup_ratio=CONFIG["warmup_ratio"], power=CONFIG["power"])
    size = CONFIG["crop_size"] // 16
    attn_mask = script.get_mask_by_radius(h=size, w=size, radius=CONFIG["radius"])
    named = {n: p for n, p in model.named_parameters() if n.startswith(DECODER_PREFIXES)}
    model.iter_num = 0
    records = []
    if hasattr(model, "dino_encoder"):
        return plus_steps(model, script, optimizer, attn_mask, named, names, inputs, steps)
    for _ in range(steps):
        segs, cam, attn_pred = model(inputs, names)
        pseudo_label = cam
        segs = F.interpolate(segs, size=pseudo_label.shape[1:], mode="bilinear", align_corners=False)
        aff_label = cams_to_affinity_label(cam.clone(), mask=attn_mask, ignore_index=CONFIG["ignore_index"])
        attn_loss, _, _ = get_aff_loss(attn_pred, aff_label)
        seg_loss = script.get_seg_loss(segs, pseudo_label.type(torch.long), ignore_index=CONFIG["ignore_index"])
        loss = 1 * seg_loss + 0.1 * attn_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        records.append({"loss": float(loss), "seg_loss": float(seg_loss), "aff_loss": float(attn_loss),
                        "lr": [g["lr"] for g in optimizer.param_groups], "labels": pseudo_label.detach().clone(),
                        "grads": {n: p.grad.detach().clone() for n, p in named.items()},
                        "params": {n: p.detach().clone() for n, p in named.items()}})
    return {"steps": records, "attn_mask": torch.from_numpy(attn_mask).float()}


def plus_steps(model, script, optimizer, attn_mask, named, names, inputs, steps: int) -> dict:
    """WeCLIP+'s loop body (``WeCLIP+/scripts/dist_clip_voc.py:260-292``), ``steps`` times on the fixed batch."""
    import torch
    import torch.nn.functional as F
    from utils.camutils import cams_to_affinity_label
    from utils.losses import get_aff_loss
    from WeCLIP_Plus.dice_loss import DiceLoss

    criterion_dice, ignore = DiceLoss(), CONFIG["ignore_index"]
    records = []
    for n_iter in range(steps):
        segs_clip, segs_dino, cam, attn_pred = model(inputs, names)
        pseudo_label = cam
        labels = cam.detach().clone()
        segs = 0.5 * segs_clip + 0.5 * segs_dino
        segs = F.interpolate(segs, size=pseudo_label.shape[1:], mode="bilinear", align_corners=False)
        segs_clip = F.interpolate(segs_clip, size=pseudo_label.shape[1:], mode="bilinear", align_corners=False)
        segs_dino = F.interpolate(segs_dino, size=pseudo_label.shape[1:], mode="bilinear", align_corners=False)
        _, pred_label_clip = torch.max(F.softmax(segs_clip, dim=1), dim=1)
        _, pred_label_dino = torch.max(F.softmax(segs_dino, dim=1), dim=1)
        pred_max, pred_label_seg = torch.max(F.softmax(segs, dim=1), dim=1)
        aff_label = cams_to_affinity_label(cam.clone(), mask=attn_mask, ignore_index=ignore,
                                           clip_flag=PLUS["clip_flag"])
        attn_loss, _, _ = get_aff_loss(attn_pred, aff_label)
        if n_iter > 18000:  # never within the steps compared; kept as the script has it
            pseudo_label[pred_max > 0.75] = pred_label_seg[pred_max > 0.75]
        seg_loss = script.get_seg_loss(segs, pseudo_label.type(torch.long), ignore_index=ignore)
        seg_loss2 = criterion_dice(segs, pseudo_label.type(torch.long))
        seg_clip_loss2 = script.get_seg_loss(segs_clip, pred_label_dino.type(torch.long), ignore_index=ignore)
        seg_dino_loss2 = script.get_seg_loss(segs_dino, pred_label_clip.type(torch.long), ignore_index=ignore)
        loss = 1 * seg_loss + 0.1 * attn_loss + 0.1 * (seg_clip_loss2 + seg_dino_loss2) + 1 * seg_loss2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        records.append({"loss": float(loss), "seg_loss": float(seg_loss), "aff_loss": float(attn_loss),
                        "dice_loss": float(seg_loss2), "cross_loss": float(seg_clip_loss2 + seg_dino_loss2),
                        "lr": [g["lr"] for g in optimizer.param_groups], "labels": labels,
                        "grads": {n: p.grad.detach().clone() for n, p in named.items()},
                        "params": {n: p.detach().clone() for n, p in named.items()}})
    return {"steps": records, "attn_mask": torch.from_numpy(attn_mask).float()}


def test(model, args, out: Path) -> None:
    """``test_msc_flip_voc.validate`` and ``crf_proc`` on ``val.txt``, writing into ``out``."""
    from types import SimpleNamespace

    script = importlib.import_module("test_msc_flip_voc")
    from datasets import voc

    lists = args.voc.resolve() / "ImageSets" / "Segmentation"
    names = (lists / "val.txt").read_text().split()[args.skip: args.skip + args.images]
    split = f"parity_val_{args.skip}_{args.images}"  # its own list: runners of other photos may run at once
    (lists / f"{split}.txt").write_text("\n".join(names) + "\n")
    lists = str(lists)
    for sub in ("logit", "prediction", "prediction_cmap"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    script.args = SimpleNamespace(resize_long=CONFIG["resize_long"], work_dir=str(out), eval_set=split)
    script.cfg = SimpleNamespace(clip_init=SimpleNamespace(resize_long=CONFIG["resize_long"]))  # WeCLIP+ reads it
    ds = voc.VOC12SegDataset(root_dir=str(args.voc.resolve()), name_list_dir=lists, split=split, stage="val",
                             aug=False, ignore_index=CONFIG["ignore_index"], num_classes=CONFIG["num_classes"])
    if model is not None:  # None: the CRF alone, on the logits an earlier run saved (part "crf")
        script.validate(model=model, dataset=ds, test_scales=CONFIG["test_scales"])  # with grad: GradCAM runs
    cfg = SimpleNamespace(dataset=SimpleNamespace(name_list_dir=lists, root_dir=str(args.voc.resolve())))
    script.crf_proc(config=cfg)


def run(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    install_stubs()
    folder = args.clone.resolve() / args.tree
    seconds = {}
    if args.parts == "batch":  # the fixed batch alone (weclip_parity.py's --probe-batch): no model is built
        with in_clone(folder):
            names, inputs, boxes = make_batch(args)
        torch.save({"inputs": inputs, "names": names, "img_box": boxes, "batch_seed": batch_seed(args)},
                   out / "batch.pt")
        return
    if args.parts == "crf":  # the test script's CRF alone on test/logit (its logits): no model is built
        with in_clone(folder), cpu_fp32():
            t = time.perf_counter()
            test(None, args, out / "test")
            seconds["crf"] = round(time.perf_counter() - t, 1)
        meta = json.loads((out / "meta.json").read_text()) if (out / "meta.json").is_file() else \
            run_meta(args, seconds, start)
        meta.setdefault("seconds", {}).update(seconds)
        meta["crf_run_apart"] = True
        (out / "meta.json").write_text(json.dumps(meta, indent=1))
        return
    with in_clone(folder), cpu_fp32():
        mod = importlib.import_module(TREES[args.tree][0])
        model = build(args, mod)
        init = decoder_state(model)
        torch.save({"decoder": init, "bg_text_features": model.bg_text_features.detach().clone(),
                    "fg_text_features": model.fg_text_features.detach().clone()}, out / "init.pt")
        names, inputs, boxes = make_batch(args)
        torch.save({"inputs": inputs, "names": names, "img_box": boxes, "batch_seed": batch_seed(args)},
                   out / "batch.pt")
        t = time.perf_counter()
        if "pseudo" in args.parts and args.tree == "WeCLIP+":  # its forward always runs RFM (one pass)
            torch.save({"rfm": pseudo(model, mod, names, inputs, rfm=True)}, out / "pseudo.pt")
            seconds["pseudo"] = round(time.perf_counter() - t, 1)
        elif "pseudo" in args.parts:
            torch.save({"plain": pseudo(model, mod, names, inputs, rfm=False),
                        "rfm": pseudo(model, mod, names, inputs, rfm=True)}, out / "pseudo.pt")
            seconds["pseudo"] = round(time.perf_counter() - t, 1)
        if args.steps and "train" in args.parts:
            t = time.perf_counter()
            torch.save(train_steps(model, mod, names, inputs, args.steps), out / "train.pt")
            seconds["train"] = round(time.perf_counter() - t, 1)
            model.load_state_dict(init, strict=False)
        if args.images and "test" in args.parts:
            t = time.perf_counter()
            test(model.eval(), args, out / "test")
            seconds["test"] = round(time.perf_counter() - t, 1)
    (out / "meta.json").write_text(json.dumps(run_meta(args, seconds, start), indent=1))


def run_meta(args, seconds: dict, start: float) -> dict:
    import torch

    plus = {"plus": PLUS, "dino_repo": str(args.dino_repo)} if args.tree == "WeCLIP+" else {}
    return {"tree": args.tree, "parts": args.parts, "config": CONFIG, **plus, "seed": args.seed,
            "batch_seed": batch_seed(args),
            "crops": args.crops, "steps": args.steps, "images": args.images,
            "stubbed": STUBBED, "dropout": "off (model.eval())", "seconds": seconds,
            "total_seconds": round(time.perf_counter() - start, 1), "torch": torch.__version__,
            "threads": args.threads}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clone", type=Path, required=True, help="the clone's root (holds WeCLIP/ and WeCLIP+/)")
    ap.add_argument("--weights", type=Path, required=True, help="a ViT-B/16 state dict in OpenAI's layout (.pt)")
    ap.add_argument("--voc", type=Path, required=True, help="the VOC root weclip_parity.py writes")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--crops", type=int, default=4, help="the fixed batch (the config's samples_per_gpu: 4)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--images", type=int, default=12, help="photos of val.txt the test script runs on (0: none)")
    ap.add_argument("--skip", type=int, default=0, help="the test script starts at this photo of val.txt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-seed", type=int, help="seeds the fixed batch's augmentation alone (default: --seed)")
    ap.add_argument("--parts", default="pseudo,train,test", help="which outputs to make (comma-separated)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tree", choices=tuple(TREES), default="WeCLIP", help="which of the clone's two codes runs")
    ap.add_argument("--dino-repo", type=Path, help="WeCLIP+: a local facebookresearch/dinov2 clone (its hubconf)")
    ap.add_argument("--dino-weights", type=Path, help="WeCLIP+: dinov2_vits14 weights in DINOv2's key layout")
    args = ap.parse_args(argv)
    if args.tree == "WeCLIP+" and not (args.dino_repo and args.dino_weights):
        ap.error("--tree WeCLIP+ needs --dino-repo and --dino-weights")
    run(args)


if __name__ == "__main__":
    main()
