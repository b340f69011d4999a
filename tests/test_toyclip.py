"""Toy CLIP of the demo world: the shipped checkpoint, its attention window, the trainer and its loss."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from vpltool.demo import toyclip  # noqa: E402
from vpltool.demo import train_toy_clip as trainer  # noqa: E402
from vpltool.demo.config import ToyClipConfig  # noqa: E402
from vpltool.demo.scenes import Placement, SceneConfig, compose, generate_scenes  # noqa: E402
from vpltool.demo.tokenizer import WordTokenizer  # noqa: E402
from vpltool.errors import VplError  # noqa: E402
from vpltool.models import EXTRA_CONFIG, ModelSpec, load_backbone

SHIPPED = Path(toyclip.__file__).resolve().parents[1] / "assets" / "toy-clip"


@pytest.fixture(scope="module")
def shipped():
    return load_backbone(ModelSpec(model=f"local-dir:{SHIPPED}"))


@pytest.fixture(scope="module")
def scene_pixels(shipped) -> torch.Tensor:
    images = np.stack([s.image for s in generate_scenes(2, seed=3)])
    return toyclip.to_pixels(images, shipped.mean, shipped.std)  # [2, 3, 96, 96]


def test_shipped_checkpoint_loads_with_word_tokenizer_and_window(shipped):
    assert isinstance(shipped.tokenizer, WordTokenizer)
    assert (shipped.window_size, shipped.window_blocks) == (3, frozenset({0, 1, 2}))
    assert (shipped.patch_size, shipped.embed_dim, shipped.n_blocks) == (8, 64, 4)
    text = shipped.encode_text(["a photo of a star.", "a photo of a grass."])
    assert text.shape == (2, 64) and torch.allclose(text.norm(dim=1), torch.ones(2), atol=1e-5)
    assert (SHIPPED / "open_clip_model.safetensors").stat().st_size < 10_000_000
    training = json.loads((SHIPPED / EXTRA_CONFIG).read_text())["training"]
    assert training["caption_accuracy"] > 0.3  # a trained model, not a random one


def test_window_blocks_see_only_the_3x3_neighbourhood(shipped, scene_pixels):
    grid = (12, 12)
    x = shipped.embed(scene_pixels)
    _, attn, _ = shipped.block(0, x, grid, need_weights=True)  # [2, 145, 145]
    rows, cols = np.divmod(np.arange(144), 12)
    near = (np.abs(rows[:, None] - rows[None, :]) <= 1) & (np.abs(cols[:, None] - cols[None, :]) <= 1)
    patch_rows = attn[:, 1:]  # [2, 144, 145]
    assert torch.all(patch_rows[:, :, 0] == 0)  # patches do not see the CLS token
    assert torch.all(patch_rows[:, :, 1:][:, torch.from_numpy(~near)] == 0)
    assert torch.all(patch_rows[:, :, 1:][:, torch.from_numpy(near)] > 0)
    _, last, _ = shipped.block(3, x, grid, need_weights=True)  # the last block stays global
    assert torch.all(last[:, 1:, 1:][:, torch.from_numpy(~near)] > 0)


def test_training_path_matches_inference_path(shipped, scene_pixels):
    # at the native grid the positional embedding is the parameter itself: gradients reach it
    assert shipped.positional_embedding(shipped.native_grid) is shipped.visual.positional_embedding
    window = shipped.window_blocks
    try:  # without the window the training forward is open_clip's own avg-pooled encode_image
        shipped.window_blocks = frozenset()
        ours = toyclip.encode_images(shipped, scene_pixels)
    finally:
        shipped.window_blocks = window
    theirs = torch.nn.functional.normalize(shipped.model.encode_image(scene_pixels), dim=-1)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_an_unknown_prompt_word_is_the_unknown_id_with_one_warning_naming_it():
    from vpltool.demo.tokenizer import UNKNOWN
    from vpltool.errors import VplWarning

    tok = WordTokenizer(["a", "photo", "of", "star"], context_length=8)
    with pytest.warns(VplWarning) as said:
        ids = tok(["a photo of a zebra.", "a zany photo of a zebra.", "a bad photo of a star."])
    assert [str(w.message) for w in said if "does not know" in str(w.message)] == [str(said[0].message)]
    line = str(said[0].message)
    assert line.startswith("the toy CLIP does not know 'zebra', 'zany':")  # the most used first
    # a word of vpltool's own templates ('bad'), which the user never typed: counted, not named
    assert "'bad'" not in line and "and 1 word of vpltool's default templates and background words" in line
    assert "demo world's 4 words (a, photo, of, star" in line
    assert ids[0].tolist() == [5, 1, 2, 3, 1, UNKNOWN, 6, 0] and ids[2, 6].item() == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second call with unknown words: no second warning
        assert tok(["a photo of a giraffe."]).tolist() == ids[:1].tolist()


def test_names_the_toy_does_not_know_look_alike_to_it(shipped):
    with warnings.catch_warnings(record=True):  # the one warning, if this tokenizer did not say it already
        zebra, giraffe, star = shipped.encode_text(["a photo of a zebra.", "a photo of a giraffe.",
                                                    "a photo of a star."])
    assert torch.equal(zebra, giraffe) and not torch.allclose(zebra, star)


def test_caption_key_ignores_wording_and_loss_counts_duplicates_as_positives():
    assert toyclip.caption_key("a photo of a star on the grass.") == toyclip.caption_key("grass with a star.")
    emb = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), dim=1)
    keys = [frozenset({"star"}), frozenset({"star"}), frozenset({"ring"})]
    scale = torch.tensor(np.log(100.0))
    # the two 'star' pairs share their target: coinciding embeddings reach the loss's floor, the target entropy
    floor = 2 / 3 * np.log(2)  # rows 0 and 1 spread their target over two columns; row 2 has one
    assert trainer.multi_positive_clip_loss(emb, emb, keys, scale).item() == pytest.approx(floor, abs=1e-4)


def test_crops_are_recaptioned_with_what_they_show():
    rng = np.random.default_rng(0)
    objects = [Placement(1, 20, 20, 20), Placement(2, 76, 76, 20)]  # a circle top-left, a star bottom-right
    scene = compose(rng, SceneConfig(), "grass", objects)
    words = {box: toyclip.caption_key(trainer.crop_scene(scene, box, rng)[1])
             for box in [(0, 0, 48), (48, 48, 48), (0, 48, 48), (0, 0, 96)]}
    assert words == {(0, 0, 48): {"circle", "grass"}, (48, 48, 48): {"star", "grass"}, (0, 48, 48): {"grass"},
                     (0, 0, 96): {"circle", "star", "grass"}}
    image, caption = trainer.crop_scene(scene, (14, 0, 12), rng)  # 19 px of the circle: the crop is refused
    assert image is scene.image and caption == scene.caption
    image, _ = trainer.crop_and_recaption(scene, rng)
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8


def test_tiny_training_run_writes_a_loadable_checkpoint(tmp_path):
    losses: list[tuple[int, float]] = []
    out = tmp_path / "toy"
    metrics = trainer.train_toy_clip(out, ToyClipConfig(steps=3, batch_size=8), n_scenes=16, eval_scenes=8,
                                     cam_scenes=2, on_step=lambda step, loss: losses.append((step, loss)))
    assert [s for s, _ in losses] == [1, 2, 3] and all(np.isfinite(v) for _, v in losses)
    assert {"final_loss", "caption_accuracy", "gradcam_miou", "seconds"} <= metrics.keys()
    bb = load_backbone(ModelSpec(model=f"local-dir:{out}"))
    assert bb.window_blocks == frozenset({0, 1, 2})
    assert json.loads((out / EXTRA_CONFIG).read_text())["training"]["steps"] == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


def test_training_refuses_to_replace_a_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(VplError, match="not a model folder"):
        trainer.train_toy_clip(tmp_path, ToyClipConfig(steps=1, batch_size=2))


@pytest.mark.parametrize("bad", [{"steps": 0}, {"batch_size": 1}, {"captions": "poems"}, {"pool": "max"},
                                 {"crop_prob": 1.5}, {"layers": 1}])
def test_recipe_refuses_bad_values_in_one_line(bad):
    with pytest.raises(VplError) as e:
        ToyClipConfig(**bad)
    assert "\n" not in str(e.value)


def test_global_blocks_window_the_early_blocks_only():
    from vpltool.demo.config import ToyClipConfig
    from vpltool.demo.toyclip import build_toy_backbone, toy_window
    from vpltool.errors import VplError

    assert toy_window(4) == {"size": 3, "blocks": [0, 1, 2]}  # the shipped toy: only the last block is global
    assert toy_window(6, 2)["blocks"] == [0, 1, 2, 3]
    bb = build_toy_backbone(0, layers=3, global_blocks=2)
    assert bb.window_blocks == {0}
    with pytest.raises(VplError, match="--global-blocks 5"):
        ToyClipConfig(layers=4, global_blocks=5)


def test_window_of_one_keeps_each_patch_to_itself():
    """--window 1: a windowed block's patch attends to itself alone (not a global block, as size 1 once meant)."""
    import torch

    from vpltool.demo.toyclip import build_toy_backbone

    bb = build_toy_backbone(0, layers=2, window=1)
    mask = bb.attention_mask(0, (3, 4), "cpu")
    assert mask is not None and bb.attention_mask(1, (3, 4), "cpu") is None  # the last block stays global
    allowed = mask[1:, 1:] == 0
    assert torch.equal(allowed, torch.eye(12, dtype=torch.bool))
    assert (mask[0] == 0).all()  # CLS still gathers every patch
    _, attn, _ = bb.block(0, torch.randn(1, 13, bb.width), (3, 4), need_weights=True)
    assert torch.allclose(attn[0, 1:, 1:], torch.eye(12), atol=1e-6)


