"""Run ActiveSAM's OWN segmentors (VILA-Lab/ActiveSAM@41cad43: ``activesam/model/segmentor.py``'s ``ActiveSAM``, and
``activesam/model/base.py``'s ``FrozenSAM3Segmentor`` for the "SAM 3" row) with its vendored Meta ``sam3`` code,
from a clone, on the CPU in fp32, without mmseg / mmengine: the reference half of ``activesam_parity.py``.

    python activesam_ref_runner.py --clone ActiveSAM --weights W.pt --arch ARCH.json --method activesam \\
        --out OUT PHOTO.jpg ... [--config configs/cfg_voc21.py] [--overrides JSON] [--threads 1]
    python activesam_ref_runner.py --clone ActiveSAM --arch ARCH.json --make-weights W.pt [--seed 0]

It imports nothing from vpltool. Around the clone's unchanged code:

1. ``dense_ref_runner.py``'s OpenMMLab stubs (``BaseSegmentor``, ``MODELS``, ``PixelData``), and ``DATASETS``,
   ``BaseSegDataset`` and ``mmengine.fileio`` for ``activesam/datasets.py`` (imported, never run); ``iopath``'s
   ``g_pathmgr`` (its ``open`` is the built-in one), ``pycocotools`` and ``psutil`` (video and training code
   the image model never runs) stubbed;
2. the model is SAM 3 at ``--arch``'s sizes (a reduced config on both sides: the ViT's width, depth, heads, window
   and global blocks, its input side and pre-training side, the text transformer's width, depth and heads, the
   fusion encoder's and the decoder's layers): ``sam3/model_builder.py``'s ``_create_*`` functions, which hard-code
   SAM 3's sizes, are called again with these, everything else theirs; ``Sam3Processor``'s default resolution is
   the ViT's input side;
3. ``build_sam3_image_model(device="cuda")`` builds on the CPU and loads ``--weights`` (Meta's layout, ``{"model":
   {"detector.*": ...}}``, as ``sam3.pt``); the tensors its constructors make on ``"cuda"`` (the position encoding's
   cache, the decoder's box coordinates) are made on the CPU; its ``torch.autocast(device_type="cuda",
   dtype=torch.bfloat16)`` blocks do nothing here (no CUDA): fp32 throughout; ``Tensor.pin_memory`` (the geometry
   encoder's, before a copy to the same CPU) is the identity;
4. ``--method sam3``: base.py's ``_inference_single_view`` and ``_assign_background`` are abstract ("supplied by
   ActiveSAM"); the runner supplies the "SAM 3" row's reading (docs/open-vocabulary.md): per query word Meta's own
   ``Sam3Processor.set_text_prompt`` on the photo's state, each kept instance mask's probability times its score,
   the pixelwise max over them (no semantic head, no presence gate), and pixels whose top class score is below
   ``prob_thd`` to ``bg_idx``;
5. WordNet is nltk's, reading ``NLTK_DATA`` (the parity's small WordNet, ``wordnet_fixture.py``).

``--make-weights`` builds that model with ``torch.manual_seed(--seed)`` (Meta's own initialisation) and writes its
state in Meta's layout; every floating tensor is then redrawn N(mean, std) with its own mean and std (a constant
one's std 0.02: a LayerNorm's weights about 1, its biases about 0; one its constructor leaves uninitialised, as
``torch.empty`` the text encoder's position table, N(0, 0.02)), so that the random model's scores spread.

Outputs in ``--out``: ``meta.json`` and per photo ``photo_NNN.pt``: ``scores`` ``[Q, H0, W0]`` (what
``_inference_single_view`` returns), ``probs`` ``[C, H0, W0]`` and ``pred`` ``[H0, W0]`` (what ``predict`` sets),
and for activesam ``presence`` (the preview's ``[Q]`` scores, or None when skipped), ``active`` (the kept words)
and the context bank's tensors (``neighbors``, ``hypernyms``, ``has_hypernym``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dense_ref_runner import Sample, install_openmmlab_stubs, read_config  # noqa: E402
from refstubs import in_clone, stub_module  # noqa: E402

STUBBED = ["mmseg", "mmengine", "iopath", "pycocotools", "psutil"]
FACTORIES = ("zeros", "ones", "empty", "arange", "linspace", "full", "tensor", "randn", "rand")


def install_stubs() -> None:
    """Point 1."""
    install_openmmlab_stubs()
    registry = sys.modules["mmseg.registry"]
    registry.DATASETS = registry.MODELS  # activesam/datasets.py registers its dataset classes (never built here)
    stub_module("mmseg.datasets", BaseSegDataset=type("BaseSegDataset", (), {}))
    stub_module("mmengine.fileio")

    class PathManager:
        open = staticmethod(open)

        @staticmethod
        def exists(path):
            return Path(path).exists()

    stub_module("iopath")
    stub_module("iopath.common")
    stub_module("iopath.common.file_io", g_pathmgr=PathManager(), PathManager=PathManager)
    stub_module("pycocotools")
    stub_module("pycocotools.mask")
    stub_module("psutil")


@contextlib.contextmanager
def cuda_made_on_cpu():
    """Point 3: torch's factories called with ``device="cuda"`` make their tensors on the CPU."""
    import torch

    saved = {name: getattr(torch, name) for name in FACTORIES}

    def wrap(fn):
        def made(*args, **kwargs):
            if str(kwargs.get("device", "")).startswith("cuda"):
                kwargs["device"] = "cpu"
            return fn(*args, **kwargs)
        return made

    for name, fn in saved.items():
        setattr(torch, name, wrap(fn))
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch, name, fn)


