"""The ``sam`` model family (vpltool.models.backbones.sam): SAM's image encoder from the segment-anything package,
loaded offline from a local file (a whole Sam checkpoint or the encoder's tensors), its last global attention as the
package's own block computes it, and a file of another architecture refused in one line before anything is built."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from vpltool.errors import VplError
from vpltool.models import check_model, families, load_model
from vpltool.models.backbones.sam import SAM_ARCHS, SamEncoder, SamSpec

TOY_DINO = Path(__file__).resolve().parents[1] / "vpltool" / "assets" / "toy-dino" / "model.safetensors"


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg, msg
    return msg


@pytest.fixture(scope="module")
def encoder() -> SamEncoder:
    torch.manual_seed(0)
    return load_model("sam", SamSpec("test", "none"), "cpu")


def _perturbed_state(enc: SamEncoder, seed: int = 1) -> dict[str, torch.Tensor]:
    """The encoder's tensors with noise (zero-initialised rel-pos tables too), so that a load is seen."""
    g = torch.Generator().manual_seed(seed)
    return {k: (v + 0.05 * torch.randn(v.shape, generator=g)).contiguous()
            for k, v in enc.model.state_dict().items()}


def test_sam_is_a_registered_family():
    assert "sam" in families()


def test_prepare_is_sams_resize_normalise_and_pad(encoder):
    image = np.random.default_rng(0).integers(0, 256, (90, 150, 3), dtype=np.uint8)
    x, grid = encoder.prepare(image)
    assert x.shape == (1, 3, 256, 256) and x.dtype == torch.float32
    # long side 150 -> 256, short 90 -> int(90 * 256 / 150 + 0.5) = 154: 9 whole patches of 16 rows
    assert grid == (154 // 16, 256 // 16)
    assert torch.all(x[..., 154:, :] == 0) and not torch.all(x[..., 153, :] == 0)


def test_last_attention_is_the_blocks_own(encoder):
    """The attention and values returned, put through the rest of the package's last block and its neck, give the
    package's own encoder output: they are the weights the block uses, not a look-alike."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 256, 256)
    attn, v = encoder.last_attention(x)
    heads, n = encoder.num_heads, (256 // 16) ** 2
    assert attn.shape == (2, heads, n, n) and v.shape[:4] == (2, heads, 16, 16)
    assert torch.allclose(attn.sum(-1), torch.ones(2, heads, n), atol=1e-5)
    m = encoder.model
    h = m.patch_embed(x) + m.pos_embed
    for blk in m.blocks[:-1]:
        h = blk(h)
    last = m.blocks[-1]
    mixed = (attn.flatten(0, 1) @ v.flatten(0, 1).flatten(1, 2)).view(2, heads, 16, 16, -1)
    h = h + last.attn.proj(mixed.permute(0, 2, 3, 1, 4).reshape(2, 16, 16, -1))
    h = h + last.mlp(last.norm2(h))
    expected = encoder.features(x)
    assert torch.allclose(m.neck(h.permute(0, 3, 1, 2)), expected, atol=1e-5)


def test_a_whole_sam_checkpoint_loads_its_encoder(encoder, tmp_path):
    """SAM's released files hold the whole Sam: the ``image_encoder.`` tensors are taken, bit for bit."""
    state = _perturbed_state(encoder)
    whole = {f"image_encoder.{k}": v for k, v in state.items()}
    whole["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = torch.zeros(2, 128)
    whole["mask_decoder.iou_token.weight"] = torch.zeros(1, 256)
    path = tmp_path / "sam_test.pth"
    torch.save(whole, path)
    spec = SamSpec("test", str(path))
    check_model("sam", spec)
    loaded = load_model("sam", spec, "cpu")
    assert all(torch.equal(state[k], t) for k, t in loaded.model.state_dict().items())
    path2 = tmp_path / "encoder.safetensors"
    save_file(state, str(path2))
    loaded2 = load_model("sam", SamSpec("test", str(path2)), "cpu")
    assert all(torch.equal(state[k], t) for k, t in loaded2.model.state_dict().items())


def test_a_file_of_another_architecture_is_one_line(tmp_path):
    with pytest.raises(VplError) as e:
        check_model("sam", SamSpec("test", str(TOY_DINO)))
    msg = _one_line(e)
    assert str(TOY_DINO) in msg and "not weights of the SAM test image encoder" in msg and "--sam-weights" in msg


def test_a_file_of_another_sam_size_is_one_line(encoder, tmp_path):
    """The encoder of one size passed as another: refused by its tensors' shapes, before vit_b is built."""
    path = tmp_path / "small.safetensors"
    save_file(_perturbed_state(encoder), str(path))
    with pytest.raises(VplError) as e:
        load_model("sam", SamSpec("vit_b", str(path)), "cpu")
    assert "SAM vit_b" in _one_line(e)


def test_a_wrong_shaped_tensor_is_one_line(encoder, tmp_path):
    state = _perturbed_state(encoder)
    state["pos_embed"] = torch.zeros(1, 8, 8, state["pos_embed"].shape[-1])
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(VplError) as e:
        check_model("sam", SamSpec("test", str(path)))
    msg = _one_line(e)
    assert "'pos_embed'" in msg and "[1, 8, 8, 32]" in msg


@pytest.mark.parametrize("make", ["missing", "text", "pickle"])
def test_unreadable_weights_are_one_line(tmp_path, make):
    path = tmp_path / "w.pth"
    if make == "text":
        path.write_text("not weights")
    elif make == "pickle":
        torch.save({"a": 1}, path)
    with pytest.raises(VplError) as e:
        check_model("sam", SamSpec("test", str(path)))
    assert str(path) in _one_line(e)


def test_an_unknown_size_is_one_line():
    with pytest.raises(VplError) as e:
        check_model("sam", SamSpec("vit_x", "none"))
    assert all(name in _one_line(e) for name in SAM_ARCHS)


def test_sam2_as_tridents_sam_is_one_line_naming_where_sam2_goes():
    """SAM 2's Hiera has no counterpart of the last global attention Trident reads: refused before anything is
    built, the line naming SAM's sizes and SAM 2's place (CorrCLIP's --region-masks sam2:CONFIG)."""
    for name in ("sam2_hiera_t", "sam2.1_hiera_l"):
        with pytest.raises(VplError, match="--region-masks sam2:CONFIG") as e:
            check_model("sam", SamSpec(name, "none"))
        assert "\n" not in str(e.value) and "vit_b" in str(e.value)
