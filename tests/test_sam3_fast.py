"""The sam3 family's CPU layouts (vpltool.models.backbones.sam3_fast) against transformers' own layers: the same
numbers within float rounding in fast mode, transformers' bits in reproducible mode, and each piece against the
operation it stands for."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers.models.sam3 import modeling_sam3 as hf

from vpltool.models import load_model
from vpltool.models.backbones import onednn, sam3_fast
from vpltool.models.backbones.sam3 import Sam3, Sam3Spec
from vpltool.models.backbones.sam3_files import write_tiny
from vpltool.runtime.numerics import reproducible_asked

PROMPTS = ["a red square", "a blue circle", "stripes"]
FAST = (sam3_fast.ComplexRoPEAttention, sam3_fast.LayoutDetrDecoder, sam3_fast.FusedReluMLP,
        sam3_fast.SharedLateralPixelDecoder, sam3_fast.LevelsMaskDecoder, sam3_fast.FusedReluDecoderMLP,
        sam3_fast.HeadsFirstAttention)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Sam3:
    return load_model("sam3", Sam3Spec(str(write_tiny(tmp_path_factory.mktemp("sam3") / "hf", "hf"))))


def _transformers_own(model: Sam3) -> Sam3:
    """A copy of ``model`` whose layers are transformers' classes again."""
    plain = Sam3(copy.deepcopy(model.model), model.device)
    for m in plain.model.modules():
        if isinstance(m, FAST):
            m.__class__ = type(m).__mro__[1]
    assert not any(isinstance(m, FAST) for m in plain.model.modules())
    return plain


def _outputs(sam: Sam3, photos: list[np.ndarray]) -> list[torch.Tensor]:
    text = sam.encode_text(PROMPTS)
    out = []
    for photo in photos:
        image = sam.encode_image(sam.prepare(photo))
        for _ in range(2):  # the image's shared levels made by the first grounding, read by the second
            g = sam.ground(image, text)
            out += [*image.features, g.pred_logits, g.presence_logits, g.pred_boxes, g.pred_masks, g.semantic_seg]
    return out


def test_the_model_loads_with_the_cpu_layouts_in_place(model):
    kinds = {type(m) for m in model.model.modules()}
    assert set(FAST) <= kinds
    assert sam3_fast.speed_up(model.model) == 0 and {type(m) for m in model.model.modules()} == kinds  # idempotent
    assert sam3_fast.speed_up(_transformers_own(model).model) == sum(isinstance(m, FAST) for m in model.model.modules())
    assert not any(type(m) is hf.Sam3MLP and isinstance(m.activation_fn, torch.nn.ReLU)
                   for m in model.model.modules())
    # the ViT's linear layers, and only its, take oneDNN's route (none in reproducible mode or without oneDNN)
    (vit,) = [m for m in model.model.modules() if isinstance(m, hf.Sam3ViTModel)]
    routed = {id(m) for m in model.model.modules() if isinstance(m, onednn.OneDnnLinear)}
    want = onednn.available() and not reproducible_asked()
    assert routed == ({id(m) for m in vit.modules() if isinstance(m, torch.nn.Linear)} if want else set())
    assert not want or len(routed) > 4
    photo = np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    image = model.encode_image(model.prepare(photo))
    assert model.head_conv == "channels_last"
    model.ground(image, model.encode_text(PROMPTS))
    (levels,) = image.convolved.values()  # the image's own, once per image, in one precision
    # the coarser stage's level alone: each prompt convolves its own finest sum, channels-last
    assert [tuple(t.shape) for t in levels.values()] == [(1, *image.features[-2].shape[1:])]
    model.head_conv = "phases"
    try:
        model.ground(image, model.encode_text(PROMPTS))
    finally:
        model.head_conv = "channels_last"
    assert [tuple(t.shape) for t in levels.values()] == [(1, *f.shape[1:]) for f in image.features[-2::-1]]
    model.head_conv = "nchw"
    try:
        with pytest.raises(ValueError, match="head_conv 'nchw': give one of channels_last, phases"):
            model.ground(image, model.encode_text(PROMPTS))
    finally:
        model.head_conv = "channels_last"


@pytest.mark.parametrize("conv", sam3_fast.HEAD_CONVS)
def test_fast_mode_gives_transformers_numbers_and_reproducible_mode_its_bits(model, monkeypatch, conv):
    """Two photos (the image's shared levels are its own), every output of the image encoder and the grounding,
    either head: within float rounding in fast mode; bit for bit in reproducible mode, where only the layouts that
    are the same sums in the same order run."""
    monkeypatch.setattr(model, "head_conv", conv)
    rng = np.random.default_rng(0)
    photos = [rng.integers(0, 256, (90, 120, 3), dtype=np.uint8) for _ in range(2)]
    plain = _transformers_own(model)
    ref, fast = _outputs(plain, photos), _outputs(model, photos)
    assert (ref[-1] - _outputs(plain, photos[:1])[-1]).abs().max() > 1e-3  # the two photos' heads differ
    for a, b in zip(ref, fast):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-4 * max(1.0, float(a.abs().max())))
    monkeypatch.setenv("VPLTOOL_REPRODUCIBLE", "1")
    for a, b in zip(_outputs(plain, photos), _outputs(model, photos)):
        assert torch.equal(a, b)


