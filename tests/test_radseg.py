"""RADSeg (``--dense radseg``): C-RADIOv3 from NVlabs/RADIO's hub checkpoint and SigLIP 2's text tower from a local
folder (tiny seeded stand-ins of both: ``parity/radseg_files.py``), its kernels on hand-checked cases, and the method
end to end on a real photo (random weights: the mask is meaningless, the run is real). Its exactness against the
reference's own code is parity/radseg_parity.py's."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "parity"), str(ROOT / "tests")]

import tiny_towers  # noqa: E402  registers the tiny C-RADIOv3 (vpl_test_radio_v3)

pytest.importorskip("transformers")

from vpltool.config import SegmentConfig  # noqa: E402
from vpltool.errors import VplError  # noqa: E402

CLASSES = ["person", "grass", "sky"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import radseg_files as rf

    work = tmp_path_factory.mktemp("radseg")
    ckpt, text = rf.tiny_files(work, tiny_towers.RADIO, CLASSES)
    return {"ckpt": ckpt, "text": text, "work": work}


def _cfg(files, **kw) -> SegmentConfig:
    base = {"proxy_model": tiny_towers.RADIO, "proxy_weights": str(files["ckpt"]), "language_model": str(files["text"])}
    return SegmentConfig.of("radseg", **{**base, **kw})


def test_radio_checkpoint_reads_as_timm_s_own_conversion(files):
    import timm
    from timm.models.naflexvit import checkpoint_filter_fn

    from vpltool.models.backbones.radio import backbone_state, read_checkpoint

    chk = read_checkpoint(files["ckpt"])
    ours = backbone_state(chk)
    model = timm.create_model(tiny_towers.RADIO, num_classes=0)
    hf = {f"radio_model.model.{k[len('base_model.'):]}": v for k, v in chk.state.items() if k.startswith("base_")}
    theirs = checkpoint_filter_fn(hf, model)
    assert set(ours) == set(theirs) == set(model.state_dict())
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    shapes = backbone_state(read_checkpoint(files["ckpt"], shapes_only=True))
    assert shapes == {k: tuple(v.shape) for k, v in ours.items()}


def test_the_dino_family_loads_radio_s_checkpoint(files):
    from vpltool.models.backbones.dino import DinoSpec, load_dino

    bb = load_dino(DinoSpec(tiny_towers.RADIO, str(files["ckpt"])), "cpu")
    assert float(bb.model.embeds.proj.bias.abs().max()) == 0.0  # RADIO's patch projection has no bias
    x = torch.randn(1, 3, 64, 48, generator=torch.Generator().manual_seed(0))
    prefix, patches, grid = bb.summary_and_patches(x)
    assert prefix.shape[1] == 8 and patches.shape[1] == 12 and grid == (4, 3)


def test_stride_input_follows_the_reference_s_rule():
    from vpltool.models.dense.radseg import stride_input

    def size(h, w, stride=112, crop=336):
        return tuple(stride_input(torch.zeros(1, 3, h, w), stride, crop).shape[-2:])

    assert size(336, 448) == (336, 448)  # both sides multiples of the stride: unchanged
    assert size(300, 451) == (448, 560)  # 451 -> 560; 300 * 560 / 451 = 372 -> 448
    assert size(224, 300, 224, 336) == (448, 448)  # 300 -> 448; 224 * 448 / 300 = 334 -> 448
    assert size(112, 200) == (336, 336)  # every side at least the window


def test_prompt_denoising_drops_a_query_weak_everywhere_and_keeps_the_reference_s_ties():
    from vpltool.models.dense.radseg import denoised_labels

    probs = torch.tensor([[[0.6, 0.2]], [[0.3, 0.4]], [[0.1, 0.4]]])  # [Q=3, 1, 2]
    out, labels = denoised_labels(probs, torch.tensor([1, 2, 0]), 3, 0.5, 0.0)
    assert labels.tolist() == [[1, 1]]  # queries 2 and 3 never reach 0.5: dropped; pixel 2 ties at 0 -> query 1
    assert float(out[2].abs().max()) == 0.0 and float(out[1, 0, 0]) == pytest.approx(0.6)
    _, kept = denoised_labels(probs, torch.tensor([1, 2, 0]), 3, 0.0, 0.0)
    assert kept.tolist() == [[1, 2]]


def test_query_probabilities_are_laid_out_query_by_query_outside_reproducible_mode(monkeypatch):
    """The softmax over the queries, ``[Q, h, w]``: contiguous for the resize outside reproducible mode (the
    transposed view took torch's channels-last kernel and a copy back), the view itself in it; the same values."""
    from types import SimpleNamespace

    from vpltool.models.dense.radseg import query_probabilities

    gen = torch.Generator().manual_seed(9)
    bb, feats, text = SimpleNamespace(head=torch.nn.Identity()), torch.randn(8, 3, 4, generator=gen), torch.randn(
        5, 8, generator=gen)
    fast = query_probabilities(bb, feats, text, 100.0)
    monkeypatch.setenv("VPLTOOL_REPRODUCIBLE", "1")
    kept = query_probabilities(bb, feats, text, 100.0)
    assert fast.shape == kept.shape == (5, 3, 4) and fast.is_contiguous() and not kept.is_contiguous()
    assert torch.equal(fast, kept) and torch.allclose(fast.sum(0), torch.ones(3, 4))


def test_self_correlations_keep_shapes_and_mix_only_positively_correlated_tokens():
    from vpltool.models.dense.radseg import scga

    f = torch.tensor([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.0]])
    out = scga(f, 10.0)
    assert out.shape == f.shape
    assert torch.allclose(out[2], f[2])  # its only non-negative centred cosine is its own
    assert float(out[0, 0]) > 0.9 and float(out[0, 0]) < 1.0