def reduced_builders(arch: dict) -> None:
    """Point 2: the builder's ``_create_*`` functions at ``arch``'s sizes."""
    import sam3.model_builder as mb
    from sam3.model.decoder import TransformerDecoder, TransformerDecoderLayer
    from sam3.model.encoder import TransformerEncoderFusion, TransformerEncoderLayer
    from sam3.model.model_misc import MultiheadAttentionWrapper as MultiheadAttention
    from sam3.model.sam3_image_processor import Sam3Processor
    from sam3.model.text_encoder_ve import VETextEncoder
    from sam3.model.tokenizer_ve import SimpleTokenizer
    from sam3.model.vitdet import ViT

    side = int(arch["image"])

    def vit(compile_mode=None):
        return ViT(img_size=side, pretrain_img_size=int(arch["pretrain"]), patch_size=14,
                   embed_dim=int(arch["vit_width"]), depth=int(arch["vit_depth"]), num_heads=int(arch["vit_heads"]),
                   mlp_ratio=4.625, norm_layer="LayerNorm", drop_path_rate=0.1, qkv_bias=True, use_abs_pos=True,
                   tile_abs_pos=True, global_att_blocks=tuple(arch["global"]), rel_pos_blocks=(), use_rope=True,
                   use_interp_rope=True, window_size=int(arch["window"]), pretrain_use_cls_token=True,
                   retain_cls_token=False, ln_pre=True, ln_post=False, return_interm_layers=False,
                   bias_patch_embed=False, compile_mode=compile_mode)

    def text(bpe_path):
        return VETextEncoder(tokenizer=SimpleTokenizer(bpe_path=bpe_path), d_model=256,
                             width=int(arch["text_width"]), heads=int(arch["text_heads"]),
                             layers=int(arch["text_layers"]))

    def encoder():
        layer = TransformerEncoderLayer(
            activation="relu", d_model=256, dim_feedforward=2048, dropout=0.1, pos_enc_at_attn=True,
            pos_enc_at_cross_attn_keys=False, pos_enc_at_cross_attn_queries=False, pre_norm=True,
            self_attention=MultiheadAttention(num_heads=8, dropout=0.1, embed_dim=256, batch_first=True),
            cross_attention=MultiheadAttention(num_heads=8, dropout=0.1, embed_dim=256, batch_first=True))
        return TransformerEncoderFusion(layer=layer, num_layers=int(arch["encoder_layers"]), d_model=256,
                                        num_feature_levels=1, frozen=False, use_act_checkpoint=True,
                                        add_pooled_text_to_img_feat=False, pool_text_with_mask=True)

    def decoder():
        layer = TransformerDecoderLayer(
            activation="relu", d_model=256, dim_feedforward=2048, dropout=0.1,
            cross_attention=MultiheadAttention(num_heads=8, dropout=0.1, embed_dim=256), n_heads=8,
            use_text_cross_attention=True)
        return TransformerDecoder(layer=layer, num_layers=int(arch["decoder_layers"]), num_queries=200,
                                  return_intermediate=True, box_refine=True, num_o2m_queries=0, dac=True,
                                  boxRPB="log", d_model=256, frozen=False, interaction_layer=None,
                                  dac_use_selfatt_ln=True, resolution=side, stride=14, use_act_checkpoint=True,
                                  presence_token=True)

    position = mb._create_position_encoding

    def vision(compile_mode=None, enable_inst_interactivity=True):
        return mb._create_vit_neck(position(precompute_resolution=side), vit(compile_mode),
                                   enable_inst_interactivity=enable_inst_interactivity)

    mb._create_vit_backbone, mb._create_text_encoder = vit, text
    mb._create_transformer_encoder, mb._create_transformer_decoder = encoder, decoder
    mb._create_vision_backbone = vision
    init = Sam3Processor.__init__
    defaults = list(init.__defaults__)
    defaults[0] = side  # resolution
    init.__defaults__ = tuple(defaults)


