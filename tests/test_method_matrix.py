"""Every method on every stage that takes it, at every precision: each --dense method of the spec table (a new row
is in the matrix by itself), each text-supervised family's checkpoint and the example plugin's method, on
`segment`, `cam --dense`, `predict --classes --dense`, `benchmark` and the Python segmenter, at fp32 and bf16 on
the CPU (fp16 and bf16 on CUDA, marked cuda). A cell passes when the run writes its labels, or, where the stage
cannot take the method (`cam` and `predict` load no proxy model or SAM), refuses it in one line (exit 2).

The tiny test CLIP, the toy DINO, a random test SAM, one 40x56 photo (three for `cam`/`predict`, the VOC21
miniature's three for `benchmark`), in this process (tests/method_matrix.py), the plugin's row in one more.
"""

from __future__ import annotations

import json

import method_matrix as mm
import pytest

from vpltool.config.dense import DENSE_SPECS

PRECISIONS = ("fp32", "bf16")
CUDA_PRECISIONS = ("fp16", "bf16")


@pytest.fixture(scope="module")
def inputs(world, text_protos, gt_pseudo, tmp_path_factory):
    from vpltool.config import DecoderConfig, RuntimeConfig
    from vpltool.stages.train_decoder import run_train_decoder

    root = tmp_path_factory.mktemp("matrix")
    cfg = DecoderConfig(dim=16, layers=1, heads=2, crop_size=64, batch_size=2, iters=1, log_every=1, warmup_iters=1)
    run_train_decoder(gt_pseudo, text_protos, root / "decoder", cfg, RuntimeConfig(device="cpu", workers=1))
    return mm.make_inputs(root / "cells", world, text_protos, root / "decoder" / "decoder.safetensors")


def _check(outcome: tuple[str, str], want: str) -> None:
    got, detail = outcome
    assert got == want, detail
    if got == "refused":
        assert "\n" not in detail and detail, detail


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("stage", mm.STAGES)
@pytest.mark.parametrize("method", list(DENSE_SPECS))
def test_each_dense_method_on_each_stage(method, stage, precision, inputs):
    if mm.missing_inputs(method, inputs):
        pytest.skip(f"{method}'s inputs {mm.missing_inputs(method, inputs)} need transformers (vpltool[radio])")
    _check(mm.run_cell(method, stage, precision, inputs), mm.expected(method, stage))


# each text-supervised family's checkpoint for the matrix (a new family adds how to make a tiny one)
def _pgseg(root):
    from vpltool.models.text import pgseg

    return pgseg.save_checkpoint(root / "pgseg.safetensors", pgseg.build_model(pgseg.tiny_config(), seed=3).eval())


def _talk2dino(root):
    from vpltool.models.text.family import text_family

    fam = text_family("talk2dino")
    cfg = fam.model_config(fam.TrainConfig.recipe_config("demo", dino_weights=mm.TOY_DINO, crop_size=64))
    return fam.save_checkpoint(root / "talk2dino.safetensors", fam.build_model(cfg, 0))


CHECKPOINTS = {"pgseg": _pgseg, "talk2dino": _talk2dino}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("text_checkpoints")
    return {family: str(make(root)) for family, make in CHECKPOINTS.items()}


def _text_families() -> list[str]:
    from vpltool.models.registry import TEXT_FAMILIES

    return list(TEXT_FAMILIES)


def test_every_text_family_has_a_checkpoint_here():
    assert set(_text_families()) == set(CHECKPOINTS)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("stage", ("segment", "cam", "benchmark", "python"))
@pytest.mark.parametrize("family", _text_families())
def test_each_text_family_on_each_stage(family, stage, precision, inputs, checkpoints):
    from vpltool.models.registry import TEXT_FAMILIES

    name = TEXT_FAMILIES[family].segmenters[0]
    _check(mm.run_text_cell(family, name, checkpoints[family], stage, precision, inputs), "labels")


def test_the_example_plugin_on_each_stage(inputs, tmp_path_factory):
    """The example plugin's method, installed, in one more interpreter: every stage at both precisions."""
    from dataclasses import asdict

    from plugin_sites import install_example, run_with

    site = install_example(tmp_path_factory.mktemp("plugin"))
    got = run_with([site], "import sys, method_matrix; method_matrix.main(sys.argv[1:])",
                   json.dumps(asdict(inputs)), "example-smooth", *PRECISIONS)
    assert set(got) == {f"{s}/{p}" for s in mm.STAGES for p in PRECISIONS}
    for cell, (outcome, detail, want) in got.items():
        assert outcome == want == "labels", (cell, detail)


@pytest.mark.cuda
@pytest.mark.parametrize("precision", CUDA_PRECISIONS)
@pytest.mark.parametrize("stage", ("segment", "python"))
@pytest.mark.parametrize("method", list(DENSE_SPECS))
def test_each_dense_method_on_cuda(method, stage, precision, inputs):
    if mm.missing_inputs(method, inputs):
        pytest.skip(f"{method}'s inputs {mm.missing_inputs(method, inputs)} need transformers (vpltool[radio])")
    _check(mm.run_cell(method, stage, precision, inputs, device="cuda"), mm.expected(method, stage))