def test_the_recursive_attention_a_window_at_a_time_is_the_batched_one_bit_for_bit():
    """scra's second step runs one window's [h, N, N] scores at a time, the softmax in place: the same bits as all
    windows' scores at once (the reference's batched form, restated here)."""
    import torch.nn.functional as F
    from timm.models.vision_transformer import Attention

    from vpltool.models.dense.radseg import scra

    torch.manual_seed(0)
    attn = Attention(48, num_heads=4, qkv_bias=True).eval()
    x = torch.randn(3, 20, 48)
    with torch.no_grad():
        b, n, c = x.shape
        q, k, v = attn.qkv(x).reshape(b, n, 3, 4, 12).permute(2, 0, 3, 1, 4).unbind(0)
        o = attn.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))
        unit = F.normalize(o.reshape(b, n, 4, 12).transpose(1, 2), dim=-1).flatten(0, 1)
        sim = torch.baddbmm(unit.new_empty(()), unit, unit.transpose(-2, -1), beta=0.0, alpha=10.0)
        sim = sim.masked_fill_(sim < 0, float("-inf")).softmax(-1).unflatten(0, (b, 4))
        batched = attn.proj((sim @ v).transpose(1, 2).reshape(b, n, c))
        ours = scra(attn, x, 10.0)
    assert ours.shape == x.shape and torch.equal(ours, batched)
    assert not torch.equal(ours, scra(attn, x, 1.0))  # the scale is used


def test_the_windows_go_through_the_backbone_two_at_a_time_with_the_same_features(files, monkeypatch):
    """window_features runs a photo's windows WINDOWS_A_FORWARD at a time outside reproducible mode (every forward the
    same shapes, whatever the photo): the summed features are those of all windows in one forward, bit for bit;
    reproducible mode keeps them in one forward."""
    from vpltool.models.dense import radseg
    from vpltool.models.dense.method import resolve_method

    bb = resolve_method(_cfg(files)).load(None, "cpu")
    image = torch.randn(1, 3, 64, 80, generator=torch.Generator().manual_seed(1))
    seen = []
    real = bb.patch_tokens
    monkeypatch.setattr(bb, "patch_tokens", lambda w: seen.append(len(w)) or real(w))
    monkeypatch.delenv("VPLTOOL_REPRODUCIBLE", raising=False)
    with torch.no_grad():
        grouped = radseg.window_features(bb, image, 32, 16)  # 3 x 4 windows
        monkeypatch.setattr(radseg, "WINDOWS_A_FORWARD", 100)
        whole = radseg.window_features(bb, image, 32, 16)
        monkeypatch.setattr(radseg, "WINDOWS_A_FORWARD", 2)
        monkeypatch.setenv("VPLTOOL_REPRODUCIBLE", "1")
        radseg.window_features(bb, image, 32, 16)
    assert seen == [2] * 6 + [12, 12]
    assert grouped.shape == (bb.model.embed_dim, 4, 5) and torch.equal(grouped, whole)