@pytest.mark.parametrize("bad", [{"window": 2}, {"window": 0}, {"qk_init": -1.0}, {"qk_blocks": "early"}])
def test_window_and_qk_init_refuse_bad_values(bad):
    with pytest.raises(VplError) as e:
        ToyClipConfig(**bad)
    assert "\n" not in str(e.value)


def test_mimetic_init_sets_queries_equal_to_keys_in_the_global_blocks_only():
    import torch

    from vpltool.demo.toyclip import build_toy_backbone

    plain = build_toy_backbone(0, layers=3, global_blocks=2)
    mimetic = build_toy_backbone(0, layers=3, global_blocks=2, qk_init=1.0)
    blocks = mimetic.model.visual.transformer.resblocks
    for i, block in enumerate(blocks):
        w = block.attn.in_proj_weight
        width = w.shape[1]
        assert torch.equal(w[:width], w[width:2 * width]) == (i >= 1)  # blocks 1 and 2 are the global ones
    # the rest of the model is drawn as without it: qk_init 0 rebuilds the weights a toy had before the option
    before = dict(plain.model.named_parameters())
    changed = {k for k, v in mimetic.model.named_parameters() if not torch.equal(v, before[k])}
    weights = {f"visual.transformer.resblocks.{i}.attn.in_proj_weight" for i in (1, 2)}
    biases = {f"visual.transformer.resblocks.{i}.attn.in_proj_bias" for i in (1, 2)}
    assert weights <= changed <= weights | biases


def test_mimetic_init_of_every_block():
    import torch

    from vpltool.demo.toyclip import build_toy_backbone

    bb = build_toy_backbone(0, layers=3, qk_init=1.0, qk_blocks="all")
    for block in bb.model.visual.transformer.resblocks:
        w = block.attn.in_proj_weight
        assert torch.equal(w[: w.shape[1]], w[w.shape[1]: 2 * w.shape[1]])
    with pytest.raises(VplError, match="--qk-blocks"):
        ToyClipConfig(qk_blocks="some")