def make_weights(args, arch: dict) -> None:
    """``--make-weights``: the reduced model, seeded, in Meta's layout (module docstring)."""
    import torch
    from sam3.model_builder import build_sam3_image_model

    torch.manual_seed(args.seed)
    with cuda_made_on_cpu():
        model = build_sam3_image_model(bpe_path=str(args.clone / "sam3/assets/bpe_simple_vocab_16e6.txt.gz"),
                                       device="cpu", checkpoint_path=None, load_from_HF=False)
    gen = torch.Generator().manual_seed(args.seed + 1)
    state = {}
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not name.endswith(("freqs_cis",)):
            mean, std = (float(t.float().mean()), float(t.float().std())) if t.numel() > 1 else (0.0, 0.0)
            if not (math.isfinite(mean) and math.isfinite(std) and abs(mean) < 10 and std < 10):
                mean, std = 0.0, 0.02  # left uninitialised by its constructor (torch.empty: the checkpoint's)
            t = mean + torch.randn(t.shape, generator=gen) * (std if std > 1e-6 else 0.02)
        state["detector." + name] = t.clone()
    args.make_weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state}, args.make_weights)


def sam3_row(base):
    """Point 4: the "SAM 3" row's segmentor, the base class with its two abstract methods supplied."""
    import torch

    class Sam3Row(base):
        def _inference_single_view(self, image):
            w, h = image.size
            scores = torch.zeros((self.num_queries, h, w), device=self.device)
            with torch.no_grad():
                state = self.processor.set_image(image)
                for q, word in enumerate(self.query_words):
                    self.processor.reset_all_prompts(state)
                    state = self.processor.set_text_prompt(state=state, prompt=word)
                    masks, object_scores = state["masks_logits"], state["object_score"]
                    for i in range(masks.shape[0]):
                        scores[q] = torch.max(scores[q], masks[i].squeeze() * object_scores[i])
            return scores

        def _assign_background(self, seg_logits, seg_pred):
            seg_pred[seg_logits.max(0)[0] < self.prob_thd] = self.bg_idx
            return seg_pred

    return Sam3Row


def build(args, arch: dict, cfg: dict):
    import torch

    base_mod = importlib.import_module("activesam.model.base")
    build_model = base_mod.build_sam3_image_model

    def on_cpu(**kwargs):
        kwargs.update(device="cpu", checkpoint_path=str(args.weights))
        with cuda_made_on_cpu():
            return build_model(**kwargs)

    base_mod.build_sam3_image_model = on_cpu
    kwargs = {k: v for k, v in cfg["model"].items() if k != "type"}
    kwargs.update(classname_path=str((args.clone / kwargs["classname_path"]).resolve()),  # an override's is absolute
                  device=torch.device("cpu"))
    kwargs.update(json.loads(args.overrides))
    if args.method == "sam3":
        for k in ("neighbor_tokens", "hypernym_tokens", "bucket_size", "preview_resolution", "quantile_alpha",
                  "pruner_max_active", "mabc_exponent"):
            kwargs.pop(k, None)
        kwargs.setdefault("confidence_threshold", 0.5)
        if "confidence_threshold" not in json.loads(args.overrides):
            kwargs["confidence_threshold"] = 0.5  # base.py's default: the SAM 3 row is no ActiveSAM config
        seg = sam3_row(base_mod.FrozenSAM3Segmentor)(**kwargs)
    else:
        from activesam.model.segmentor import ActiveSAM

        if "preview_resolution" not in json.loads(args.overrides):  # the reduced ViT's preview side
            kwargs["preview_resolution"] = int(arch.get("preview", 672))
        seg = ActiveSAM(**kwargs)
    return seg.eval(), kwargs


