"""config: every default once, and the rules a value must follow (one-line errors naming the CLI option)."""

from __future__ import annotations

import os

import pytest

from vpltool.config import (
    MAX_LR,
    MAX_TOKENS,
    CamConfig,
    CrfConfig,
    DecoderConfig,
    EvalConfig,
    ExtractConfig,
    LearnPrototypesConfig,
    PredictConfig,
    RuntimeConfig,
    check_tokens,
    worker_count,
)
from vpltool.errors import VplError


@pytest.mark.parametrize("build, message", [
    (lambda: ExtractConfig(image_size=1), "--image-size 1: must be >= 32 pixels"),
    (lambda: ExtractConfig(max_side=0), "--max-side 0: must be >= 32 pixels"),
    (lambda: CamConfig(temperature=-0.01), "--temperature -0.01: must be a number above 0"),
    (lambda: LearnPrototypesConfig(lr=1e30), f"--lr 1e+30: must be a number above 0 and at most {MAX_LR:g}"),
    (lambda: DecoderConfig(lr=float("nan")), "--lr nan: must be a number above 0"),
    (lambda: LearnPrototypesConfig(max_memory_gb=-5), "--max-memory-gb -5: must be a number above 0"),
    (lambda: RuntimeConfig(workers=-1), "--workers -1: must be >= 0 (0 = one per CPU core)"),
    (lambda: CrfConfig(confidence=1.5), "--confidence 1.5: must be in [0, 1]"),
    (lambda: EvalConfig(bg_exponents=()), "--bg-exponents is empty"),
    (lambda: PredictConfig(scales=(0.0,)), "--scales 0.0: must be a number above 0 and at most 4"),
], ids=["image-size", "max-side", "temperature", "lr", "lr-nan", "max-memory", "workers", "confidence",
        "bg-exponents", "scales"])
def test_out_of_range_values_are_one_line_naming_the_option(build, message):
    with pytest.raises(VplError) as e:
        build()
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_workers_zero_means_one_per_core_everywhere():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert worker_count(0) == cores == RuntimeConfig(workers=0).worker_count
    assert worker_count(1) == 1 == RuntimeConfig(workers=1).worker_count
    assert worker_count(10**8) == cores == RuntimeConfig(workers=10**8).worker_count  # capped at the cores


def test_a_photo_with_too_many_patch_tokens_is_refused_naming_max_side():
    """A 4000x3000 photo asked the allocator for 281 GB; the rule refuses it and names a --max-side that fits."""
    check_tokens("ok.jpg", (1024, 1024), (64, 64), 16, MAX_TOKENS)  # exactly at the limit: accepted
    with pytest.raises(VplError) as e:
        check_tokens("big.jpg", (3000, 4000), (188, 250), 16, MAX_TOKENS)
    assert str(e.value) == ("big.jpg: 3000x4000 pixels make 47,000 patch tokens (188x250 at patch 16), above "
                            "--max-tokens 4096 (attention memory grows with its square); pass --max-side 1168 (or "
                            "raise --max-tokens where the memory is)")
    # the suggested side fits (73 x 55 patches) and one patch more would not
    assert 73 * 55 <= MAX_TOKENS < 74 * 56
    with pytest.raises(VplError, match="re-run `vpltool extract` with --max-side"):
        check_tokens("f.safetensors", (3000, 4000), (188, 250), 16, MAX_TOKENS, stage="cam")
