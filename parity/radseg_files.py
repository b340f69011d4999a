"""The files RADSeg reads, made with seeded random weights (the parity runner's and the tests'; nothing can be
downloaded here):

* :func:`write_radio_checkpoint`: a checkpoint in NVlabs/RADIO's hub format (``{"args": Namespace, "state_dict"}``,
  the backbone under ``base_model.`` as RADIO's CPE ViT names it, the input conditioner, a summary and a feature
  head per loaded teacher, a feature normaliser), from a timm ``naflexvit_*_radio_v3`` (the full-size C-RADIOv3-B
  or the tests' tiny one) seeded;
* :func:`write_text_folder`: a Hugging Face folder of a seeded random SigLIP model (its text tower of
  ``text_config``'s size, a one-block vision tower nobody reads) and a stand-in tokenizer (a word-level
  ``tokenizers`` vocabulary of the prompts' words, ``</s>`` appended, padded with ``<pad>``, and SigLIP's image
  processor config, which ``AutoProcessor`` needs): Gemma's vocabulary cannot be fetched here, and both sides read
  the same folder.

It imports nothing from vpltool.
"""

from __future__ import annotations

import argparse
from pathlib import Path

# C-RADIOv3's teachers as its hub checkpoint lists them (README: clip, siglip2-g, dino_v2, sam; RADSeg names the
# SigLIP 2 one "siglip2"); only the loaded adaptors' heads are written
TEACHERS = [{"name": "clip", "type": "open_clip"}, {"name": "siglip2", "type": "siglip2", "model": "siglip2-g-384"},
            {"name": "dino_v2", "type": "dino_v2"}, {"name": "sam", "type": "sam", "use_summary": False}]
SIGLIP2_G_TEXT = dict(vocab_size=256000, hidden_size=1152, intermediate_size=4304, num_attention_heads=16,
                      max_position_embeddings=64, projection_size=1536, hidden_act="gelu_pytorch_tanh",
                      layer_norm_eps=1e-6)  # ViT-gopt-16-SigLIP2-384's text tower (27 blocks)
# the tests' text tower: SigLIP's layout at a few dozen widths, its rows as wide as tiny_files' adaptor head's
TINY_TEXT = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                 max_position_embeddings=64, projection_size=48)


def mlp2_state(dim_in: int, hidden: int, dim_out: int, inner: int, gen) -> dict:
    """Random tensors of RADIO's ``MLP2`` (``adaptor_mlp.py``) under its parameter names."""
    import torch

    def lin(o, i):
        return {"weight": torch.randn(o, i, generator=gen) * i ** -0.5, "bias": torch.randn(o, generator=gen) * 0.02}

    def ln(n):
        return {"weight": 1 + 0.1 * torch.randn(n, generator=gen), "bias": 0.1 * torch.randn(n, generator=gen)}

    out = {f"fc1.{k}": v for k, v in lin(hidden, dim_in).items()}
    for b in range(inner):
        out.update({f"blocks.{b}.0.{k}": v for k, v in ln(hidden).items()})
        out.update({f"blocks.{b}.2.{k}": v for k, v in lin(hidden, hidden).items()})
    out.update({f"final.0.{k}": v for k, v in ln(hidden).items()})
    out.update({f"final.2.{k}": v for k, v in lin(dim_out, hidden).items()})
    return out


def radio_state(timm_model) -> dict:
    """A timm ``naflexvit_*_radio_v3``'s backbone under RADIO's CPE ViT names (``base_model.`` prefix), its patch
    bias dropped (RADIO's patch projection has none: the timm model's is zeroed to match)."""
    import torch

    sd = timm_model.state_dict()
    w = sd["embeds.proj.weight"]
    dim, p = w.shape[0], int(round((w.shape[1] / 3) ** 0.5))
    with torch.no_grad():
        timm_model.embeds.proj.bias.zero_()
    out = {"patch_generator.embedder.weight": w.reshape(dim, p, p, 3).permute(0, 3, 1, 2).reshape(dim, -1),
           "patch_generator.pos_embed": sd["embeds.pos_embed"].reshape(1, -1, dim),
           "patch_generator.cls_token.token": torch.cat([sd["embeds.cls_token"][0], sd["embeds.reg_token"][0]])}
    out.update({k.replace(".gamma", ".grandma"): v for k, v in sd.items() if k.startswith("blocks.")})
    return {f"base_model.{k}": v.clone() for k, v in out.items()}


