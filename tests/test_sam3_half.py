"""SAM 3's weights held in the run's half precision (vpltool/models/backbones/sam3_half.py), on the tiny random SAM 3:
under a bf16 autocast its linear and convolution weights are bf16 (norms, embeddings and the geometry encoder
fp32) and every output is bit-identical to fp32 weights under the same autocast; back in fp32 the weights are the
files' again, and so are the outputs."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from vpltool.models import load_model  # noqa: E402
from vpltool.models.backbones.sam3 import Sam3Spec  # noqa: E402
from vpltool.models.backbones.sam3_half import halved_layers, weights_bytes  # noqa: E402

WORDS = ["cat", "dog", "sofa", "sky", "traffic light"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from vpltool.models.backbones.sam3_files import write_tiny

    return str(write_tiny(tmp_path_factory.mktemp("sam3") / "hf", "hf"))


def _outputs(sam, photo) -> dict[str, torch.Tensor]:
    """Every tensor a run reads of SAM 3 on one photo: the image's levels, the prompts' encoding, the grounding
    with both heads, and the concepts at the photo's size (every query kept)."""
    image = sam.encode_image(sam.prepare(photo))
    text = sam.encode_text(WORDS)
    g = sam.ground(image, text)
    [c0, *_] = sam.concepts(g, tuple(photo.shape[:2]), 0.0)
    return {**{f"level{i}": f for i, f in enumerate(image.features)}, "text": text.features, "embeds": text.embeds,
            "logits": g.pred_logits, "presence": g.presence_logits, "boxes": g.pred_boxes, "masks": g.pred_masks,
            "semantic": g.semantic_seg, "concept_masks": c0.masks, "concept_scores": c0.scores}


def test_bf16_weights_give_the_outputs_of_fp32_weights_under_the_same_autocast(tiny):
    torch.manual_seed(0)
    photo = torch.randint(0, 255, (40, 52, 3), dtype=torch.uint8)
    half, ref = load_model("sam3", Sam3Spec(tiny), "cpu"), load_model("sam3", Sam3Spec(tiny), "cpu")
    ref.follow_autocast = lambda: None  # fp32 weights whatever the autocast: autocast casts them at each call
    fp32_bytes = weights_bytes(half.model)
    with torch.no_grad():
        plain = _outputs(ref, photo)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            want, got = _outputs(ref, photo), _outputs(half, photo)
    assert half.held == torch.bfloat16
    for name in want:
        assert got[name].dtype == want[name].dtype and torch.equal(got[name], want[name]), name
    assert not torch.equal(want["logits"], plain["logits"])  # the autocast did change the arithmetic
    # what is halved: every linear and convolution layer outside the geometry encoder; nothing else
    halved = {f"{n}.{k}" for n, layer in halved_layers(half.model) for k, _ in layer.named_parameters(recurse=False)}
    assert len(halved) > 50 and any(".conv" in n or "patch" in n for n in halved)
    for name, p in half.model.named_parameters():
        assert p.dtype == (torch.bfloat16 if name in halved else torch.float32), name
        if "geometry_encoder" in name or "norm" in name or "embed" in name.split(".")[-2]:
            assert p.dtype == torch.float32, name
    halved_bytes = sum(half.model.get_parameter(n).numel() for n in halved) * 2  # 4 bytes each before, 2 now
    assert weights_bytes(half.model) == fp32_bytes - halved_bytes
    # back in fp32: the files' weights again, and the fp32 outputs
    with torch.no_grad():
        again = _outputs(half, photo)
    assert half.held == torch.float32 and weights_bytes(half.model) == fp32_bytes
    ref_state = ref.model.state_dict()
    assert all(torch.equal(t, ref_state[k]) for k, t in half.model.state_dict().items())
    for name in plain:
        assert torch.equal(again[name], plain[name]), name


def test_activesam_under_bf16_is_unchanged_by_half_weights(tiny):
    """ActiveSAM reads the text projection directly (its context bank): the same scores with halved weights."""
    from vpltool.models.dense import activesam
    from vpltool.models.dense.activesam import vocabulary

    torch.manual_seed(1)
    photo = torch.randint(0, 255, (30, 36, 3), dtype=torch.uint8)
    s = activesam.ActiveSamSettings()
    s.hypernym_tokens, s.max_active, s.bucket_size, s.preview_resolution = 0, 2, 2, 56
    results = []
    for follow in (False, True):
        sam = load_model("sam3", Sam3Spec(tiny), "cpu")
        if not follow:
            sam.follow_autocast = lambda: None
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            bank = activesam.build_bank(sam, WORDS, s)
            text = sam.encode_text([vocabulary.canonical(w) for w in WORDS])
            results.append(activesam.activesam_scores(sam, photo, text, (30, 36), s, bank))
        assert sam.held == (torch.bfloat16 if follow else torch.float32)
    (a, act_a, pre_a), (b, act_b, pre_b) = results
    assert torch.equal(a, b) and act_a == act_b and torch.equal(pre_a, pre_b)


def test_weights_read_back_in_fp32_must_be_the_bytes_the_model_was_loaded_from(tiny, tmp_path):
    """Back from a half dtype the weights are read again from the files: a file replaced since (another model under
    the same name) is refused in one line, not read back into a model of two models' weights."""
    import shutil

    from vpltool.io.reads import FileReplaced
    from vpltool.models.backbones.sam3_files import write_tiny

    folder = shutil.copytree(tiny, tmp_path / "mine")
    sam = load_model("sam3", Sam3Spec(str(folder)), "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sam.follow_autocast()
    assert sam.held == torch.bfloat16
    other = write_tiny(tmp_path / "other", "hf", seed=1)
    shutil.copyfile(other / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(FileReplaced, match=r"mine/model\.safetensors: replaced after SAM 3 was loaded from it "
                                           r"\(sha256 \w{12}… when it was loaded, \w{12}… now\)"):
        sam.follow_autocast()  # fp32 again: the weights read back
    shutil.copyfile(tiny + "/model.safetensors", folder / "model.safetensors")  # put back: read back as before
    sam.follow_autocast()
    assert sam.held == torch.float32
