"""Shared fixtures: a tiny random CLIP (``vpl-test-vit``), a tiny demo world, its features and text prototypes.

Everything is CPU-only, offline and seeded. The session fixtures are built once and must be treated as read-only;
a test that needs to change a folder copies it first.
"""

from __future__ import annotations

import json
import os
import random
import resource
import sys
from pathlib import Path

ASSETS = Path(__file__).parent / "assets"

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a stray tag must fail fast instead of retrying the hub for ~47 s
# a GPU stays visible for the tests marked `cuda`; every other test means the CPU: CLI runs in a subprocess read
# VPLTOOL_DEVICE, and in-process runs see no CUDA (the `_cpu_unless_marked_cuda` fixture)
os.environ.setdefault("VPLTOOL_DEVICE", "cpu")
os.environ["VPLTOOL_MODEL_CONFIGS"] = str(ASSETS / "model_configs")  # CLI tests see vpl-test-vit
# 1, not 2: on two busy cores OpenMP barriers made a tiny forward ~400x slower (0.55 s vs 1.4 ms)
os.environ.setdefault("OMP_NUM_THREADS", "1")
# a test that asks for 2 threads (bands, reproducible mode, torchrun ranks) shares 2 cores with the other worker:
# OpenMP's threads wait passively at a barrier instead of spinning on a core the other thread needs (with two busy
# cores beside it, tests/test_bands.py -k naclip-2 cost 22-24 CPU-s spinning against 3.1 waiting; the same labels)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# the frozen towers' fp32 products through oneDNN wherever it applies, on every CPU: the same code path on every
# machine, and no calibration timed inside a test (the auto route that measures each product: tests/test_onednn.py)
os.environ.setdefault("VPLTOOL_CPU_LINEAR", "onednn")
# the suite's first pass computes as a CPU without AMX would (--precision auto is fp32) on every machine, and `make
# test`'s second pass, the numeric tests with VPLTOOL_ASSUME_AMX=1, as one with AMX: on a Xeon with AMX the first
# pass had run bf16 where the pages and figures it checks were made at fp32 (docs/robustness.md's crf shares and
# choose-pseudo scores), so a green suite on one CPU was no promise on another
os.environ.setdefault("VPLTOOL_ASSUME_AMX", "0")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

TINY_MODEL = "vpl-test-vit"
TEMPLATES = "a photo of a {}."
BACKGROUND_WORDS = "grass,sky,wall,water"


# the suite's CPU time, by test (its setup included: a session fixture counts for the first test that uses it)
CPU_BAR_MIN = 20  # the suite's budget in CPU-minutes (user + sys), which the machine's load does not inflate
_CPU_S: dict[str, float] = {}


def _cpu_s() -> tuple[float, float]:
    """(user, sys) seconds of this process and of the children it waited for (the CLI runs of the tests)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + kids.ru_utime, own.ru_stime + kids.ru_stime


_WORKERS_CPU: list[tuple[float, float]] = []  # (user, sys) of each pytest-xdist worker, reported when it ends

# the costliest files first: under pytest-xdist (``-n 2 --dist loadfile``, as ``make test`` runs) a file is one unit of
# work, and the longest unit started last would set the suite's wall time alone
_FIRST = ("test_robustness.py", "test_demo_quality.py", "test_torchrun.py", "test_fuzz_two_command.py", "test_fuzz.py")


def pytest_collection_modifyitems(config, items) -> None:
    rank = {name: i for i, name in enumerate(_FIRST)}
    items.sort(key=lambda item: rank.get(Path(str(item.fspath)).name, len(_FIRST)))  # stable: files keep their order


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    before = sum(_cpu_s())
    yield
    _CPU_S[item.nodeid] = sum(_cpu_s()) - before


def pytest_sessionfinish(session) -> None:
    """A pytest-xdist worker sends its CPU time and its tests' to the controller (which prints the summary)."""
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["vpltool_cpu"] = json.dumps({"total": _cpu_s(), "tests": _CPU_S})


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: the suite also runs without it (TEST_WORKERS=0)
def pytest_testnodedown(node, error) -> None:
    got = getattr(node, "workeroutput", {}).get("vpltool_cpu")
    if got:
        data = json.loads(got)
        _WORKERS_CPU.append(tuple(data["total"]))
        _CPU_S.update(data["tests"])


