"""The ``sam3`` model family (vpltool.models.backbones.sam3): transformers' Sam3Model read offline from Hugging
Face's layout or Meta's sam3.pt (the same weights in both give the same model), a file of another model or a damaged
one refused in one line before anything is built, and the calls Meta's processor makes (a cached image, buckets of
prompts, extra tokens, the head skipped, another side) on a tiny seeded model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from vpltool.errors import VplError
from vpltool.models import check_model, families, load_model
from vpltool.models.backbones.sam3 import Sam3, Sam3Spec
from vpltool.models.backbones.sam3_files import random_state, read_state, write_hf, write_meta, write_tiny
from vpltool.models.backbones.sam3_weights import from_meta, locate, tiny_config, to_meta

TOY_SAM = Path(__file__).resolve().parents[1] / "vpltool" / "assets" / "toy-sam" / "model.safetensors"
PROMPTS = ["a dog", "cat", "sky"]


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg, msg
    return msg


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """The same seeded tiny SAM 3 in both layouts."""
    root = tmp_path_factory.mktemp("sam3")
    return {"hf": write_tiny(root / "hf", "hf"), "meta": write_tiny(root / "meta.pt", "meta")}


@pytest.fixture(scope="module")
def model(tiny) -> Sam3:
    return load_model("sam3", Sam3Spec(str(tiny["hf"])))


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)


def test_sam3_is_a_registered_family():
    assert "sam3" in families()


def test_meta_names_are_transformers_names_and_back():
    """Meta's checkpoint names map onto every tensor of transformers' model and back, values unchanged (fused
    projections split and joined, the text projection transposed, the class-token row of the position table)."""
    state = random_state(tiny_config(), seed=3)
    meta = to_meta(state)
    assert all(k.startswith("detector.") for k in meta)
    assert "detector.backbone.vision_backbone.trunk.blocks.0.attn.qkv.weight" in meta
    assert meta["detector.backbone.vision_backbone.trunk.pos_embed"].shape[1] == \
        state["vision_encoder.backbone.embeddings.position_embeddings"].shape[1] + 1
    back = from_meta({k[len("detector."):]: v for k, v in meta.items()}, "x")
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


def test_both_layouts_give_the_same_model(tiny, model, photo):
    other = load_model("sam3", Sam3Spec(str(tiny["meta"])))
    a, b = model.model.state_dict(), other.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    outs = []
    for m in (model, other):
        image = m.encode_image(m.prepare(photo))
        outs.append(m.ground(image, m.encode_text(PROMPTS)))
    for key in ("pred_logits", "presence_logits", "pred_boxes", "pred_masks", "semantic_seg"):
        assert torch.equal(getattr(outs[0], key), getattr(outs[1], key)), key


def test_a_folder_of_metas_file_and_a_bare_safetensors_are_found(tiny, tmp_path):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "sam3.pt").write_bytes(Path(tiny["meta"]).read_bytes())
    assert locate(tmp_path / "weights").layout == "meta"
    found = locate(tiny["hf"] / "model.safetensors")
    assert found.layout == "hf" and found.config == tiny["hf"] / "config.json"


@pytest.mark.parametrize(("link", "said"), [
    ("model.safetensors", r"a symbolic link loop, not a model.safetensors file"),  # a link to itself
    ("/dev/zero", r"not a regular file \(a device, a pipe or a socket\)"),
])
def test_a_weights_file_that_is_a_link_loop_or_a_device_is_named_as_such(tiny, tmp_path, link, said):
    """Not "a config.json without model.safetensors": the file is there, as something no weights can be read from."""
    import os

    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "config.json").write_bytes((tiny["hf"] / "config.json").read_bytes())
    os.symlink(link, folder / "model.safetensors")
    with pytest.raises(VplError) as e:
        locate(folder)
    assert re.match(rf"^{folder}/model.safetensors: {said}.*; pass SAM 3's weights", _one_line(e))


def test_a_folder_holding_both_layouts_is_refused_naming_both(tiny, tmp_path):
    """model.safetensors and sam3.pt side by side may be two models: which one is meant is asked, not guessed; each
    file passed itself is taken."""
    folder = tmp_path / "weights"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((tiny["hf"] / name).read_bytes())
    (folder / "sam3.pt").write_bytes(Path(tiny["meta"]).read_bytes())
    with pytest.raises(VplError) as e:
        locate(folder)
    assert _one_line(e) == (f"{folder}: holds both Hugging Face's SAM 3 (config.json + model.safetensors) and "
                            f"Meta's sam3.pt, which may be other weights; pass the one meant: "
                            f"{folder / 'model.safetensors'} or {folder / 'sam3.pt'}")
    assert locate(folder / "model.safetensors").layout == "hf" and locate(folder / "sam3.pt").layout == "meta"


def test_ground_without_the_geometry_token_is_transformers_own_forward(model, photo):
    """With ``geometry_token`` off, ground() is Sam3Model.forward's text-only path on the same inputs: the glue
    adds no arithmetic of its own. With it on (Meta's model), the prompt gains one token and the scores move."""
    pixels = model.prepare(photo)
    text = model.encode_text(PROMPTS)
    ours = model.ground(model.encode_image(pixels), text, geometry_token=False)
    with torch.no_grad():
        ref = model.model(pixel_values=pixels.expand(len(PROMPTS), -1, -1, -1), input_ids=model.tokenize(PROMPTS),
                          attention_mask=text.valid.long())
    torch.testing.assert_close(ours.pred_logits, ref.pred_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.presence_logits, ref.presence_logits[:, 0], rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.pred_masks, ref.pred_masks, rtol=0, atol=1e-4)
    torch.testing.assert_close(ours.semantic_seg, ref.semantic_seg, rtol=0, atol=1e-4)
    meta = model.ground(model.encode_image(pixels), text)
    assert (meta.pred_logits - ours.pred_logits).abs().max() > 1e-3


def test_buckets_extra_tokens_the_preview_and_concepts(model, photo):
    """A bucket of prompts against one cached image gives each prompt's own result; extra tokens change it and
    masked ones do not; the head skipped gives the same scores; another side runs; concepts are at the photo's
    size and above the threshold."""
    image = model.encode_image(model.prepare(photo))
    text = model.encode_text(PROMPTS)
    whole = model.ground(image, text)
    one = model.ground(image, text.select([1]))
    torch.testing.assert_close(one.pred_logits[0], whole.pred_logits[1], rtol=0, atol=1e-5)
    k, width = len(PROMPTS), model.width
    extra = torch.randn(k, 2, width, generator=torch.Generator().manual_seed(0))
    hidden = model.ground(image, text.with_tokens(extra, torch.zeros(k, 2, dtype=torch.bool)))
    torch.testing.assert_close(hidden.pred_logits, whole.pred_logits, rtol=0, atol=1e-5)
    seen = model.ground(image, text.with_tokens(extra, torch.ones(k, 2, dtype=torch.bool)))
    assert (seen.pred_logits - whole.pred_logits).abs().max() > 1e-3
    preview = model.ground(image, text, masks=False)
    assert preview.pred_masks is None and torch.equal(preview.pred_logits, whole.pred_logits)
    small = model.encode_image(model.prepare(photo, size=56))
    assert small.features[-1].shape[-1] == 4 and model.ground(small, text, masks=False).presence_logits.shape == (k,)
    assert model.encode_image(model.prepare(photo)).features[-1].shape[-1] == 8  # the native side again
    concepts = model.concepts(whole, photo.shape[:2], threshold=0.4)
    assert sum(c.scores.numel() for c in concepts) > 0
    for concept in concepts:
        n = concept.scores.numel()
        assert concept.masks.shape == (n, 90, 120) and concept.semantic.shape == (90, 120)
        assert bool((concept.scores > 0.4).all()) and concept.boxes.shape == (n, 4)
    for one, other in zip(model.segment(photo, PROMPTS, threshold=0.4, bucket=2), concepts):  # in buckets: the same
        torch.testing.assert_close(one.masks, other.masks, rtol=0, atol=1e-5)
        torch.testing.assert_close(one.scores, other.scores, rtol=0, atol=1e-6)


def test_a_file_of_another_model_is_refused_in_one_line(tiny, tmp_path):
    with pytest.raises(VplError) as e:  # segment-anything's toy SAM as safetensors beside no config
        check_model("sam3", Sam3Spec(str(TOY_SAM)))
    assert str(TOY_SAM) in _one_line(e)
    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "clip"}))
    (folder / "model.safetensors").write_bytes(TOY_SAM.read_bytes())
    with pytest.raises(VplError) as e:
        check_model("sam3", Sam3Spec(str(folder)))
    assert "config.json" in _one_line(e) and "'clip'" in str(e.value)
    torch.save({"model": {"blocks.0.weight": torch.zeros(2)}}, tmp_path / "other.pt")
    with pytest.raises(VplError) as e:
        check_model("sam3", Sam3Spec(str(tmp_path / "other.pt")))
    assert "other.pt" in _one_line(e) and "detector" in str(e.value)