def run(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    install_stubs()
    torch.Tensor.pin_memory = lambda self, *a, **k: self  # point 3: no pinned host memory without CUDA
    args.clone = args.clone.resolve()
    arch = json.loads(Path(args.arch).read_text())
    with in_clone(args.clone):
        if not arch.get("meta"):  # Meta's sizes: its builders as they are
            reduced_builders(arch)
        if args.make_weights:
            make_weights(args, arch)
            return
        args.weights, out = args.weights.resolve(), args.out.resolve()
        out.mkdir(parents=True, exist_ok=True)
        cfg = read_config(args.clone, args.config)
        start = time.perf_counter()
        seg, kwargs = build(args, arch, cfg)
        built = time.perf_counter() - start
        bank = {}
        if args.method == "activesam":
            neighbors, hypernyms = seg.memory_bank.banks[0], seg.memory_bank.banks[1]
            bank = {"neighbors": neighbors._tokens.clone(), "hypernyms": hypernyms._tokens.clone(),
                    "has_hypernym": hypernyms._has_hyp.clone()}
        photos, shapes = [p.resolve() for p in args.photos], []
        from PIL import Image

        for i, path in enumerate(photos):
            seen: dict = {}
            if args.method == "activesam":
                decide, score = seg.pruner.preview_and_decide, seg.pruner._score_presence

                def scored(image, _score=score):
                    seen["presence"] = _score(image).clone()
                    return seen["presence"]

                seg.pruner._score_presence = scored
            inner = seg._inference_single_view

            def single(image, _inner=inner):
                seen["scores"] = _inner(image).clone()
                return seen["scores"]

            seg._inference_single_view = single
            w, h = Image.open(path).size
            sample = Sample({"ori_shape": (h, w), "img_path": str(path)})
            cpu0 = time.process_time()
            active = []
            if args.method == "activesam":
                def deciding(image, _decide=decide):
                    active[:] = _decide(image)
                    return list(active)

                seg.pruner.preview_and_decide = deciding
            with torch.no_grad():
                seg.predict(torch.zeros(1, 3, h, w), [sample])
            cpu = time.process_time() - cpu0
            seg._inference_single_view = inner
            if args.method == "activesam":
                seg.pruner.preview_and_decide, seg.pruner._score_presence = decide, score
            torch.save({"scores": seen["scores"], "probs": sample.data["seg_logits"].data.float(),
                        "pred": sample.data["pred_sem_seg"].data[0], "presence": seen.get("presence"),
                        "active": list(active), **bank}, out / f"photo_{i:03d}.pt")
            shapes.append({"file": path.name, "ori_shape": [h, w], "cpu_seconds": round(cpu, 3)})
    meta = {"method": args.method, "kwargs": kwargs, "arch": arch, "query_words": list(seg.query_words),
            "query_idx": [int(i) for i in seg.query_idx.tolist()], "photos": shapes, "stubbed": STUBBED,
            "build_seconds": round(built, 2), "torch": torch.__version__, "threads": args.threads}
    (out / "meta.json").write_text(json.dumps(meta, indent=1, default=str))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photos", type=Path, nargs="*")
    ap.add_argument("--clone", type=Path, required=True, help="a clone of VILA-Lab/ActiveSAM")
    ap.add_argument("--arch", type=Path, required=True, help="JSON: the reduced SAM 3's sizes (module docstring)")
    ap.add_argument("--weights", type=Path, help="the SAM 3 checkpoint in Meta's layout")
    ap.add_argument("--make-weights", type=Path, help="write seeded random weights of --arch here, and stop")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--method", choices=("activesam", "sam3"), default="activesam")
    ap.add_argument("--config", default="configs/cfg_voc21.py")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--overrides", default="{}", help="JSON: segmentor keyword arguments over the config's")
    ap.add_argument("--threads", type=int, default=1)
    run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
