"""SigLIP 2 and PE-Core (open_clip's timm towers) as CLIPs: tiny random towers built by timm's constructors of those
families and open_clip's own ``TimmModel`` (tests/tiny_towers.py, tests/assets/model_configs/vpl-test-sl2.json and
vpl-test-pe.json), run through the stages, and the tower's arithmetic checked against timm's and TextRegion's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny_towers  # noqa: F401  (registers the tiny towers in timm)
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from vpltool.cli import app
from vpltool.errors import VplError
from vpltool.models import ModelSpec, check_model, load_model

CONFIGS = str(Path(__file__).parent / "assets" / "model_configs")
TOWERS = ("vpl-test-sl2", "vpl-test-pe")


def _bb(name: str, dense: str = "none"):
    return load_model("clip", ModelSpec(name, "none", config_dir=CONFIGS), "cpu", dense=dense)


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("model", TOWERS)
def test_extract_cam_eval_and_segment_run_on_the_tower(world, tmp_path, model):
    """extract -> text-prototypes -> cam -> eval, and segment --dense naclip, on each tower: every stage writes its
    output and eval scores the CAMs (a figure in [0, 1])."""
    tiny = ["--model", model, "--pretrained", "none", "--device", "cpu"]
    feats, text, cams = tmp_path / "feats", tmp_path / "text.safetensors", tmp_path / "cams"
    for args in (["extract", world, "--split", "train", "-o", feats, *tiny],
                 ["text-prototypes", feats, "-o", text, "--templates", "a photo of a {}.", "--background", "sky"],
                 ["cam", feats, "-p", text, "-o", cams, "--device", "cpu"],
                 ["eval", cams, "--json", tmp_path / "cams.json"],
                 ["segment", world, "--split", "val", "-o", tmp_path / "seg", *tiny, "--dense", "naclip"]):
        r = _invoke(*args)
        assert r.exit_code == 0, (args[0], r.output)
    assert 0.0 <= json.loads((tmp_path / "cams.json").read_text())["miou"] <= 1.0
    assert len(list(cams.glob("*.safetensors"))) == len(list(feats.glob("*.safetensors")))
    assert len(list((tmp_path / "seg").glob("*.png"))) == 3


@pytest.mark.parametrize("model", TOWERS)
def test_tokens_are_timms_own_at_the_native_size_and_at_another_grid(model):
    """The tower's embedding and blocks give timm's own final tokens: at the native size against the open_clip
    tower's ``forward_features``; at a 4x6 grid against the same weights in a dynamic-size timm model (its
    positional table resampled as timm does, PE's RoPE rebuilt for the grid), with the antialiased bicubic resize."""
    import timm

    from vpltool.models.dense import DenseMixing

    bb = _bb(model)
    trunk = bb.tower.trunk
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(trunk.norm(bb.encode(x).tokens), trunk.forward_features(x))
        dynamic = timm.create_model(trunk.default_cfg["architecture"], num_classes=0, dynamic_img_size=True)
        state = {k: v for k, v in trunk.state_dict().items() if not k.startswith("head.")}
        dynamic.load_state_dict(state, strict=False)
        dynamic.eval()
        wide = torch.randn(1, 3, 64, 96)
        ours = bb.with_dense(DenseMixing("none", pos_interpolation="bicubic-antialias")).encode(wide).tokens
        assert (trunk.norm(ours) - dynamic.forward_features(wide)).abs().max() < 1e-5


@pytest.mark.parametrize("model", TOWERS)
def test_pooled_embedding_is_textregions_region_feature_and_the_mean_of_dense_tokens(model):
    """The image embedding (CLIP-ES's surgery on a pooling head) is TextRegion's region feature over every patch:
    the pooling head with every key replaced by one shared key (uniform weights over the patches), ``proj``,
    ``fc_norm`` and the heads after it, no MLP; and it is the mean of the dense tokens (the head is affine)."""
    bb = _bb(model)
    trunk, n = bb.tower.trunk, bb.n_prefix
    with torch.no_grad():
        out = bb.encode(torch.randn(2, 3, 64, 80)).tokens
        x = trunk.norm(out[:, n:])
        pool = trunk.attn_pool
        b, hw, c = x.shape
        q = pool.q(pool.latent.expand(b, -1, -1)).reshape(b, 1, pool.num_heads, -1).transpose(1, 2)
        kv = pool.kv(x).reshape(b, hw, 2, pool.num_heads, -1).permute(2, 0, 3, 1, 4)
        k, v = kv[0].mean(2, keepdim=True).expand_as(kv[0]), kv[1]  # one key for every patch
        region = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, 1, c)
        region = bb.visual.head(trunk.head(trunk.fc_norm(pool.proj(region))))[:, 0]
        pooled = bb.tower.pooled(out)
        assert torch.allclose(pooled, F.normalize(region, dim=-1), atol=1e-5)
        assert torch.allclose(pooled, bb.image_embedding(out), atol=1e-5)