def test_the_windows_summed_token_major_and_normalised_once_are_the_reference_s_order_s_features(files, monkeypatch):
    """Outside reproducible mode a photo's windows are summed token by token and RADIO's feature normaliser (affine)
    runs once on the grid's mean: the features of the reference's order (each window normalised, summed channel
    first: reproducible mode's), within float rounding, laid out so that ``reshape(C, -1).T`` is contiguous."""
    from vpltool.models.dense import radseg
    from vpltool.models.dense.method import resolve_method

    monkeypatch.delenv("VPLTOOL_REPRODUCIBLE", raising=False)
    bb = resolve_method(_cfg(files)).load(None, "cpu")
    assert bb.normalizer is not None and float((bb.normalizer[0]).abs().max()) > 0  # a normaliser that moves rows
    image = torch.randn(1, 3, 64, 80, generator=torch.Generator().manual_seed(2))
    boxes = radseg.slide_windows(64, 80, 32, 16)
    with torch.no_grad():
        fast = radseg.window_features(bb, image, 32, 16)
        kept = radseg._summed_channels(bb, image, boxes, (4, 5))
    c = bb.model.embed_dim
    assert fast.shape == kept.shape == (c, 4, 5) and fast.reshape(c, -1).T.is_contiguous()
    assert torch.allclose(fast, kept, rtol=1e-5, atol=1e-5)


def test_dropping_negatives_in_one_pass_is_the_mask_bit_for_bit():
    """``drop_negatives_`` (``threshold_`` at the largest float32 below 0) is ``masked_fill_(x < 0, -inf)`` on every
    kind of float32: subnormals either side of 0, -0.0, infinities, NaN."""
    from vpltool.models.dense.radseg import drop_negatives_

    tiny = 2.0 ** -149
    x = torch.tensor([-tiny, tiny, -0.0, 0.0, -1.0, 1.0, float("-inf"), float("inf"), float("nan"), -3 * tiny])
    x = torch.cat([x, torch.randn(1000, generator=torch.Generator().manual_seed(3))])
    want = x.clone().masked_fill_(x < 0, float("-inf"))
    got = drop_negatives_(x.clone())
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.nan_to_num(), want.nan_to_num())
    assert torch.equal(torch.signbit(got[:4]), torch.tensor([True, False, True, False]))  # -0.0 kept as -0.0
    assert int(got.isneginf().sum()) == int((x < 0).sum()) > 400


def test_radseg_segments_a_real_photo_end_to_end(files, tmp_path):
    from skimage import data

    import vpltool

    seg = vpltool.segmenter("radseg", proxy_model=tiny_towers.RADIO, proxy_weights=str(files["ckpt"]),
                            language_model=str(files["text"]))
    photo = data.astronaut()[::2, ::2]  # 256 x 256: a real photo, random weights
    out = seg(photo, CLASSES)
    assert out.labels.shape == photo.shape[:2] and out.scores.shape == (4, *photo.shape[:2])
    assert set(np.unique(out.labels)) <= {0, 1, 2, 3}
    assert np.allclose(out.scores[1:].max(0)[out.labels > 0], out.scores.max(0)[out.labels > 0])


