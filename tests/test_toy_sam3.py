"""The toy SAM 3 (`train-toy-sam3`): SAM 3's detector recipe on the world's train masks and class names, a
bit-identical rebuild, a loss that falls, and loading through the unchanged ``sam3`` family (``--dense sam3``)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from vpltool.demo.config import ToySam3Config  # noqa: E402
from vpltool.demo.train_toy_sam3 import mask_boxes, match, train_toy_sam3  # noqa: E402
from vpltool.errors import VplError  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[1] / "vpltool" / "assets" / "toy-sam3"
TINY = ToySam3Config(width=8, side=56, text_width=4, queries=4, epochs=1, batch_size=3, warmup=1)


def _cli(*args):
    from typer.testing import CliRunner

    from vpltool.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_toy_sam3_rebuilds_bit_identically_and_segments_through_dense_sam3(world, tmp_path):
    from safetensors.torch import load_file

    a = train_toy_sam3(tmp_path / "a", world, TINY)
    train_toy_sam3(tmp_path / "b", world, TINY)
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["steps"] == 2 and a["images"] == 6 and a["words"][0] == "circle" and np.isfinite(a["final_loss"])
    # every token row but the trained words' exactly zero (the file compresses); the trained ones learnt
    table = wa["text_encoder.text_model.embeddings.token_embedding.weight"]
    assert table.shape[0] == 49408 and set(torch.nonzero(table.abs().sum(1)).flatten().tolist()) == set(a["tokens"])
    record = json.loads((tmp_path / "a" / "model.json").read_text())
    assert record["vpltool_file"] == "toy-sam3-record" and record["world"]["seed"] == 0
    other = train_toy_sam3(tmp_path / "c", world, replace(TINY, seed=1))
    wc = load_file(Path(other["path"]) / "model.safetensors")
    assert not torch.equal(wa["detr_decoder.query_embed.weight"], wc["detr_decoder.query_embed.weight"])
    # the unchanged loading path: `segment --dense sam3 --sam3-weights FOLDER` writes a mask per val scene
    r = _cli("segment", world, "--split", "val", "--dense", "sam3", "-o", tmp_path / "seg", "--sam3-weights",
             tmp_path / "a", "--device", "cpu", "--workers", "0", "--prob-threshold", "0")
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "seg").glob("*.png"))) == 3


def test_the_loss_falls_over_a_few_steps(world, tmp_path):
    losses = []
    train_toy_sam3(tmp_path / "m", world, replace(TINY, epochs=6, batch_size=6, warmup=0, lr=1e-2),
                   on_step=lambda step, loss: losses.append(loss))  # the same six images every step
    assert len(losses) == 6 and all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.98 * losses[0], \
        losses


def test_matching_pairs_each_instance_with_the_query_on_it():
    target = torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.7, 0.6, 0.2, 0.3]])
    boxes = torch.tensor([[0.5, 0.5, 0.9, 0.9], [0.7, 0.6, 0.2, 0.3], [0.1, 0.9, 0.1, 0.1], [0.21, 0.2, 0.1, 0.1]])
    queries, targets = match(torch.zeros(4), boxes, target, TINY)
    assert dict(zip(targets.tolist(), queries.tolist())) == {0: 3, 1: 1}
    masks = torch.zeros(1, 10, 20, dtype=torch.bool)
    masks[0, 2:4, 5:10] = True  # rows 2-3, columns 5-9: a 5 x 2 box whose centre is (7.5, 3) pixels
    assert torch.allclose(mask_boxes(masks), torch.tensor([[7.5 / 20, 3 / 10, 5 / 20, 2 / 10]]))


def test_the_command_writes_a_folder_the_family_reads_and_replaces_its_own(world, tmp_path):
    small = ["--data", world, "--epochs", "1", "--batch-size", "6", "--side", "56", "--width", "8"]
    r = _cli("train-toy-sam3", tmp_path / "m", *small)
    assert r.exit_code == 0, r.output
    assert {p.name for p in (tmp_path / "m").iterdir()} == {"config.json", "model.safetensors", "model.json"}
    first = (tmp_path / "m" / "model.safetensors").read_bytes()
    r = _cli("train-toy-sam3", tmp_path / "m", *small)  # its own kind: replaced without --overwrite, the same bytes
    assert r.exit_code == 0 and (tmp_path / "m" / "model.safetensors").read_bytes() == first, r.output


def test_bad_settings_and_a_file_for_the_folder_are_one_line(world, tmp_path):
    with pytest.raises(VplError, match="--side 100"):
        ToySam3Config(side=100)
    with pytest.raises(VplError, match="--width 2147483648: must be at most 1024"):
        ToySam3Config(width=2**31)
    path = tmp_path / "file"
    path.write_text("x")
    r = _cli("train-toy-sam3", path, "--data", world)
    assert r.exit_code == 2 and "not a folder" in r.output and path.read_text() == "x", r.output


@pytest.mark.skipif(not (SHIPPED / "model.safetensors").is_file(), reason="the shipped toy SAM 3 is not built")
def test_the_shipped_toy_sam3_loads_and_names_its_world():
    from vpltool.models import check_model, load_model
    from vpltool.models.backbones.sam3 import Sam3Spec

    spec = Sam3Spec(str(SHIPPED))
    check_model("sam3", spec)
    sam = load_model("sam3", spec, "cpu")
    record = json.loads((SHIPPED / "model.json").read_text())
    assert record["world"]["seed"] == 20 and record["split"] == "train"  # never the demo world's scenes
    assert sam.image_size == record["recipe"]["side"] and record["final_loss"] < record["first_loss"]
    assert (SHIPPED / "model.safetensors").stat().st_size < 3_000_000
