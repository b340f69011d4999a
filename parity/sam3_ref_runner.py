"""Run Meta's OWN SAM 3 (the ``sam3/`` code ActiveSAM vendors: ``build_sam3_image_model``, ``Sam3Processor``) and
ActiveSAM's own processor over it (``BucketPromptProcessor``, its RoPE and head-skip patches) from a clone, on the
CPU in fp32: the reference half of ``sam3_parity.py``.

    python sam3_ref_runner.py --clone ActiveSAM --checkpoint sam3.pt --dims dims.json --prompts a,b,c \\
        --memory memory.pt --out OUT PHOTO.jpg ... [--threads 1] [--threshold 0.5]

It imports nothing from vpltool. Around the clone's unchanged code:

1. ``iopath``'s ``g_pathmgr`` is a module whose ``open`` is Python's (the builder opens the BPE file and the
   checkpoint through it); ``psutil``, ``pycocotools`` and ``decord`` (imported by the video and training modules the
   builder's imports pull in, never called by the image model) are empty modules;
2. the constructors' hard-coded ``device="cuda"`` (the sine position cache, the decoder's box-RPB coordinates) make
   their tensors on the CPU, and ``Tensor.pin_memory`` (the geometry encoder's box scale, before a copy to the GPU)
   returns the tensor (a torch function mode that rewrites that argument and that call, nothing else);
3. ``activesam`` is its package folder without its ``__init__`` (which imports mmseg's datasets and segmentors, not
   used here): ``activesam.model.processor``, ``.rope_patch`` and ``.skip_seg_head`` are its own modules;
4. ``dims.json`` (``{"vit": {...}, "text": {...}}``): the ViT and text tower are Meta's ``ViT`` and ``VETextEncoder``
   built with the builder's every argument but those dims (``_create_vit_backbone`` / ``_create_text_encoder``
   replaced by the same calls with them); ``{}`` builds the model the builder hard-codes;
5. ActiveSAM's context memory bank is one of its ``ContextMemoryBank`` whose ``extra_memory_tokens`` returns the
   seeded tokens and mask of ``--memory`` (the method's own banks are the ActiveSAM runner's to compare).

Per photo (``PIL.Image.open(...).convert("RGB")``, as ActiveSAM's ``predict``): ActiveSAM's preview first (its 672 px
``BucketPromptProcessor``, the RoPE patch on, the segmentation head skipped), then ``set_image`` at 1008 and the
prompts in one bucket, without and (first photo) with the memory tokens. Outputs in ``--out``: ``meta.json`` and
``photo_NNN.pt``: the backbone's FPN levels and position encodings, the text outputs and tokens, the raw grounding
outputs (``forward_grounding``'s ``pred_logits``, ``presence_logit_dec``, ``pred_boxes``, ``pred_masks``,
``semantic_seg``) and the processor's per-prompt states.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from refstubs import stub_module  # noqa: E402

STUBBED: list[str] = []


def install_stubs(clone: Path) -> None:
    """Points 1 and 3."""
    import importlib.machinery

    stub_module("iopath")
    stub_module("iopath.common")
    stub_module("iopath.common.file_io", g_pathmgr=types.SimpleNamespace(open=open))
    for name in ("psutil", "pycocotools", "pycocotools.mask", "decord"):
        stub_module(name)
    STUBBED.extend(["iopath (g_pathmgr.open = open)", "psutil", "pycocotools", "decord"])
    pkg = types.ModuleType("activesam")
    pkg.__path__ = [str(clone / "activesam")]
    pkg.__spec__ = importlib.machinery.ModuleSpec("activesam", None, is_package=True)
    sys.modules["activesam"] = pkg
    STUBBED.append("activesam/__init__ (mmseg's datasets and segmentors) not run")


def cuda_to_cpu():
    """Point 2: a torch function mode in which ``device="cuda"`` means the CPU and pinning is the identity."""
    import torch
    from torch.overrides import TorchFunctionMode

    class CudaToCpu(TorchFunctionMode):
        def __torch_function__(self, func, types_, args=(), kwargs=None):
            if func is torch.Tensor.pin_memory:  # page-locking for a GPU copy: nothing to do on the CPU
                return args[0]
            kwargs = dict(kwargs or {})
            device = kwargs.get("device")
            if (isinstance(device, str) and device.startswith("cuda")) or getattr(device, "type", None) == "cuda":
                kwargs["device"] = "cpu"
            return func(*args, **kwargs)

    return CudaToCpu()


def build(clone: Path, checkpoint: Path, dims: dict):
    """Point 4: Meta's ``build_sam3_image_model`` on the CPU, in eval mode, its checkpoint loaded by its own
    ``_load_checkpoint``."""
    import sam3.model_builder as mb

    vit, text = dims.get("vit"), dims.get("text")
    if vit:
        def reduced_vit(compile_mode=None):  # _create_vit_backbone's call, embed_dim / depth / heads / globals ours
            from sam3.model.vitdet import ViT

            return ViT(img_size=1008, pretrain_img_size=336, patch_size=14, embed_dim=vit["width"], depth=vit["depth"],
                       num_heads=vit["heads"], mlp_ratio=4.625, norm_layer="LayerNorm", drop_path_rate=0.1,
                       qkv_bias=True, use_abs_pos=True, tile_abs_pos=True,
                       global_att_blocks=tuple(vit["global"]), rel_pos_blocks=(), use_rope=True,
                       use_interp_rope=True, window_size=24, pretrain_use_cls_token=True, retain_cls_token=False,
                       ln_pre=True, ln_post=False, return_interm_layers=False, bias_patch_embed=False,
                       compile_mode=compile_mode)

        mb._create_vit_backbone = reduced_vit
    if text:
        def reduced_text(bpe_path):  # _create_text_encoder's call, width / heads / layers ours
            return mb.VETextEncoder(tokenizer=mb.SimpleTokenizer(bpe_path=bpe_path), d_model=256,
                                    width=text["width"], heads=text["heads"], layers=text["layers"])

        mb._create_text_encoder = reduced_text
    bpe = clone / "sam3" / "assets" / "bpe_simple_vocab_16e6.txt.gz"  # ActiveSAM's _DEFAULT_BPE
    return mb.build_sam3_image_model(bpe_path=str(bpe), device="cpu", checkpoint_path=str(checkpoint),
                                     load_from_HF=False)


class Recorder:
    """``forward_grounding``'s outputs, as the processor calls it."""

    def __init__(self, model):
        self.model, self.last, self.wrapped = model, None, model.forward_grounding

        def forward_grounding(*a, **k):
            self.last = self.wrapped(*a, **k)
            return self.last

        model.forward_grounding = forward_grounding