def test_a_damaged_file_is_refused_before_or_as_it_loads(tiny, tmp_path):
    """A tensor missing is refused by the check (nothing built); a NaN by the load (the registry's finite rule);
    a file cut short by the check."""
    state = random_state(tiny_config(), seed=0)
    config = json.loads((tiny["hf"] / "config.json").read_text())
    gone = write_meta(tmp_path / "gone.pt", tiny_config(), {k: v for k, v in state.items()
                                                             if not k.startswith("detr_decoder.query_embed")})
    with pytest.raises(VplError) as e:
        check_model("sam3", Sam3Spec(str(gone)))
    assert "gone.pt" in _one_line(e) and "query_embed" in str(e.value)
    nan = dict(state)
    nan["mask_decoder.semantic_projection.bias"] = torch.tensor([float("nan")])
    folder = write_hf(tmp_path / "nan", config, nan)
    check_model("sam3", Sam3Spec(str(folder)))  # names and shapes are right
    with pytest.raises(VplError) as e:
        load_model("sam3", Sam3Spec(str(folder)))
    assert "model.safetensors" in _one_line(e) and "semantic_projection" in str(e.value)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(Path(tiny["meta"]).read_bytes()[:5000])
    with pytest.raises(VplError) as e:
        check_model("sam3", Sam3Spec(str(cut)))
    assert "cut.pt" in _one_line(e)
    assert set(read_state(locate(tiny["meta"]), shapes_only=True)) == set(state)


