"""The CLIP-ES surgery on a tiny random CLIP (the properties of CLIP-ES clip/model.py), and every way the weights
can be missing."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from vpltool.errors import VplError
from vpltool.models import ClipBackbone, ModelSpec, load_backbone

import pace  # tests/ is on sys.path: hang bounds in idle-machine seconds
from pace import bound


@pytest.fixture(scope="module")
def bb(tiny_spec) -> ClipBackbone:
    torch.manual_seed(0)
    return load_backbone(tiny_spec, "cpu")


def _pixels(n: int, h: int, w: int) -> torch.Tensor:
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(1))


def _dense(model: ClipBackbone, pixels: torch.Tensor) -> torch.Tensor:
    return model.dense(model.encode(pixels).tokens)


def test_geometry_of_the_tiny_model(bb):
    assert (bb.patch_size, bb.native_grid, bb.width, bb.embed_dim, bb.n_blocks) == (16, (4, 4), 64, 32, 3)


def test_positional_embedding_is_identity_at_native_grid(bb):
    pos = bb.positional_embedding(bb.native_grid)
    assert torch.equal(pos, bb.visual.positional_embedding.detach().float())


def test_positional_embedding_resized_keeps_cls(bb):
    native = bb.visual.positional_embedding.detach().float()
    pos = bb.positional_embedding((3, 7))
    assert pos.shape == (1 + 21, bb.width)
    assert torch.equal(pos[0], native[0])
    assert not torch.allclose(pos[1:4], native[1:4])  # the patch rows did move
    # bilinear resize stays within the range of the native patch rows, channel by channel
    assert (pos[1:] <= native[1:].amax(0) + 1e-6).all() and (pos[1:] >= native[1:].amin(0) - 1e-6).all()
    half = bb.positional_embedding((3, 7), fp16_round=True)
    assert torch.equal(half, pos.half().float())


def test_head_averaged_attention_is_row_stochastic(bb):
    pixels = _pixels(2, 48, 80)
    x = bb.embed(pixels)
    assert x.shape == (2, 1 + 15, bb.width)
    enc = bb.encode(pixels, attention_from=1, collect=(0, 2))
    assert len(enc.attentions) == bb.n_blocks - 1 and enc.tokens.shape == x.shape and enc.grid == (3, 5)
    assert len(enc.blocks) == 2 and torch.equal(enc.blocks[1], enc.tokens[:, 1:])  # block 2 is the last
    for a in enc.attentions:
        assert a.shape == (2, 16, 16) and (a >= 0).all()
        assert torch.allclose(a.sum(-1), torch.ones(2, 16), atol=1e-5)


def test_embed_refuses_sizes_off_the_patch_grid(bb):
    with pytest.raises(VplError, match="multiple of the patch size"):
        bb.embed(_pixels(1, 50, 64))


def test_forward_at_native_size_reproduces_encode_image(bb):
    pixels = _pixels(2, 64, 64)
    x = bb.encode(pixels).tokens
    ours = bb.visual.ln_post(x[:, 0]) @ bb.visual.proj  # 'tok' pooling: the class token
    theirs = bb.model.encode_image(pixels)
    assert bb.visual.pool_type == "tok"
    assert torch.allclose(ours, theirs, atol=1e-5)
    dense = bb.dense(x)
    assert dense.shape == (2, 16, bb.embed_dim)
    assert torch.allclose(dense, bb.visual.ln_post(x[:, 1:]) @ bb.visual.proj, atol=1e-6)


def test_block_by_block_equals_the_run(bb):
    """extract runs blocks 0..n-2 then the last alone; cam relies on that split being exact."""
    grid, pixels = (2, 3), _pixels(1, 32, 48)
    full = bb.encode(pixels).tokens
    head = bb.encode(pixels, stop=bb.n_blocks - 1).tokens
    last, attn, ln1 = bb.block(bb.n_blocks - 1, head, grid, need_weights=True, keep_ln1=True)
    assert torch.allclose(last, full, atol=1e-6)
    assert attn.shape == (1, 7, 7) and ln1.shape == head.shape


def test_encode_text_with_truncation_equals_open_clip(bb):
    texts = ["a photo of a cat.", "a clean origami person with clothes,people,human.", "x"]
    ours = bb.encode_text(texts)
    tokens = open_clip.get_tokenizer(bb.spec.model)(texts)
    theirs = F.normalize(bb.model.encode_text(tokens).float(), dim=-1)
    assert ours.shape == (3, bb.embed_dim) and ours.dtype == torch.float32
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert torch.allclose(ours.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(bb.encode_text(texts, batch_size=1), ours, atol=1e-5)  # padding length is irrelevant


@pytest.mark.parametrize("hw, expected", [((375, 500), (384, 512)), ((5, 7), (16, 16)), ((64, 64), (64, 64)),
                                          ((17, 32), (32, 32))])
def test_input_size_rounds_each_side_up(bb, hw, expected):
    assert bb.input_size(*hw) == expected


def test_input_size_fixed_square_and_max_side(bb):
    assert bb.input_size(375, 500, image_size=200) == (208, 208)
    h, w = bb.input_size(1000, 2000, max_side=500)
    assert (h, w) == (256, 512) and h % 16 == 0 and w % 16 == 0


def test_preprocess_shape_and_normalisation(bb):
    image = np.full((30, 40, 3), 255, dtype=np.uint8)
    x = bb.preprocess(image, (32, 48))
    assert x.shape == (3, 32, 48) and x.dtype == torch.float32
    expected = (1 - torch.tensor(bb.mean)) / torch.tensor(bb.std)
    assert torch.allclose(x[:, 5, 5], expected, atol=1e-2)


# --------------------------------------------------------------------------------------------- loading
def test_unknown_tag_lists_the_tags_quickly(tiny_spec):
    start = time.perf_counter()
    with pytest.raises(VplError, match="neither a file nor a tag of vpl-test-vit; tags: none"):
        load_backbone(ModelSpec(tiny_spec.model, "openai", tiny_spec.config_dir))
    assert time.perf_counter() - start < bound(5, cap=30)  # the hub's retries took ~47 s


def test_offline_tag_without_cache_fails_fast_naming_a_local_file(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # read at import, so patch it too
    start = time.perf_counter()
    with pytest.raises(VplError) as e:
        load_backbone(ModelSpec("ViT-B-16", "openai"))
    assert time.perf_counter() - start < bound(5, cap=30)
    assert "not in the local cache" in str(e.value) and "--pretrained /path/to/ViT-B-16.safetensors" in str(e.value)


def test_unknown_model_and_missing_weights_file(tiny_spec, tmp_path):
    with pytest.raises(VplError, match="unknown to open_clip"):
        load_backbone(ModelSpec("ViT-Nope-99", "none"))
    with pytest.raises(VplError, match="weights file not found"):
        load_backbone(ModelSpec(tiny_spec.model, str(tmp_path / "missing.safetensors"), tiny_spec.config_dir))


def test_weights_file_of_another_model_is_refused(tiny_spec, tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"visual.conv1.weight": torch.zeros(8, 3, 16, 16)}, str(path))
    with pytest.raises(VplError, match="does not hold vpl-test-vit weights"):
        load_backbone(ModelSpec(tiny_spec.model, str(path), tiny_spec.config_dir))


def test_safetensors_weights_load_back_identically(bb, tiny_spec, tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in bb.model.state_dict().items()}, str(path))
    torch.manual_seed(123)  # a different random init underneath must not matter
    back = load_backbone(ModelSpec(tiny_spec.model, str(path), tiny_spec.config_dir))
    assert back.spec.identity()["pretrained"] == str(path)
    pixels = _pixels(1, 48, 32)
    assert torch.equal(_dense(back, pixels), _dense(bb, pixels))
    assert torch.equal(bb.encode_text(["a photo of a cat."]), back.encode_text(["a photo of a cat."]))


def test_random_weights_are_the_same_in_every_load(tiny_spec):
    """`--pretrained none`: `cam` and `text-prototypes` must rebuild the very CLIP that `extract` used."""
    torch.manual_seed(1)
    a = load_backbone(tiny_spec)
    state = torch.get_rng_state()
    b = load_backbone(tiny_spec)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is left alone
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(pa, pb), name
    from vpltool.models.backbones import loading

    loading._RANDOM.clear()  # drawn afresh, as a new process draws them: the kept draw is the same model
    c = load_backbone(tiny_spec)
    kept = {**dict(b.model.named_parameters()), **dict(b.model.named_buffers())}
    fresh = {**dict(c.model.named_parameters()), **dict(c.model.named_buffers())}
    assert kept.keys() == fresh.keys() and all(torch.equal(kept[k], fresh[k]) for k in kept)


def test_a_dino_from_a_weights_file_is_the_model_loaded_into_a_seeded_build(tmp_path):
    """load_dino builds a weights file's DINO on the meta device and takes the file's tensors: the same model, to
    the bit, as timm's seeded build with the file loaded into it."""
    import timm

    from vpltool.models.backbones.dino import DinoSpec, load_dino

    torch.manual_seed(3)
    made = timm.create_model("vit_tiny_patch16_224", num_classes=0, dynamic_img_size=True).eval()
    save_file({k: v.contiguous() for k, v in made.state_dict().items()}, str(tmp_path / "dino.safetensors"))
    got = load_dino(DinoSpec(model="vit_tiny_patch16_224", weights=str(tmp_path / "dino.safetensors"))).model
    want = {**dict(made.named_parameters()), **dict(made.named_buffers())}
    have = {**dict(got.named_parameters()), **dict(got.named_buffers())}
    assert want.keys() == have.keys() and all(torch.equal(want[k], have[k]) for k in want)
    assert all(t.device.type == "cpu" and t.dtype == want[k].dtype for k, t in have.items())


