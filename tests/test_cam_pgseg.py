"""`cam --pgseg FILE`: PGSeg / GroupViT zero-shot maps as seeds, through the cam folder and file format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from vpltool import io
from vpltool.data import open_dataset
from vpltool.demo.make_world import write_dataset
from vpltool.models.text import pgseg


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("world") / "w", n_train=3, n_val=1, seed=1)


@pytest.fixture(scope="module")
def checkpoint(tiny_pgseg_checkpoint) -> Path:
    return tiny_pgseg_checkpoint


def test_maps_are_the_zero_shot_channels_of_the_labelled_classes(world, checkpoint, tmp_path):
    from vpltool.cli import app

    runner = CliRunner()
    out = tmp_path / "cams"
    done = runner.invoke(app, ["cam", str(world), "--split", "train", "--pgseg", str(checkpoint), "--pgseg-side",
                               "48", "-o", str(out), "--device", "cpu"])
    assert done.exit_code == 0, done.output
    data = open_dataset(world, "train")
    model = pgseg.load_pgseg(checkpoint)
    names = list(data.classes[1:])
    text = pgseg.class_text_embeddings(model, pgseg.class_tokens(names, pgseg.tokenizer(model.cfg)))
    checked = 0
    for item in data.items:
        cam = io.read_cam(io.cam_path(out, item.id), classes=data.classes)
        assert cam.labels == tuple(item.labels)
        image = io.load_image(item.image)
        h, w = image.shape[:2]
        x = pgseg.image_tensor(image, 48)
        logits = pgseg.zero_shot_logits(model, x, text, with_bg=False, mode="slide")
        want = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)[0]
        want = want[[c - 1 for c in item.labels]].numpy()
        assert cam.cams.shape == (len(item.labels), h, w)
        np.testing.assert_allclose(cam.cams.astype(np.float32), want, atol=1e-3)  # stored float16 at image size
        checked += len(item.labels)
    assert checked > 0
    record = io.read_record(io.stage_record_path(out))
    assert record["params"]["source"] == "pgseg" and record["params"]["short_side"] == 48
    crf = runner.invoke(app, ["crf", str(out), "-o", str(tmp_path / "crf"), "--workers", "1"])
    assert crf.exit_code == 0, crf.output  # the rest of the pipeline takes the seeds as any cam folder


def test_another_architecture_or_a_prototypes_file_beside_it_is_one_line(world, checkpoint, tmp_path):
    from vpltool.cli import app

    runner = CliRunner()
    other = tmp_path / "vit.pth"
    torch.save({"model": {"cls_token": torch.zeros(1, 1, 8), "patch_embed.proj.weight": torch.zeros(8, 3, 4, 4)}},
               other)
    done = runner.invoke(app, ["cam", str(world), "--split", "train", "--pgseg", str(other), "-o",
                               str(tmp_path / "a"), "--device", "cpu"])
    assert done.exit_code == 2 and "not a GroupViT/PGSeg checkpoint" in done.output, done.output
    assert not (tmp_path / "a").exists()
    both = runner.invoke(app, ["cam", str(world), "--split", "train", "--pgseg", str(checkpoint), "-p",
                               str(checkpoint), "-o", str(tmp_path / "b"), "--device", "cpu"])
    assert both.exit_code == 2 and "--prototypes: not used with --pgseg" in both.output, both.output
    none = runner.invoke(app, ["cam", str(world), "--split", "train", "-o", str(tmp_path / "c")])
    assert none.exit_code == 2 and "--pgseg FILE" in none.output
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
