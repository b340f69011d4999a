"""runtime.heap: SAM's automatic mask generator on a CPU keeps the memory it frees (glibc only)."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import pytest

import pace

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "vpltool" / "assets" / "toy-sam-world20" / "model.safetensors"
# the toy SAM's generator on one random scene, then the page faults of three more runs; argv[1] "default": with
# keep_freed_memory made a no-op (glibc's own thresholds)
GENERATE = (
    "import resource, sys, numpy as np\n"
    "from vpltool.runtime import heap\n"
    "from vpltool.models.backbones.sam import SamSpec\n"
    "from vpltool.models.dense.corrclip.regions import SamRegions\n"
    "from vpltool.models.registry import load_model\n"
    "if sys.argv[1] == 'default':\n"
    "    heap.keep_freed_memory = lambda: False\n"
    "settings = {'points_per_side': 16, 'pred_iou_thresh': 0.0, 'stability_score_thresh': 0.0}\n"
    "source = SamRegions(load_model('sam', SamSpec('toy', sys.argv[2], prompt=True), 'cpu'), settings)\n"
    "image = (np.random.default_rng(0).random((96, 96, 3)) * 255).astype(np.uint8)\n"
    "source.records(image)\n"
    "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
    "for _ in range(3):\n"
    "    source.records(image)\n"
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_sams_generator_on_a_cpu_does_not_fault_its_freed_memory_in_again():
    """Each batch of prompts makes and frees tensors of a few MB; with glibc's own thresholds the heap hands them
    back to the system and the next batch faults tens of thousands of pages in again. SamRegions on a CPU keeps
    them (keep_freed_memory): the runs after the first reuse its pages."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    faults = {}
    for arm in ("default", "keep"):
        done = pace.run([sys.executable, "-c", GENERATE, arm, str(WEIGHTS)], 180, env=env, capture_output=True,
                        text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        faults[arm] = int(done.stdout.split()[-1])
    assert faults["keep"] * 10 < faults["default"], faults