def test_weights_loaded_without_random_init_are_the_checkpoints(tiny_spec, tmp_path, monkeypatch):
    """no_weight_init skips the random draws only: every parameter still comes from the file, bit for bit."""
    from vpltool.models.backbones.loading import no_weight_init

    saved = load_backbone(tiny_spec).model.state_dict()
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in saved.items()}, str(path))
    loaded = load_backbone(ModelSpec(tiny_spec.model, str(path), tiny_spec.config_dir)).model.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    with no_weight_init():
        assert torch.nn.init.normal_(torch.zeros(3)).abs().sum() == 0  # no draw inside
        draws = []
        monkeypatch.setattr(torch.Tensor, "uniform_", lambda t, *a, **k: draws.append(t.shape) or t)
        torch.nn.MultiheadAttention(4, 1)  # its module bound xavier_uniform_ by name at import: patched too
        monkeypatch.undo()
        assert draws == []
    assert torch.nn.init.normal_(torch.zeros(3)).abs().sum() > 0  # the init functions are back afterwards


ROOT = Path(__file__).resolve().parents[1]


def _in_a_fresh_python(code: str, *argv) -> None:
    """``code`` run by a new interpreter (imports as a command's process meets them), ``argv`` its arguments; its
    assertions' failure shown with its stderr."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = pace.run([sys.executable, "-c", code, *map(str, argv)], 120, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


# what import_open_clip leaves, asked of one new interpreter (its start, torch's and open_clip's imports, ~3.5 CPU-s,
# once for the two tests below): what is imported right after it, then each test's checks in a part of its own (a
# part's failure is its traceback, shown by the test it belongs to), the push helpers' before dynamo's (nothing the
# latter imports may decide the former)
_OPEN_CLIP_CHILD = (
    "import json, sys, traceback\n"
    "from unittest import mock\n"
    "from vpltool.models.backbones.loading import import_open_clip\n"
    "import_open_clip()\n"
    "out = {'imported': sorted(m for m in ('torch._dynamo', 'timm', 'huggingface_hub.hf_api') if m in sys.modules)}\n"
    "def push_helpers():\n"
    "    push = sys.modules['open_clip.push_to_hf_hub']\n"
    "    import huggingface_hub\n"
    "    assert huggingface_hub.create_repo.__module__ == 'huggingface_hub.hf_api'  # the package's own again\n"
    "    with mock.patch.object(huggingface_hub, 'create_repo', return_value='made') as real:  # no network\n"
    "        assert push.create_repo('me/repo', exist_ok=True) == 'made'\n"
    "    real.assert_called_once_with('me/repo', exist_ok=True)\n"
    "def dynamo():\n"
    "    import torch\n"
    "    assert sys.modules['torchvision.ops.roi_align'].is_compile_supported('cpu') in (True, False)\n"
    "    assert callable(torch._dynamo.optimize) and 'torch._dynamo' in sys.modules\n"
    "for part in (push_helpers, dynamo):\n"
    "    try:\n"
    "        part()\n"
    "        out[part.__name__] = 'ok'\n"
    "    except Exception:\n"
    "        out[part.__name__] = traceback.format_exc()\n"
    "print(json.dumps(out))\n"
)


@pytest.fixture(scope="module")
def open_clip_child() -> dict:
    """:data:`_OPEN_CLIP_CHILD`'s answer: ``imported`` (which of dynamo, timm, hf_api import_open_clip imported), and
    per part ``'ok'`` or its traceback."""
    import json

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = pace.run([sys.executable, "-c", _OPEN_CLIP_CHILD], 120, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_open_clip_import_defers_dynamo_and_leaves_it_working(open_clip_child):
    """import_open_clip keeps torch._dynamo out of the import (torchvision only names one function of it) and
    leaves the real module importable: torchvision's reference resolves to it, torch.compile still exists."""
    assert "torch._dynamo" not in open_clip_child["imported"] and "timm" not in open_clip_child["imported"]
    assert open_clip_child["dynamo"] == "ok", open_clip_child["dynamo"]