def test_the_hubs_video_layout_is_read_for_its_detector(tiny, model, tmp_path):
    """facebook/sam3's own folder: a sam3_video config.json around the detector's, and the video model's tensors
    (``detector_model.`` + the tracker's): the detector is read, the tracker left."""
    from safetensors.torch import save_file

    config = json.loads((tiny["hf"] / "config.json").read_text())
    folder = tmp_path / "hub"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "sam3_video", "detector_config": config,
                                                    "tracker_config": {"model_type": "sam3_tracker"}}))
    state = {f"detector_model.{k}": v.contiguous() for k, v in model.model.state_dict().items()}
    state["tracker_model.mask_decoder.w"] = torch.zeros(2)
    save_file(state, str(folder / "model.safetensors"))
    other = load_model("sam3", Sam3Spec(str(folder)))
    assert all(torch.equal(a, b) for a, b in zip(model.model.state_dict().values(), other.model.state_dict().values()))


def test_trident_refuses_sam3_in_one_line():
    from vpltool.models.backbones.sam import SamSpec

    with pytest.raises(VplError) as e:
        check_model("sam", SamSpec("sam3", "none"))
    assert "its own family" in _one_line(e) and "--region-masks sam3" in str(e.value)


def test_an_integer_tensor_is_refused_by_the_check_before_any_model_loads(tiny, tmp_path):
    """The dtype is in the safetensors header: the check (nothing of the weights read) names it, not the load."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "config.json").write_bytes((tiny["hf"] / "config.json").read_bytes())
    state = load_file(tiny["hf"] / "model.safetensors")
    name = sorted(k for k in state if k.endswith(".weight"))[0]
    state[name] = state[name].to(torch.int32)
    save_file(state, folder / "model.safetensors")
    with pytest.raises(VplError) as e:
        check_model("sam3", Sam3Spec(str(folder)))
    assert _one_line(e).startswith(f"{folder / 'model.safetensors'}: tensor {name!r} is int32, not the "
                                   "floating-point weights this model holds; pass SAM 3's weights")