def test_the_upsampled_convolution_is_the_convolution_of_the_upsampled_map():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 5, 3, padding=1)
    x, plus = torch.randn(2, 6, 7, 9), torch.randn(1, 5, 14, 18)
    with torch.no_grad():
        ref = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), conv.weight, padding=1) + plus
        ours = sam3_fast.upsampled_conv(x, sam3_fast.phase_kernels(conv.weight), plus)
    assert ours.shape == (2, 5, 14, 18)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_the_projection_applied_to_the_queries_is_the_projected_map_read_by_them(layout):
    torch.manual_seed(0)
    projection = torch.nn.Conv2d(16, 16, 1)
    queries, pixels = torch.randn(2, 7, 16), torch.randn(2, 16, 5, 6).contiguous(memory_format=layout)
    with torch.no_grad():
        ref = torch.einsum("bqc,bchw->bqhw", queries, projection(pixels))
        ours = sam3_fast.projected_masks(queries, projection, pixels)
    assert ours.shape == (2, 7, 5, 6)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    assert not torch.allclose(ours, torch.einsum("bqc,bchw->bqhw", queries, pixels), atol=1e-2)  # the weights read


def _metas_pixel_decoder(decoder, levels: list[torch.Tensor], prev: torch.Tensor) -> torch.Tensor:
    """Meta's ``PixelDecoder.forward`` (sam3/model/maskformer_segmentation.py) on ``decoder``'s layers: the level
    first in each sum, so the sum takes the level's layout."""
    for i, level in enumerate(reversed(levels)):
        prev = level + F.interpolate(prev, size=level.shape[-2:], mode="nearest")
        prev = F.relu(decoder.norms[i](decoder.conv_layers[i](prev)))
    return prev


def test_the_channels_last_head_convolves_as_metas_does_one_prompt_at_a_time():
    """Meta's FPN levels are channels-last (its neck's layout), so each ``level + upsample(prev)`` its pixel decoder
    convolves is channels-last, a prompt alone or a bucket; transformers' for one prompt is contiguous (the encoder
    tokens' map of a batch of one gets the batch stride of a channel, so the upsampling writes it contiguous) and
    the convolution library picks its kernel by layout. "channels_last" hands each 3 x 3 convolution a channels-last
    sum, one prompt at a time, and gives the bits of Meta's decoder on channels-last levels (every stage where the
    image's levels are not shared; the finest where they are)."""
    torch.manual_seed(0)
    cfg = hf.Sam3MaskDecoderConfig(hidden_size=32, num_upsampling_stages=2)
    decoder = hf.Sam3PixelDecoder(cfg).eval()
    sam3_fast.speed_up(decoder)
    levels = [torch.randn(1, 32, 36, 36), torch.randn(1, 32, 18, 18)]
    metas_levels = [t.contiguous(memory_format=torch.channels_last) for t in levels]
    seen = []
    for conv in decoder.conv_layers:
        conv.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0].is_contiguous(
            memory_format=torch.channels_last)) or None)
    with torch.no_grad():
        for b in range(2):
            tokens = torch.randn(1, 81, 32)  # the encoder's states, as the head reshapes them
            prev = tokens.transpose(1, 2).reshape(1, 32, 9, 9)
            seen.clear()
            hf.Sam3PixelDecoder.forward(decoder, [*levels, prev])
            want = _metas_pixel_decoder(decoder, metas_levels, prev)
            decoder.conv = "channels_last"
            got = decoder([*levels, prev])
            del decoder.conv
            # transformers' own (one prompt: contiguous), Meta's, vpltool's: each stage's convolution's input
            assert seen == [False, False, True, True, True, True]
            assert torch.equal(got, want)
        # the image's levels shared: the coarser stage by phases (the image's level convolved once, kept), the
        # finest on its channels-last sum
        seen.clear()
        lateral = {}
        decoder.conv, decoder.levels, decoder.lateral = "channels_last", [*levels, prev], lateral
        decoder([*levels, prev])
        assert seen == [False, True] and list(lateral) == [0]
        decoder([*levels, prev])
        assert seen == [False, True, True]


def test_the_complex_rotation_is_transformers_rotary_encoding():
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 10, 8)
    angles = (torch.rand(10, 4) * 6).repeat_interleave(2, dim=-1)[None]  # each pair's angle on both its channels
    cos, sin = angles.cos(), angles.sin()
    ref = hf.apply_rotary_pos_emb_2d(q, k, cos, sin)
    turn = sam3_fast.turn_of(cos, sin)
    for a, b in zip(ref, (sam3_fast.rotate_complex(q.transpose(1, 2).transpose(1, 2), turn),
                          sam3_fast.rotate_complex(k, turn))):
        assert b.is_contiguous()
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)