def test_open_clip_import_leaves_huggingface_hubs_upload_api_unimported_and_callable(open_clip_child):
    """import_open_clip does not import huggingface_hub.hf_api for open_clip's push helpers: their names are bound
    (as far as a plain import binds them) to forwarders that call the real function, and the package gives its own
    functions again afterwards."""
    assert "huggingface_hub.hf_api" not in open_clip_child["imported"]
    assert open_clip_child["push_helpers"] == "ok", open_clip_child["push_helpers"]


def test_sam_check_and_load_leave_dynamo_unimported_and_the_random_state_alone():
    """segment-anything imports torchvision, whose roi_align would import torch._dynamo (most of a sam-pseudo
    process's start-up): import_sam defers it as import_open_clip does, and check_sam builds the prompt encoder and
    decoder off the meta device (whose random initialisers import dynamo) without drawing from the process's
    random state. Dynamo still imports and works after."""
    code = (
        "import sys, torch\n"
        "from vpltool.models.backbones.sam import SamSpec, check_sam\n"
        "from vpltool.models.registry import load_model\n"
        "from vpltool.models.dense.corrclip.regions import SAM_SETTINGS, SamRegions\n"
        "state = torch.random.get_rng_state()\n"
        "spec = SamSpec('toy', sys.argv[1], prompt=True)\n"
        "check_sam(spec)\n"
        "assert torch.equal(torch.random.get_rng_state(), state)\n"
        "SamRegions(load_model('sam', spec, 'cpu'), SAM_SETTINGS)\n"
        "assert 'torch._dynamo' not in sys.modules, 'dynamo imported'\n"
        "assert sys.modules['torchvision.ops.roi_align'].is_compile_supported('cpu') in (True, False)\n"
        "assert callable(torch._dynamo.optimize) and 'torch._dynamo' in sys.modules\n"
    )
    _in_a_fresh_python(code, ROOT / "vpltool" / "assets" / "toy-sam-world20" / "model.safetensors")