def test_the_last_blocks_mixing_reads_q_and_k_with_rope():
    """PE-Core's last block in open_clip's form (the view the --dense presets mix): with CLIP's own attention,
    residual and FFN it is timm's block, so its q and k carry the RoPE timm applies (without it they would differ)."""
    from vpltool.models.backbones.timm_blocks import run_block
    from vpltool.models.dense import DenseMixing, mix_last_block

    bb = _bb("vpl-test-pe")
    grid = (4, 5)
    x = torch.randn(1, bb.n_prefix + 20, bb.width)
    with torch.no_grad():
        bb.blocks[-1].attn.qkv.weight.mul_(8)  # peaky attention (a random init's is near uniform): RoPE matters
        plain = DenseMixing("probe", "qk", True, True, gaussian_std=1e-9)  # not vanilla: through the view
        mixed = mix_last_block(bb.tower.mixing_block(grid), x, plain)
        timm_own = run_block(bb.blocks[-1], x, bb.tower.rope(grid, x.device))[0]
        no_rope = run_block(bb.blocks[-1], x, None)[0]
    assert (mixed - timm_own).abs().max() < 1e-4  # the ~1e-9 Gaussian bias aside, the same block
    assert (mixed - no_rope).abs().max() > 1e-3


def test_siglips_gradcam_score_is_its_sigmoid_and_the_background_rows_do_not_move_a_map():
    """SigLIP scores each image-text pair with sigmoid(logit + bias): GradCAM on it gives each class the map of its
    own cosine, whatever background rows sit beside it; PE-Core (softmax) keeps CLIP-ES's competition, where they
    do move it."""
    from vpltool.models.backbones.gradcam import image_scores

    maps = {}
    for model in TOWERS:
        bb = _bb(model)
        x = bb.encode(torch.randn(1, 3, 64, 64), stop=bb.n_blocks - 1).tokens[0]
        rows = F.normalize(torch.randn(4, bb.embed_dim), dim=-1)
        with_bg = bb.gradcam(x, (4, 4), rows, 2, 0.01).maps
        alone = bb.gradcam(x, (4, 4), rows[:2], 2, 0.01).maps
        maps[model] = (with_bg - alone).abs().max()
    logits = torch.randn(2, 3)
    assert torch.allclose(image_scores(_bb("vpl-test-sl2"), logits), (logits - 10.0).sigmoid())  # its bias: -10
    assert maps["vpl-test-sl2"] < 1e-5 < maps["vpl-test-pe"]


def test_a_dense_method_the_tower_cannot_take_is_refused_before_any_model_loads(monkeypatch):
    """From the config alone: SigLIP 2's tower (no class token, no nn.MultiheadAttention) runs the last block's
    mixing only; ProxyCLIP is one line, and nothing is built (create_model would raise)."""
    import vpltool.models.backbones.clip as clip
    from vpltool.models.dense import DenseMixing

    monkeypatch.setattr(clip, "create_model", lambda spec: pytest.fail("a model was built"))
    with pytest.raises(VplError, match="on it choose --dense none, maskclip") as e:
        check_model("clip", ModelSpec("ViT-B-16-SigLIP2", "none"), dense="proxyclip")
    assert "\n" not in str(e.value)
    check_model("clip", ModelSpec("PE-Core-B-16", "none"), dense="naclip")  # a mixing preset: fine
    with pytest.raises(VplError, match="--attention prior"):
        check_model("clip", ModelSpec("PE-Core-B-16", "none"), dense=DenseMixing("naclip", "prior+kk"))


@pytest.mark.parametrize("model,tag", [("ViT-B-16-quickgelu", "metaclip_fullcc"),
                                       ("ViT-L-14-quickgelu", "metaclip_400m")])
def test_metaclip_names_resolve_and_missing_weights_are_one_line(model, tag):
    """MetaCLIP as CorrCLIP names it (configs/base_config.py: model_type ViT-B-16-quickgelu, clip_type
    metaclip_fullcc): the tag is known, and offline its missing weights are one line naming the fix."""
    check_model("clip", ModelSpec(model, tag))
    with pytest.raises(VplError, match="not in the local cache and the hub is unreachable") as e:
        load_model("clip", ModelSpec(model, tag))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("model,tag,quick", [("ViT-B-16", "openai", True), ("ViT-B-16-quickgelu", "openai", False),
                                             ("ViT-B-16", "metaclip_fullcc", True),
                                             ("ViT-B-16", "laion2b_s34b_b88k", False)])
