"""The ``talk2dino`` family (vpltool.models.text.talk2dino): its projection, head selection and loss against a direct
restatement, its cross-rank loss against the one-process one, its checkpoints (vpltool's and the reference's release
layout), its zero-shot pieces; on tiny tensors (the whole model against the reference: parity/talk2dino_parity.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vpltool.errors import VplError
from vpltool.models.text.family import text_family
from vpltool.models.text.talk2dino import (
    Projection,
    Talk2DINO,
    Talk2DINOConfig,
    cls_attention_logits,
    head_embeddings,
    load_checkpoint,
    save_checkpoint,
    select_heads,
    slide_windows,
    talk2dino_loss,
)
from vpltool.models.text.talk2dino.zeroshot import clean_background


def _batch(b=4, heads=3, d=8, text=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, text, generator=g), torch.randn(b, heads, d, generator=g)


def test_projection_is_linear_tanh_linear_and_the_loss_is_head_selected_symmetric_infonce_over_b2():
    torch.manual_seed(0)
    proj = Projection(6, 8, 1)
    feats, heads = _batch()
    text = proj(feats)
    w0, b0 = proj.linear_layer.weight, proj.linear_layer.bias
    w1, b1 = proj.hidden_layers[0].weight, proj.hidden_layers[0].bias
    assert torch.allclose(text, torch.tanh(feats @ w0.T + b0) @ w1.T + b1, atol=1e-6)
    out = talk2dino_loss(text, heads)
    t, v = F.normalize(text, dim=-1), F.normalize(heads, dim=-1)
    picked = torch.stack([v[i, int((v[i] @ t[i]).argmax())] for i in range(len(t))])  # the closest head
    assert out["heads"].tolist() == [int((v[i] @ t[i]).argmax()) for i in range(len(t))]
    s = (t @ picked.T) / 0.07
    labels = torch.arange(len(t))
    expected = (F.cross_entropy(s, labels) + F.cross_entropy(s.T, labels)) / 2 / len(t) ** 2
    assert math.isclose(out["loss"].item(), float(expected.detach()), rel_tol=1e-5)
    out["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in proj.parameters())


def test_the_loss_gradient_is_the_finite_difference_one_in_float64():
    torch.manual_seed(1)
    proj = Projection(6, 8, 1).double()
    feats, heads = (x.double() for x in _batch(seed=1))
    assert torch.autograd.gradcheck(lambda w: talk2dino_loss(
        torch.tanh(feats @ w.T + proj.linear_layer.bias) @ proj.hidden_layers[0].weight.T +
        proj.hidden_layers[0].bias, heads)["loss"], (proj.linear_layer.weight.detach().clone().requires_grad_(),),
        eps=1e-6, atol=1e-8)


def test_two_ranks_losses_average_to_the_one_process_loss_and_gradient():
    """Each rank's rows (and columns) against every rank's, the global B² kept: the mean of the ranks' losses (DDP
    averages their gradients; the all-gather's backward sums every rank's into each row) is the one-process loss,
    and its gradient the one-process gradient. Both ranks live in one graph here, as their sum is."""
    feats, heads = _batch(b=6, seed=2)
    torch.manual_seed(2)
    proj = Projection(6, 8, 1)
    one = talk2dino_loss(proj(feats), heads)["loss"]
    one.backward()
    want = [p.grad.clone() for p in proj.parameters()]
    proj.zero_grad()
    part = [slice(0, 3), slice(3, 6)]
    live = []
    for r in (0, 1):
        t = F.normalize(proj(feats[part[r]]), dim=-1)
        live.append((t, select_heads(t, F.normalize(heads[part[r]], dim=-1))[0]))

    def gather_of(rank):
        calls = iter((0, 1))  # the loss gathers the texts, then the selected heads

        def gather(x):
            i = next(calls)
            return torch.cat([x if r == rank else live[r][i] for r in (0, 1)])

        return gather

    total = sum(talk2dino_loss(proj(feats[part[r]]), heads[part[r]], gather_of(r), r)["loss"] for r in (0, 1)) / 2
    total.backward()
    assert math.isclose(total.item(), one.item(), rel_tol=1e-5)
    assert all(torch.allclose(p.grad, w, atol=1e-7, rtol=1e-4) for p, w in zip(proj.parameters(), want))


def test_head_features_are_the_softmaxed_cls_logits_mean_of_patch_tokens():
    g = torch.Generator().manual_seed(3)
    b, heads, prefix, patches, width = 2, 2, 5, 9, 128
    qkv = torch.randn(b, prefix + patches, 3 * width, generator=g)
    logits = cls_attention_logits(qkv, heads, prefix)
    q = qkv[..., :width].reshape(b, -1, heads, 64)
    k = qkv[..., width:2 * width].reshape(b, -1, heads, 64)
    assert torch.allclose(logits[1, 0], 0.125 * k[1, prefix:, 0] @ q[1, 0, 0], atol=1e-5)  # scale 0.125, CLS row
    tokens = torch.randn(b, patches, 7, generator=g)
    out = head_embeddings(tokens, logits)
    assert torch.allclose(out[0, 1], (logits[0, 1].softmax(0)[:, None] * tokens[0]).sum(0) / patches, atol=1e-6)


def test_checkpoint_round_trip_and_the_reference_release_layout(tmp_path):
    cfg = Talk2DINOConfig(dino_model="test_vit", dino_weights="none", text_dim=6, dino_dim=8)
    model = Talk2DINO(cfg)
    path = save_checkpoint(tmp_path / "t.safetensors", model, {"iterations": 3})
    got, state = load_checkpoint(path)
    assert got == cfg and all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert text_family("talk2dino").check_checkpoint(path) == cfg
    release = {"linear_layer.weight": torch.zeros(768, 512), "linear_layer.bias": torch.zeros(768),
               "linear_layer2.weight": torch.ones(768, 768), "linear_layer2.bias": torch.zeros(768)}
    torch.save(release, tmp_path / "vitb_mlp_infonce.pth")
    cfg2, state2 = load_checkpoint(tmp_path / "vitb_mlp_infonce.pth")
    assert (cfg2.text_dim, cfg2.dino_dim, cfg2.hidden_layers) == (512, 768, 1)
    assert cfg2.dino_model.startswith("vit_base_patch14_reg4_dinov2") and "proj.hidden_layers.0.weight" in state2
    torch.save({"foo": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(VplError, match="not a Talk2DINO projection"):
        load_checkpoint(tmp_path / "other.pth")
    with pytest.raises(VplError, match="no such Talk2DINO checkpoint"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_slide_windows_and_background_cleaning_keep_the_masks_range():
    assert slide_windows(448, 600, 448, 224) == [(0, 448, 0, 448), (0, 448, 152, 600)]
    assert slide_windows(300, 200, 448, 224) == [(0, 300, 0, 200)]  # smaller than a crop: one window, unpadded
    g = torch.Generator().manual_seed(4)
    mask = torch.rand(1, 3, 4, 4, generator=g)
    out = clean_background(mask, torch.randn(1, 8, 4, 4, generator=g), torch.randn(1, 2, 16, generator=g),
                           F.normalize(torch.randn(3, 8, generator=g), dim=-1))
    assert out.shape == mask.shape and out.min() >= mask.min() - 1e-6 and out.max() <= mask.max() + 1e-6
    assert not torch.allclose(out, mask)


TOY_DINO = Path(__file__).resolve().parents[1] / "vpltool" / "assets" / "toy-dino" / "model.safetensors"


@pytest.fixture(scope="module")
def toy_checkpoint(tmp_path_factory) -> Path:
    """A Talk2DINO over the toy DINO and the toy CLIP (its projection seeded), as a checkpoint file."""
    from vpltool.models.text.family import text_family

    fam = text_family("talk2dino")
    cfg = fam.model_config(fam.TrainConfig.recipe_config("demo", dino_weights=str(TOY_DINO), crop_size=64))
    assert (cfg.text_dim, cfg.dino_dim, cfg.resize_dim, cfg.dino_pos_resize) == (64, 64, 64, "bicubic-antialias")
    return fam.save_checkpoint(tmp_path_factory.mktemp("t2d") / "talk2dino.safetensors", fam.build_model(cfg, 0))


def test_segment_model_talk2dino_file_writes_masks_by_the_references_rule(toy_checkpoint, tmp_path):
    from typer.testing import CliRunner

    from vpltool import io
    from vpltool.cli import app
    from vpltool.demo.make_world import write_dataset

    world = write_dataset(tmp_path / "w", n_train=1, n_val=2, seed=3)
    out = tmp_path / "seg"
    r = CliRunner().invoke(app, ["segment", str(world), "--split", "val", "--model", f"talk2dino:{toy_checkpoint}",
                                 "--short-side", "64", "--slide-crop", "64", "--slide-stride", "32", "-o", str(out),
                                 "--device", "cpu"])
    assert r.exit_code == 0, r.output
    params = io.read_record(io.stage_record_path(out))["params"]
    assert params["method"] == "talk2dino" and params["bg_thresh"] == 0.55 and len(params["template_list"]) == 7
    assert len(sorted(out.glob("*.png"))) == 2
    r = CliRunner().invoke(app, ["segment", str(world), "--split", "val", "--model", f"talk2dino:{world / 'nope'}",
                                 "-o", str(tmp_path / "seg2"), "--device", "cpu"])
    assert r.exit_code == 2 and "no such Talk2DINO checkpoint" in r.output, r.output


def _other_bytes(path: Path) -> None:
    """Other weights saved under the same name (one tensor moved)."""
    from safetensors.torch import load_file, save_file

    state = load_file(path)
    key = sorted(state)[0]
    state[key] = state[key] + 0.5
    save_file(state, str(path))


def test_a_checkpoint_over_other_backbone_bytes_under_the_same_names_is_refused(tmp_path):
    import shutil

    from vpltool import io
    from vpltool.models.backbones.loading import registered_folder

    fam = text_family("talk2dino")
    dino, clip = tmp_path / "dino.safetensors", tmp_path / "clip"
    shutil.copy(TOY_DINO, dino)
    shutil.copytree(registered_folder("vpltool-toy"), clip)
    train = fam.TrainConfig.recipe_config("demo", dino_weights=str(dino), clip_model=f"local-dir:{clip}",
                                          crop_size=64)
    cfg = fam.model_config(train)
    assert cfg.dino_digest == io.sha256_file(dino) and cfg.clip_digest.startswith("sha256:")
    path = fam.save_checkpoint(tmp_path / "t.safetensors", fam.build_model(cfg, 0))
    assert fam.check_checkpoint(path) == cfg and fam.model_config(train, cfg) == cfg  # the same bytes: read, --init
    _other_bytes(dino)
    for read in (fam.check_checkpoint, fam.load_model):  # segment, cam, benchmark, the Python API
        with pytest.raises(VplError, match=r"t.safetensors: a Talk2DINO projection learnt over the DINO weights "
                                           r".*dino.safetensors, whose bytes changed since \(sha256 "):
            read(path)
    with pytest.raises(VplError, match="--init: a Talk2DINO projection learnt over the DINO weights"):
        fam.model_config(train, cfg)
    shutil.copy(TOY_DINO, dino)  # restored: read again
    assert fam.check_checkpoint(path) == cfg
    _other_bytes(clip / "open_clip_model.safetensors")
    with pytest.raises(VplError, match=r"learnt over the CLIP local-dir:.*clip, whose bytes changed since"):
        fam.check_checkpoint(path)
    # a release's backbones are named by tags (published weights): nothing to compare
    assert load_checkpoint(path)[0].dino_digest and Talk2DINOConfig().clip_digest is None