def test_a_config_folder_registered_again_is_read_once_per_model(tmp_path):
    """open_clip appends a folder to its list on every add_model_config and re-reads the whole list: registered once
    per model made, a long-lived process re-read one folder hundreds of times (quadratic). Registered again, the
    folder stays one entry, moved last (its configs win over an earlier folder's, as the last-added do), and an
    edit to its config between two registrations is read."""
    import json

    import open_clip.factory

    from vpltool.models.backbones.loading import register_config_dir

    folder = tmp_path / "configs"
    folder.mkdir()
    config = json.loads((Path(__file__).parent / "assets" / "model_configs" / "vpl-test-vit.json").read_text())
    (folder / "vpl-test-edit.json").write_text(json.dumps(config))
    paths = open_clip.factory._MODEL_CONFIG_PATHS
    for _ in range(5):
        register_config_dir(str(folder))
    assert paths.count(folder) == 1 and len(set(paths)) == len(paths)  # VPLTOOL_MODEL_CONFIGS's folder once too
    (folder / "vpl-test-edit.json").write_text(json.dumps({**config, "embed_dim": config["embed_dim"] + 8}))
    register_config_dir(str(folder))
    assert open_clip.factory._MODEL_CONFIGS["vpl-test-edit"]["embed_dim"] == config["embed_dim"] + 8