def test_a_tag_is_built_with_the_activation_it_was_trained_with(monkeypatch, model, tag, quick):
    """OpenAI's and MetaCLIP's weights were trained with QuickGELU: on open_clip's GELU config (``ViT-B-16``, the
    default's) they are built with QuickGELU, as ``clip.load`` and the references built on it run them (open_clip
    3 only warns, and would run GELU), and the record says so (``activation``: a run made with GELU is another
    model); a tag trained with GELU, or one on its own QuickGELU config, is built as it is."""
    import huggingface_hub

    from vpltool.models.backbones import loading

    oc = loading.import_open_clip()
    made = {}
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name: "/cache/weights.bin")
    monkeypatch.setattr(oc, "create_model", lambda name, pretrained=None, **kw: made.update(kw, name=name) or "m")
    spec = ModelSpec(model, tag)
    assert loading.create_model(spec) == ("m", None)
    assert made["force_quick_gelu"] is quick and made["name"] == model
    assert spec.identity().get("activation") == ("quickgelu" if quick else None)


def test_a_tag_trained_with_gelu_on_a_quickgelu_config_is_one_line():
    """The one pairing that cannot be built as trained: a GELU-trained tag on a config that runs QuickGELU."""
    from vpltool.models.backbones import loading

    with pytest.raises(VplError, match="trained without QuickGELU, --model roberta-ViT-B-32 runs QuickGELU"):
        loading.check_quick_gelu(loading.import_open_clip(), "roberta-ViT-B-32", "laion2b_s12b_b32k")


def test_weights_from_a_file_take_the_normalisation_every_tag_of_the_model_agrees_on(tmp_path, monkeypatch):
    """A local file names no tag: SigLIP 2's and PE-Core's are normalised with their tags' 0.5 / 0.5 (open_clip's
    default is OpenAI's); a model whose tags disagree, or that has none, keeps open_clip's default."""
    from safetensors.torch import save_file

    from vpltool.models.backbones.loading import import_open_clip, tags_preprocess

    oc = import_open_clip()
    assert tags_preprocess(oc, "ViT-B-16-SigLIP2") == {"mean": (0.5,) * 3, "std": (0.5,) * 3}
    assert tags_preprocess(oc, "PE-Core-T-16-384") == {"mean": (0.5,) * 3, "std": (0.5,) * 3}
    assert tags_preprocess(oc, "vpl-test-sl2") == {}
    path = tmp_path / "sl2.safetensors"
    save_file({k: v.contiguous() for k, v in _bb("vpl-test-sl2").model.state_dict().items()}, str(path))
    monkeypatch.setattr(oc, "list_pretrained_tags_by_model", lambda model: ["webli"])
    monkeypatch.setattr(oc, "get_pretrained_cfg", lambda model, tag: {"mean": (0.5,) * 3, "std": (0.5,) * 3})
    bb = load_model("clip", ModelSpec("vpl-test-sl2", str(path), config_dir=CONFIGS))
    assert bb.mean == (0.5,) * 3 and bb.std == (0.5,) * 3


def test_siglip2_s_tokenizer_offline_is_refused_before_any_model_builds(monkeypatch, world, tmp_path):
    """SigLIP 2's Gemma tokenizer comes from the hub: uncached and offline, segment and text-prototypes refuse in one
    line naming --model before the model builds (open_clip would retry the hub for minutes after building it); a
    local-dir folder whose config names a hub tokenizer must hold its files; an image stage needs none."""
    import huggingface_hub

    import vpltool.models.backbones.clip as clip

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name, **_: None)  # an empty cache
    monkeypatch.setattr(clip, "create_model", lambda spec: pytest.fail("the model was built"))
    r = _invoke("segment", world, "--split", "val", "-o", tmp_path / "seg", "--model", "ViT-B-16-SigLIP2",
                "--pretrained", "none", "--dense", "naclip", "--classes", "circle,star", "--device", "cpu")
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert r.exit_code == 2 and len(errors) == 1, r.output
    assert errors[0].startswith("error: --model ViT-B-16-SigLIP2: its tokenizer (timm/ViT-B-16-SigLIP2, from the "
                                "Hugging Face hub) is not in the local cache and the hub is unreachable"), errors[0]
    assert "--model local-dir:DIR" in errors[0] and not (tmp_path / "seg").exists()
    folder = tmp_path / "sl2"
    folder.mkdir()
    cfg = json.loads((Path(CONFIGS) / "vpl-test-sl2.json").read_text())
    cfg["text_cfg"]["hf_tokenizer_name"] = "timm/ViT-B-16-SigLIP2"
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    with pytest.raises(VplError, match=r"--model local-dir:.*sl2: its config names the tokenizer timm/ViT-B-16-SigLIP2"
                                       r", whose files open_clip reads from the folder itself, and it holds none"):
        clip.check_tokenizer(ModelSpec(f"local-dir:{folder}", "none"))
    (folder / "tokenizer.json").write_text("{}")
    clip.check_tokenizer(ModelSpec(f"local-dir:{folder}", "none"))  # its files there: nothing to refuse
    clip.check_tokenizer(ModelSpec("ViT-B-16", "none"))  # open_clip's own BPE: nothing to fetch