def pytest_terminal_summary(terminalreporter) -> None:
    """The suite's CPU time (user + sys), the tests that cost the most, and, with ``VPLTOOL_TEST_CPU_JSON=FILE``,
    every test's CPU seconds in FILE (under pytest-xdist: the workers' sums, and this process's own time)."""
    if _WORKERS_CPU:
        own = resource.getrusage(resource.RUSAGE_SELF)
        user = own.ru_utime + sum(u for u, _ in _WORKERS_CPU)
        system = own.ru_stime + sum(s for _, s in _WORKERS_CPU)
    else:
        user, system = _cpu_s()
    total_min = (user + system) / 60
    verdict = "within" if total_min <= CPU_BAR_MIN else "OVER"
    terminalreporter.write_line(f"suite CPU time: {total_min:.1f} CPU-minutes (user {user:.0f} s + sys {system:.0f} s, "
                                f"this process and the commands it ran; {verdict} the {CPU_BAR_MIN}-minute budget)")
    top = sorted(_CPU_S.items(), key=lambda kv: -kv[1])[:8]
    if top:
        terminalreporter.write_line("the costliest tests (CPU-s): " + "; ".join(f"{k} {v:.0f}" for k, v in top))
    if os.environ.get("VPLTOOL_TEST_CPU_JSON"):
        Path(os.environ["VPLTOOL_TEST_CPU_JSON"]).write_text(json.dumps(
            {"user_s": user, "sys_s": system, "tests": _CPU_S}, indent=1))


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from the same RNG state (torch only if some module already imported it)."""
    random.seed(0)
    np.random.seed(0)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(0)


@pytest.fixture(autouse=True)
def _cpu_unless_marked_cuda(request, monkeypatch) -> None:
    """``--device auto`` means the CPU in every test not marked ``cuda`` (on a GPU machine too): a test that means
    the CPU must not drift onto a GPU and its bf16 blocks. Tests marked ``cuda`` skip without a GPU."""
    import torch

    if request.node.get_closest_marker("cuda") is None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        return
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")


@pytest.fixture(scope="session")
def tiny_spec():
    """The random tiny CLIP of tests/assets/model_configs (ViT, 3 blocks, width 64, 32-d joint space)."""
    from vpltool.models import ModelSpec

    return ModelSpec(TINY_MODEL, "none", config_dir=str(ASSETS / "model_configs"))


@pytest.fixture(scope="session")
def tiny_pgseg_checkpoint(tmp_path_factory) -> Path:
    """A seeded random tiny PGSeg on CLIP's BPE, saved as `train-pgseg` saves (zero-shot maps and seeds need no
    training); read-only."""
    from vpltool.models.text import pgseg

    model = pgseg.build_model(pgseg.tiny_config(), seed=3).eval()
    return pgseg.save_checkpoint(tmp_path_factory.mktemp("pgseg") / "m.safetensors", model)


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Path:
    """A demo-world folder dataset: 6 train + 3 val scenes of 96x96 px, 8 classes, exact GT masks."""
    from vpltool.demo.make_world import write_dataset

    return write_dataset(tmp_path_factory.mktemp("world"), n_train=6, n_val=3, seed=0)


@pytest.fixture(scope="session")
def features_dir(world, tiny_spec, tmp_path_factory) -> Path:
    """`extract --cache full` output of the world's train split (finished: ``_stage.json`` present)."""
    import torch

    from vpltool.config import ExtractConfig, RuntimeConfig
    from vpltool.data import open_dataset
    from vpltool.stages.extract import run_extract

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("features")
    run_extract(open_dataset(world, "train"), out, tiny_spec, ExtractConfig(cache="full"),
                RuntimeConfig(device="cpu", workers=1))
    return out


@pytest.fixture(scope="session")
def features_fp32(world, tiny_spec, features_dir, tmp_path_factory) -> Path:
    """:func:`features_dir` in fp32 where ``--precision auto`` is not (a CPU with AMX, or ``VPLTOOL_ASSUME_AMX=1``):
    for the tests whose claim holds in fp32 alone (a stage refuses features of another dtype than its own)."""
    import torch

    from vpltool.config import ExtractConfig, RuntimeConfig
    from vpltool.data import open_dataset
    from vpltool.device import resolve_precision
    from vpltool.stages.extract import run_extract

    if resolve_precision("auto", torch.device("cpu")) == torch.float32:
        return features_dir
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("features_fp32")
    run_extract(open_dataset(world, "train"), out, tiny_spec, ExtractConfig(cache="full"),
                RuntimeConfig(device="cpu", precision="fp32", workers=1))
    return out


@pytest.fixture(scope="session")
def text_protos(world, tiny_spec, tmp_path_factory) -> Path:
    """A text prototypes file for the world's classes: one template, four background words."""
    import torch

    from vpltool.config import TextPrototypesConfig
    from vpltool.data import open_dataset
    from vpltool.stages.text_prototypes import run_text_prototypes

    torch.manual_seed(0)
    classes = open_dataset(world, "train").classes
    out = tmp_path_factory.mktemp("prototypes") / "text.safetensors"
    cfg = TextPrototypesConfig(templates=TEMPLATES, background=BACKGROUND_WORDS)
    run_text_prototypes(classes, out, tiny_spec, cfg, device="cpu")
    return out


@pytest.fixture(scope="session")
def gt_pseudo(world, tmp_path_factory) -> Path:
    """The world's train GT masks as a finished `crf` folder (pseudo masks = ground truth), for decoder tests."""
    import shutil

    from vpltool import io
    from vpltool.data import open_dataset
    from vpltool.runtime.numerics import run_numerics

    dataset = open_dataset(world, "train")
    out = tmp_path_factory.mktemp("pseudo")
    for item in dataset.items:
        shutil.copy(item.gt, out / f"{item.id}.png")
    io.write_stage_record(out, "crf", params={}, inputs={"dataset": dataset.identity()}, count=len(dataset.items),
                          numerics=run_numerics())  # what every stage records: its mode (no --precision made GT)
    return out