def test_radseg_through_segment_writes_masks(files, tmp_path):
    from PIL import Image
    from skimage import data
    from typer.testing import CliRunner

    from vpltool.cli import app

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(data.chelsea()[::3, ::3]).save(photos / "cat.jpg")
    out = tmp_path / "masks"
    r = CliRunner().invoke(app, ["segment", str(photos), "-o", str(out), "--dense", "radseg", "--classes",
                                 "cat,grass", "--proxy-model", tiny_towers.RADIO, "--proxy-weights",
                                 str(files["ckpt"]), "--language-model", str(files["text"]), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    mask = np.asarray(Image.open(out / "cat.png"))
    assert mask.shape == data.chelsea()[::3, ::3].shape[:2]


@pytest.mark.parametrize("change, words", [
    ({"language_model": None}, "--language-model"),
    ({"proxy_weights": "hub"}, "--proxy-weights hub: give NVlabs/RADIO.s checkpoint"),  # offline or not
    ({"language_model": "/no/such/folder"}, "not a folder"),
])
def test_radseg_s_files_are_refused_in_one_line_before_any_model(files, change, words):
    from vpltool.models.dense.method import resolve_method

    cfg = _cfg(files, **change)
    with pytest.raises(VplError, match=words) as e:
        resolve_method(cfg)
    assert "\n" not in str(e.value)


def test_a_text_tower_of_another_width_is_refused(files, tmp_path):
    import radseg_files as rf

    from vpltool.models.dense.method import resolve_method

    other = rf.write_text_folder(tmp_path / "text64", {**rf.TINY_TEXT, "projection_size": 64}, rf.prompt_words(CLASSES))
    with pytest.raises(VplError, match="48-d rows.*64-d"):  # from the folder's config.json: before any model
        resolve_method(_cfg(files, language_model=str(other)))


def test_radseg_s_models_run_their_linear_layers_through_onednn(files):
    """fp32 on the CPU, the backbone's, the adaptor head's and the text tower's linear layers are oneDNN's (about
    half MKL's time on an AMD CPU: bench/bench_radseg.py); their outputs are tests/test_onednn.py's."""
    from torch import nn

    from vpltool.models.backbones import mkl_packed, onednn
    from vpltool.models.backbones.mkl_packed import block_linears as packed_layers
    from vpltool.models.dense.method import resolve_method
    from vpltool.runtime.numerics import reproducible_asked

    if not onednn.available():
        pytest.skip("this torch has no oneDNN linear op")
    bb = resolve_method(_cfg(files)).load(None, "cpu")
    kinds = [type(m) for part in (bb.model, bb.head, bb.text.model) for m in part.modules() if isinstance(m, nn.Linear)]
    assert len(kinds) > 10 and all(issubclass(k, onednn.OneDnnLinear) for k in kinds)
    # the blocks' four linear layers take MKL's packed product where the route takes MKL (mkl_packed.PackedLinear)
    packed = {id(m) for m in bb.model.modules() if type(m) is mkl_packed.PackedLinear}
    want = mkl_packed.HAS_MKL_PACK and not reproducible_asked()
    assert packed == ({id(m) for m in packed_layers(bb.model)} if want else set())
    assert len(packed_layers(bb.model)) == 4 * len(bb.model.blocks)
    assert {id(m) for b in bb.model.blocks for m in (b.mlp.fc1, b.mlp.fc2)} <= {id(m) for m in packed_layers(bb.model)}
    # every block adds its residuals in place outside reproducible mode (fused_blocks.FusedBlock; timm's forward in it)
    from vpltool.models.backbones.fused_blocks import FusedBlock

    assert all(isinstance(b, FusedBlock) for b in bb.model.blocks)


def test_the_packed_layers_are_each_block_s_four_linear_layers_where_it_has_them():
    from types import SimpleNamespace

    from torch import nn

    from vpltool.models.backbones.mkl_packed import block_linears as packed_layers
    from vpltool.models.dense.radseg import ScraAttention

    def attn():
        return SimpleNamespace(qkv=nn.Linear(4, 12), proj=nn.Linear(4, 4))

    plain = SimpleNamespace(attn=attn(), mlp=SimpleNamespace(fc1=nn.Linear(4, 16), fc2=nn.Linear(16, 4)))
    gated = SimpleNamespace(attn=attn(), mlp=SimpleNamespace(fc1_g=nn.Linear(4, 8), fc2=nn.Linear(8, 4)))
    last = SimpleNamespace(attn=ScraAttention(attn(), 10.0), mlp=plain.mlp)
    got = packed_layers(SimpleNamespace(blocks=[plain, gated, last]))
    assert [id(m) for m in got] == [id(plain.attn.qkv), id(plain.attn.proj), id(plain.mlp.fc1), id(plain.mlp.fc2),
                                    id(gated.attn.qkv), id(gated.attn.proj), id(gated.mlp.fc2),
                                    id(last.attn.inner.qkv), id(last.attn.inner.proj), id(plain.mlp.fc1),
                                    id(plain.mlp.fc2)]


def test_the_text_tower_s_rows_are_the_same_bits_at_16_prompts_a_batch_and_its_heap_is_given_back(files, monkeypatch):
    """SigLIP 2's text rows at 16 prompts a batch (``SigLIP2Text.encode``'s) are those of 64 a batch bit for bit (16 x
    64 token rows and more take the same MKL kernels), and the heap's free pages are given back after every batch
    (``runtime.heap.give_back_freed_memory``), not only at the end."""
    from vpltool.models.backbones import radio
    from vpltool.runtime import heap

    tower = radio.SigLIP2Text(files["text"])
    words = ["a photo of a {}.", "a {} in the sun.", "the {} at night.", "a small {}.", "a large {}.", "my {}.",
             "a dark {}.", "a bright {}.", "a {} and a {}.", "the {} of the {}.", "a {} or a {}.", "one {}.",
             "two {}.", "a {} far away.", "a {} near the {}.", "a {}, a {} and a {}.", "a blurry {}.", "a {} today.",
             "a {} again.", "a {} with sky.", "an old {}.", "a new {}."]
    prompts = [w.replace("{}", c) for w in words for c in CLASSES][:64]
    calls = []
    real = heap.give_back_freed_memory
    monkeypatch.setattr(heap, "give_back_freed_memory", lambda: calls.append(1) or real())
    rows = tower.encode(prompts)
    assert len(calls) == 4  # 64 prompts, 16 a batch
    assert torch.equal(rows, tower.encode(prompts, batch_size=64))
    assert rows.shape == (64, tower.dim) and rows.dtype == torch.float32


def test_radio_s_mapped_checkpoint_loads_a_block_at_a_time_the_same_tensors_its_pages_handed_back(files, monkeypatch):
    """The dino family's load of RADIO's checkpoint (mapped: ``dino_weights._load_mapped``) gives the model the
    file's tensors exactly, and asks the kernel back the pages of every tensor the file backs, once its values were
    checked and again once copied, a group at a time (not all of them resident beside the model's copy)."""
    from vpltool.io import pages
    from vpltool.models.backbones.dino import DinoSpec, load_dino
    from vpltool.models.backbones.radio import backbone_state, read_checkpoint

    asked = []
    real = pages.page_out
    monkeypatch.setattr(pages, "page_out", lambda address, nbytes: asked.append((address, nbytes)) or
                        real(address, nbytes))
    bb = load_dino(DinoSpec(tiny_towers.RADIO, str(files["ckpt"])), "cpu")
    want = backbone_state(read_checkpoint(files["ckpt"]))
    got = bb.model.state_dict()
    assert set(want) <= set(got) and all(torch.equal(got[k], v) for k, v in want.items())
    if sys.platform.startswith("linux"):
        blocks = [k for k in want if k.startswith("blocks.")]
        assert len(asked) >= 2 * len(blocks)  # each block's tensors: after the check, after their copy
        assert sum(n for _, n in asked) >= 2 * sum(want[k].numel() * 4 for k in blocks) * 0.9


def test_page_out_tensors_asks_back_file_backed_tensors_alone(tmp_path, monkeypatch):
    from vpltool.io import pages

    torch.save({"w": torch.arange(300_000, dtype=torch.float32)}, tmp_path / "w.pt")
    mapped = torch.load(tmp_path / "w.pt", mmap=True, weights_only=True)["w"]
    own = torch.arange(300_000, dtype=torch.float32)
    asked = []
    monkeypatch.setattr(pages, "page_out", lambda address, nbytes: asked.append((address, nbytes)) or True)
    done = pages.page_out_tensors([mapped, own, mapped[:10]])
    if not sys.platform.startswith("linux"):
        assert done == 0 and not asked
        return
    assert asked == [(mapped.data_ptr(), 1_200_000)] and done == 1_200_000
    assert torch.equal(mapped, own)  # the pages read again from the file: the same values


def test_the_text_tower_gives_back_its_file_pages_after_encoding_the_same_rows_again(files, monkeypatch):
    """``SigLIP2Text.encode`` hands back the tower's file-backed pages once its prompts are encoded (the token
    table and the blocks, transformers' mapping of the safetensors file); a second encode reads them again: the
    same rows bit for bit."""
    from vpltool.io import pages
    from vpltool.models.backbones import radio

    tower = radio.SigLIP2Text(files["text"])
    asked = []
    real = pages.page_out
    monkeypatch.setattr(pages, "page_out", lambda address, nbytes: asked.append(address) or real(address, nbytes))
    first = tower.encode([f"a photo of a {c}." for c in CLASSES])
    table = tower.model.get_input_embeddings().weight
    if sys.platform.startswith("linux") and pages.file_backed(table.data_ptr()):
        assert table.data_ptr() in asked
    assert torch.equal(tower.encode([f"a photo of a {c}." for c in CLASSES]), first)