def write_radio_checkpoint(path: Path, model: str = "naflexvit_base_patch16_radio_v3", text_dim: int = 1536,
                           hidden: int = 1536, seed: int = 0, normalizer: bool = True, timm_kwargs: dict | None = None,
                           arch: str = "vit_base_patch16_v2_224") -> Path:
    """The checkpoint (module docstring) of timm ``model`` seeded ``seed`` (its positional table redrawn N(0, 1):
    timm's init is near zero, RADIO's trained one is not) with a ``siglip2`` summary head ``dim -> hidden ->
    text_dim`` (one inner block), a ``sam`` summary and feature head, and (``normalizer``) a feature normaliser
    near the identity. ``arch``: the ``args.model`` RADIO's hub code builds (C-RADIOv3-B's timm name)."""
    import timm
    import torch

    torch.manual_seed(seed)
    m = timm.create_model(model, num_classes=0, **(timm_kwargs or {})).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        m.embeds.pos_embed.copy_(torch.randn(m.embeds.pos_embed.shape, generator=gen))
    dim = m.embed_dim
    state = radio_state(m)
    state["input_conditioner.norm_mean"] = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
    state["input_conditioner.norm_std"] = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
    state.update({f"_heads.1.{k}": v for k, v in mlp2_state(dim, hidden, text_dim, 1, gen).items()})
    state.update({f"_feature_projections.1.{k}": v for k, v in mlp2_state(dim, 64, 64, 0, gen).items()})
    state.update({f"_heads.3.{k}": v for k, v in mlp2_state(dim, 64, 32, 0, gen).items()})
    state.update({f"_feature_projections.3.{k}": v for k, v in mlp2_state(dim, 64, 256, 0, gen).items()})
    if normalizer:
        state["_feature_normalizer.mean"] = 0.1 * torch.randn(dim, generator=gen)
        state["_feature_normalizer.tx"] = torch.eye(dim) + 0.05 * torch.randn(dim, dim, generator=gen)
    n_prefix = 1 + m.embeds.reg_token.shape[1]
    args = argparse.Namespace(
        model=arch, in_chans=None, input_size=None, pretrained=False, num_classes=0, drop=0.0, drop_path=None,
        drop_block=None, gp=None, bn_momentum=None, bn_eps=None, torchscript=False, initial_checkpoint="",
        model_kwargs={**({} if arch == "vit_base_patch16_v2_224" else {"embed_dim": dim}), **_arch_kwargs(m, arch)},
        model_norm=False, cpe_max_size=2048, teachers=TEACHERS, cls_token_per_teacher=True,
        cpe_num_registers=n_prefix - len(TEACHERS), register_multiple=None, mlp_version="v2",
        spectral_reparam=False, damp=None, dtype=torch.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"args": args, "state_dict": state}, path)
    return path


def _arch_kwargs(m, arch: str) -> dict:
    """``args.model_kwargs`` of a smaller model than RADIO's registered ``arch``: its depth, width and heads."""
    if arch == "vit_base_patch16_v2_224" and m.embed_dim == 768 and len(m.blocks) == 12:
        return {}
    return {"depth": len(m.blocks), "num_heads": m.blocks[0].attn.num_heads}


def prompt_words(extra: list[str] = ()) -> list[str]:
    """The words the stand-in tokenizer knows: the 80 ImageNet templates' and ``extra``'s, canonicalised."""
    import string

    from_templates = "a bad photo of the many sculpture hard to see low resolution rendering graffiti cropped " \
        "tattoo embroidered bright clean dirty dark drawing my plastic cool closeup black and white painting " \
        "pixelated jpeg corrupted blurry good in video game one doodle origami sketch toy rendition large nice " \
        "weird cartoon art itap plushie small"
    words = from_templates.split() + [w for e in extra for w in e.lower().split()]
    table = str.maketrans("", "", string.punctuation)
    return list(dict.fromkeys(w.translate(table) for w in words if w.translate(table)))


def write_text_folder(folder: Path, text: dict, words: list[str], seed: int = 0) -> Path:
    """The Hugging Face folder (module docstring): ``text`` the ``SiglipTextConfig`` values, ``words`` the
    tokenizer's vocabulary."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, SiglipConfig, SiglipImageProcessor, SiglipModel

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                            model_max_length=64).save_pretrained(folder)
    SiglipImageProcessor().save_pretrained(folder)  # AutoProcessor (RADIO's adaptor) needs the processor's config
    cfg = SiglipConfig(text_config={**text, "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": None},
                       vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=2, image_size=32, patch_size=16))
    torch.manual_seed(seed)
    SiglipModel(cfg).eval().save_pretrained(folder)
    return folder


def tiny_files(folder: Path, model: str, classes: list[str]) -> tuple[Path, Path]:
    """The tests' pair in ``folder``: ``radio.pth.tar`` of timm ``model`` (a tiny ``naflexvit_*_radio_v3`` the
    caller registered) with a 64 -> 48 ``siglip2`` head, and ``text/`` (:data:`TINY_TEXT`) knowing ``classes``'
    words."""
    folder = Path(folder)
    ckpt = write_radio_checkpoint(folder / "radio.pth.tar", model=model, text_dim=TINY_TEXT["projection_size"],
                                  hidden=64)
    return ckpt, write_text_folder(folder / "text", TINY_TEXT, prompt_words(list(classes)))


def main() -> None:
    """``python parity/radseg_files.py OUT --classes cat,dog``: a seeded random C-RADIOv3-B checkpoint and a SigLIP
    2 text folder knowing the classes' prompt words, to try ``--dense radseg`` without its weights (its masks are
    meaningless); prints the command that runs them."""
    ap = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="the folder to write (radio.pth.tar and text/)")
    ap.add_argument("--classes", default="cat,dog", help="the class names the text folder's vocabulary knows")
    ap.add_argument("--text-layers", type=int, default=2, help="text blocks (SigLIP 2 g/16's own: 27)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    ckpt = write_radio_checkpoint(args.out / "radio.pth.tar", seed=args.seed)
    words = prompt_words(classes)  # a vocabulary of the prompts' words alone (Gemma's 256,000 rows: 1.2 GB)
    text = write_text_folder(args.out / "text", {**SIGLIP2_G_TEXT, "num_hidden_layers": args.text_layers,
                                                 "vocab_size": len(words) + 3}, words, seed=args.seed)
    print(f"wrote {ckpt} and {text}; try: vpltool segment PHOTOS -o MASKS --dense radseg --classes "
          f"{','.join(classes)} --proxy-weights {ckpt} --language-model {text}")


__all__ = ["TEACHERS", "SIGLIP2_G_TEXT", "TINY_TEXT", "tiny_files", "mlp2_state", "radio_state",
           "write_radio_checkpoint", "prompt_words", "write_text_folder"]


if __name__ == "__main__":
    main()