def test_the_heads_first_attention_is_transformers_attention(model):
    """Self-attention (one tensor as query and key: the fused q/k product), cross-attention with a boolean and an
    additive mask: transformers' numbers within float rounding; the fused weights follow a change of the weights."""
    torch.manual_seed(0)
    ours = copy.deepcopy(model.model.detr_encoder.layers[0].self_attn)
    assert isinstance(ours, sam3_fast.HeadsFirstAttention)
    plain = copy.deepcopy(ours)
    plain.__class__ = hf.Sam3Attention
    x, text = torch.randn(2, 12, ours.hidden_size), torch.randn(2, 5, ours.hidden_size)
    keep = torch.rand(2, 1, 12, 5) > 0.3
    keep[..., 0] = True  # every query attends to something
    bias = torch.randn(2, ours.num_attention_heads, 12, 5)
    for args, mask in [((x, x, x), None), ((x, text, text), keep), ((x, text, text), bias)]:
        out, weights = ours(*args, attention_mask=mask)
        assert weights is None and out.is_contiguous()
        torch.testing.assert_close(out, plain(*args, attention_mask=mask)[0], rtol=0, atol=1e-5)
    with torch.no_grad():
        for m in (ours, plain):
            m.k_proj.weight.mul_(-2.0)
    torch.testing.assert_close(ours(x, x, x)[0], plain(x, x, x)[0], rtol=0, atol=1e-5)
    assert ours._qk[1].data_ptr() != ours.q_proj.weight.data_ptr()  # a copy, kept beside: the state dict unchanged
    assert set(ours.state_dict()) == set(plain.state_dict())


def test_the_layouts_leave_training_to_transformers_own_forward(model):
    """With gradients on (training), each layer runs transformers' forward: its in-place writes have no backward."""
    torch.manual_seed(0)
    decoder = copy.deepcopy(model.model.detr_decoder).requires_grad_(True)
    boxes = torch.rand(1, 4, 4, requires_grad=True)
    bias = decoder._get_rpb_matrix(boxes, (torch.tensor(3), torch.tensor(5)))
    bias.sum().backward()
    assert boxes.grad is not None and decoder.box_rpb_embed_x.layer1.weight.grad is not None
    with torch.no_grad():
        torch.testing.assert_close(decoder._get_rpb_matrix(boxes, (torch.tensor(3), torch.tensor(5))), bias,
                                   rtol=0, atol=0)


def test_the_decoder_writes_its_bias_below_the_presence_row_bit_for_bit(model, monkeypatch):
    """The DETR decoder's loop with each layer's bias made below the presence token's zero row: transformers'
    decoder's outputs bit for bit, in fast mode, with no ``F.pad`` of the bias (its only 4-d pad there)."""
    from vpltool.models.backbones.sam3_detr import rpb_mask

    ours = model.model.detr_decoder
    plain = copy.deepcopy(ours)
    plain.__class__ = hf.Sam3DetrDecoder
    g = torch.Generator().manual_seed(0)
    b, h, w, c = 2, 3, 5, ours.hidden_size
    args = (torch.randn(b, h * w, c, generator=g), torch.randn(b, 6, c, generator=g),
            torch.randn(b, h * w, c, generator=g))
    valid = torch.ones(b, 6, dtype=torch.bool)
    valid[1, 4:] = False
    grid = torch.tensor([[h, w]])
    pads, real = [], F.pad
    monkeypatch.setattr(F, "pad", lambda x, *a, **k: pads.append(x.dim()) or real(x, *a, **k))
    with torch.no_grad():
        want = plain(*args, text_mask=valid, spatial_shapes=grid)
        assert pads.count(4) == len(ours.layers)  # transformers pads each layer's bias
        pads.clear()
        got = ours(*args, text_mask=valid, spatial_shapes=grid)
        boxes = torch.rand(b, 7, 4, generator=g)
        mask = rpb_mask(ours, boxes, (torch.tensor(h), torch.tensor(w)), presence_row=True)
        assert torch.equal(mask, real(plain._get_rpb_matrix(boxes, (torch.tensor(h), torch.tensor(w))), (0, 0, 1, 0)))
    assert 4 not in pads
    for name in ("intermediate_hidden_states", "reference_boxes", "presence_logits"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name


def test_the_feed_forward_a_few_rows_at_a_time_is_transformers_feed_forward(model, monkeypatch):
    """More rows than twice FFN_ROWS (a ragged last block): transformers' numbers within float rounding, the
    blocks' rows in place; reproducible mode: transformers' bits."""
    ours = copy.deepcopy(model.model.detr_encoder.layers[0].mlp)
    assert isinstance(ours, sam3_fast.FusedReluMLP)
    plain = copy.deepcopy(ours)
    plain.__class__ = hf.Sam3MLP
    monkeypatch.setattr(sam3_fast, "FFN_ROWS", 8)
    x = torch.randn(2, 13, ours.fc1.in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = plain(x), ours(x)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        torch.testing.assert_close(ours(x[:, :5]), want[:, :5], rtol=0, atol=1e-5)  # 10 rows: one call
        monkeypatch.setenv("VPLTOOL_REPRODUCIBLE", "1")
        assert torch.equal(ours(x), plain(x))