RAW = ("pred_logits", "presence_logit_dec", "pred_boxes", "pred_masks", "semantic_seg")


def raw(out: dict) -> dict:
    return {k: out[k].detach().clone() for k in RAW if k in out}


def states(per_class: list[dict]) -> list[dict]:
    return [{k: (v.detach().clone() if hasattr(v, "detach") else v) for k, v in s.items()} for s in per_class]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clone", type=Path, required=True)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--dims", type=Path, required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--memory", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--threshold", type=float, default=0.5, help="the processor's confidence_threshold")
    ap.add_argument("photos", nargs="+", type=Path)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    clone = args.clone.resolve()
    install_stubs(clone)
    sys.path.insert(0, str(clone))
    args.out.mkdir(parents=True, exist_ok=True)
    prompts = args.prompts.split(",")
    memory = torch.load(args.memory, weights_only=True)
    from PIL import Image

    with cuda_to_cpu():
        t0 = time.time()
        model = build(clone, args.checkpoint.resolve(), json.loads(args.dims.read_text()))
        from activesam.model.processor import BucketPromptProcessor
        from activesam.model.rope_patch import enable_dynamic_vit_rope
        from activesam.model.skip_seg_head import install_skip_patch, skip_seg_head_ctx
        from activesam.prompt_expansion.memory_bank import ContextMemoryBank, MemoryBatch

        class FixedBank(ContextMemoryBank):  # point 5
            def extra_memory_tokens(self, bucket_class_slots, device):
                return MemoryBatch(tokens=memory["tokens"].to(device), mask=memory["mask"].to(device))

        bank = FixedBank()
        enable_dynamic_vit_rope()  # ActiveSAM's pruner turns it on when it is built
        install_skip_patch(model)
        recorder = Recorder(model)
        preview = BucketPromptProcessor(model, resolution=672, device="cpu", confidence_threshold=0.3)
        full = BucketPromptProcessor(model, device="cpu", confidence_threshold=args.threshold)
        build_s = time.time() - t0
        tokens = model.backbone.language_backbone.tokenizer(prompts, context_length=32)
        seconds = []
        for i, photo in enumerate(args.photos):
            t = time.time()
            image = Image.open(photo).convert("RGB")
            out: dict = {"tokens": tokens}
            with torch.no_grad():
                state = preview.set_image(image)
                out["preview_fpn"] = [x.clone() for x in state["backbone_out"]["backbone_fpn"]]
                with skip_seg_head_ctx(model):
                    preview.set_text_prompts_batch(prompts, state)
                out["preview"] = raw(recorder.last)
                state = full.set_image(image)
                bo = state["backbone_out"]
                out["fpn"] = [x.clone() for x in bo["backbone_fpn"]]
                out["pos"] = [x.clone() for x in bo["vision_pos_enc"]]
                out["states"] = states(full.set_text_prompts_batch(prompts, state))
                out["text"] = {k: bo[k].clone() for k in ("language_features", "language_mask", "language_embeds")}
                out["grounding"] = raw(recorder.last)
                if i == 0:
                    out["memory_states"] = states(full.set_text_prompts_batch(
                        prompts, state, bucket_class_slots=list(range(len(prompts))), memory_bank=bank))
                    out["memory_grounding"] = raw(recorder.last)
            torch.save(out, args.out / f"photo_{i:03d}.pt")
            seconds.append(time.time() - t)
            print(f"photo {i}: {seconds[-1]:.1f} s", flush=True)
    (args.out / "meta.json").write_text(json.dumps({"stubbed": STUBBED, "build_seconds": build_s,
                                                    "seconds": seconds, "threads": args.threads}, indent=1))


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
