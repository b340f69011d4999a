"""Two commands, one input changed between them: the result is refused in one line or recomputed, never certified
mixed.

A *story* is a command whose run a second command continues: a training run (killed after a checkpoint, or
finished) and its ``--resume``; ``--shard 0/2`` and the next shard (or a plain run that finishes the folder). A
*change* replaces, edits or moves one file the story depends on between the two: an image, a caption, a label, a
pseudo mask, a shard, a noun file, the ``--init`` weights, the prototypes, the weights of a model the run loads (a
CLIP read from local bytes, ``--model local-dir:DIR``, included). A story's first command may also be killed with
``kill -9`` of its whole process group, or finish before the change, the second then running the same command on the
finished folder.

The property, for every (story, change, way of stopping) drawn:

* the second command exits 2 with one ``error:`` line (the last line, no traceback), and what the first certified
  (the final model, ``_stage.json``) is as it was; or
* it exits 0, and its result (every tensor of the model, every mask's bytes) equals that of the same two commands
  run afresh on the changed inputs, with nothing changed between them: the run was recomputed, not finished on two
  inputs;
* a change that keeps every byte (the data moved, or named by an absolute path where the first run had a relative
  one) is accepted: exit 0, and the same result.

A *chain* runs the stages of the pipeline one after the other (extract, text-prototypes, cam, eval) and replaces
the weights of the CLIP they read between two of them: every later stage refuses in one line, or the chain's end
equals a clean chain run on the new weights alone.

Bounded and derandomized here (``VPLTOOL_FUZZ_TWO_EXAMPLES`` draws per story, 2 by default); ``make fuzz`` runs a
longer one. A fault it finds is fixed as a class and becomes a row of ``robustness_cases.py``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest

hypothesis = pytest.importorskip("hypothesis")
import pgseg_stand_in  # noqa: E402
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import robustness_cases as rc  # noqa: E402

EXAMPLES = int(os.environ.get("VPLTOOL_FUZZ_TWO_EXAMPLES", "2"))
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
PGSEG = ["--recipe", "cpu", "--batch-size", "2", "--epochs", "2", "--crop-size", "32", "--workers", "1",
         "--checkpoint-every", "1", "--log-every", "1", *rc.CPU]
DECODER = ["--iters", "4", "--batch-size", "2", "--dim", "16", "--layers", "1", "--heads", "2", "--crop-size", "64",
           "--checkpoint-every", "1", "--workers", "1", *rc.CPU]
STOP_AT = 2  # an interrupted first command stops (as a kill would) right after this checkpoint
# `segment` at the world's own photo size (96 px), not the method's 336-448 (12-22 times the pixels): the toy CLIP's
# masks of the two weights still differ there (proxyclip's and trident's two DINO and SAM weights gave the same masks
# at their own side too: checked when this was set)
SIDE = ["--short-side", "96"]


# --------------------------------------------------------------------------------------------- the workspace
@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> rc.Workspace:
    return rc.Workspace(tmp_path_factory.mktemp("two"))


@pytest.fixture(scope="module")
def assets(ws) -> dict[str, Path]:
    """Files the stories take as inputs, each with a same-kind replacement: PGSeg ``--init`` weights (the test
    stand-in family), DINO and SAM weights of two seeds, a second text-prototypes file, noun files, shards."""
    import torch
    from safetensors.torch import save_file

    from vpltool.models.backbones.sam import SAM_ARCHS, _build

    root = ws.root / "assets"
    root.mkdir(exist_ok=True)
    out: dict[str, Path] = {}
    mp = pytest.MonkeyPatch()
    try:
        pgseg_stand_in.install(mp)
        for seed in (0, 1):
            run = root / f"init{seed}"
            rc.cli_ok("train-pgseg", ws.world, "-o", run, "--recipe", "cpu", "--batch-size", "2", "--epochs", "1",
                      "--crop-size", "32", "--workers", "1", "--seed", str(seed), *rc.CPU)
            out[f"init{seed}"] = run / "pgseg.safetensors"
    finally:
        mp.undo()
    for seed in (0, 1):
        out[f"dino{seed}"] = ws.dino_weights(f"assets/dino{seed}.safetensors", seed=seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            state = _build(SAM_ARCHS["test"]).state_dict()
        out[f"sam{seed}"] = root / f"sam{seed}.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(out[f"sam{seed}"]))
    out["clip0"], out["clip1"] = _toy_clip(), root / "clip1.safetensors"
    _perturbed(out["clip0"] / "open_clip_model.safetensors", out["clip1"])
    out["clip0w"] = out["clip0"] / "open_clip_model.safetensors"  # the same bytes, copied anew (a new mtime)
    out["text0"], out["text1"] = ws.text, root / "text1.safetensors"
    rc.cli_ok("text-prototypes", ws.features, "-o", out["text1"], "--templates", "a picture of a {}.",
              "--background", "grass,sky,wall,water", *rc.CPU)
    (root / "nouns.txt").write_text("star\ncircle\nsquare\ntriangle\ncross\n")
    out["nouns"] = root / "nouns.txt"
    return out


def _toy_clip() -> Path:
    """The toy CLIP vpltool ships: a ``local-dir`` model folder (config, vocabulary, weights)."""
    import vpltool

    return Path(vpltool.__file__).parent / "assets" / "toy-clip"


def _perturbed(weights: Path, out: Path) -> None:
    """``weights`` with seeded noise (2% of each float tensor's spread) added: the same architecture, other values,
    what a retrained model under the same name holds."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(weights), framework="pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    gen = torch.Generator().manual_seed(7)
    for name, t in tensors.items():
        if t.is_floating_point() and t.numel() > 1:
            tensors[name] = (t + 0.02 * t.float().std() * torch.randn(t.shape, generator=gen)).to(t.dtype)
    save_file(tensors, str(out), metadata=meta)


def _shards(world: Path, folder: Path, captions: dict[str, str]) -> Path:
    """The world's train pairs as two img2dataset-style shards (two samples each)."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = sorted(captions)
    for n, part in enumerate((ids[:2], ids[2:4])):
        with tarfile.open(folder / f"{n:05d}.tar", "w") as tar:
            for key in part:
                for ext, data in (("png", (world / "images" / f"{key}.png").read_bytes()),
                                  ("txt", captions[key].encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime = len(data), 0
                    tar.addfile(info, io.BytesIO(data))
    return folder


# --------------------------------------------------------------------------------------------- stories
@dataclass(frozen=True)
class Story:
    """``setup(ws, assets, root) -> inputs`` (name -> path, private copies under ``root``); ``first`` / ``second``
    ``(inputs, out, mode) -> args``; ``changes``: name -> ``(apply(inputs, root) -> inputs, keeps the bytes)``;
    ``result(out)``: what a finished run certified, comparable; ``certified``: the files that certify it."""

    setup: Callable
    first: Callable
    second: Callable
    changes: dict[str, tuple[Callable, bool]]
    result: Callable
    certified: tuple[str, ...]
    modes: tuple[str, ...]
    interrupt: str | None = None  # the function whose STOP_AT-th checkpoint ends an interrupted first command
    stand_in: bool = True  # train-pgseg with the tests' tiny model family (tests/pgseg_stand_in.py)


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v.numpy().tobytes() for k, v in load_file(str(path)).items()}


def _masks(out: Path) -> dict:
    """Each mask's pixels (as a user reads them; its file also records the run that wrote it)."""
    import numpy as np
    from PIL import Image

    return {p.name: np.asarray(Image.open(p)).tobytes() for p in sorted(out.glob("*.png"))}


def _copy_world(ws, root: Path, name: str = "world") -> Path:
    target = root / name
    shutil.copytree(ws.world, target, ignore=shutil.ignore_patterns("_stage.json"))
    shutil.copy2(ws.world / "_stage.json", target / "_stage.json")
    return target


def _moved(key: str) -> Callable:
    """The input ``key`` moved to another folder (every byte kept), named by its new path."""
    def apply(inputs: dict, root: Path, assets: dict) -> dict:
        old = inputs[key]
        new = root / "moved" / old.name
        new.parent.mkdir(exist_ok=True)
        shutil.move(str(old), str(new))
        return {**inputs, key: new}
    return apply


def _absolute(inputs: dict, root: Path, assets: dict) -> dict:
    """Every input named by its absolute path (the first command named them relative to the working folder)."""
    return {k: (v.resolve() if isinstance(v, Path) else v) for k, v in inputs.items()}


def _swapped_to(key: str, other: str) -> Callable:
    """The file of ``key`` replaced, under its name, by the asset ``other`` (another file of the same kind)."""
    def apply(inputs: dict, root: Path, assets: dict) -> dict:
        shutil.copyfile(assets[other], inputs[key])
        return inputs
    return apply


def _weights_replaced(key: str, name: str, other: str) -> Callable:
    """The file ``name`` of the model folder ``key`` replaced, under its name, by the asset ``other``."""
    def apply(inputs: dict, root: Path, assets: dict) -> dict:
        shutil.copyfile(assets[other], inputs[key] / name)
        return inputs
    return apply


def _edit_caption(inputs: dict, root: Path, assets: dict) -> dict:
    path = inputs["pairs"] / "captions.json"
    table = json.loads(path.read_text())
    first = sorted(table)[0]
    table[first] = "a blue star" if table[first] != "a blue star" else "a red star"
    path.write_text(json.dumps(table))
    return inputs


def _image_replaced(folder_key: str) -> Callable:
    """A train image replaced by another train image's bytes (the same name; a decodable image)."""
    def apply(inputs: dict, root: Path, assets: dict) -> dict:
        images = sorted((inputs[folder_key] / "images").glob("train_*.png"))
        shutil.copyfile(images[1], images[0])
        return inputs
    return apply


def _edit_labels(inputs: dict, root: Path, assets: dict) -> dict:
    """One line of labels.csv edited: the first train image gets another image's labels."""
    path = inputs["data"] / "labels.csv"
    lines = path.read_text().splitlines()
    rows = [i for i, line in enumerate(lines) if line.startswith("train_")]
    a, b = rows[0], next(i for i in rows[1:] if lines[i].split(",", 1)[1] != lines[rows[0]].split(",", 1)[1])
    lines[a] = lines[a].split(",", 1)[0] + "," + lines[b].split(",", 1)[1]
    path.write_text("\n".join(lines) + "\n")
    return inputs


def _edit_nouns(inputs: dict, root: Path, assets: dict) -> dict:
    path = inputs["nouns"]
    path.write_text("\n".join(path.read_text().split()[:-2]) + "\n")  # two nouns fewer
    return inputs


def _shard_replaced(inputs: dict, root: Path, assets: dict) -> dict:
    """Shard 00001.tar replaced by another of the same name and size: a caption changed, letter for letter."""
    folder = inputs["pairs"]
    size = (folder / "00001.tar").stat().st_size
    captions = json.loads((root / "captions.json").read_text())
    ids = sorted(captions)
    captions[ids[2]] = "".join(chr(ord(c) ^ 1) if c.isalpha() else c for c in captions[ids[2]])
    tmp = _shards(root / "world", root / "rebuilt", captions)
    shutil.copyfile(tmp / "00001.tar", folder / "00001.tar")
    assert (folder / "00001.tar").stat().st_size == size
    return inputs


def _edit_mask(inputs: dict, root: Path, assets: dict) -> dict:
    """One pseudo mask of the crf folder edited: its pixels shifted by a row (a valid mask of the same classes)."""
    import numpy as np

    from vpltool import io as vio

    path = sorted(inputs["pseudo"].glob("*.png"))[0]
    vio.write_mask(path, np.roll(vio.read_mask(path), 7, axis=0))
    return inputs


def _pgseg_setup(ws, assets, root: Path) -> dict:
    shutil.copyfile(assets["init0"], root / "init.safetensors")
    return {"pairs": _copy_world(ws, root), "init": root / "init.safetensors"}


def _pgseg_args(inputs, out, mode):
    return ["train-pgseg", inputs["pairs"], "-o", out, *PGSEG, "--init", inputs["init"]]


def _nouns_setup(ws, assets, root: Path) -> dict:
    shutil.copyfile(assets["nouns"], root / "nouns.txt")
    return {"pairs": ws.world, "nouns": root / "nouns.txt"}


def _nouns_args(inputs, out, mode):  # the real family: the stand-in has no multi-label loss
    return ["train-pgseg", inputs["pairs"], "-o", out, *PGSEG, "--epochs", "1", "--multi-label", "2", "--nouns",
            inputs["nouns"]]


def _shards_setup(ws, assets, root: Path) -> dict:
    world = _copy_world(ws, root)
    captions = json.loads((world / "captions.json").read_text())
    train = {k: v for k, v in captions.items() if k.startswith("train_")}
    (root / "captions.json").write_text(json.dumps(train))
    return {"pairs": _shards(world, root / "shards", train)}


def _weclip_setup(ws, assets, root: Path) -> dict:
    shutil.copyfile(assets["text0"], root / "text.safetensors")
    return {"data": _copy_world(ws, root), "prototypes": root / "text.safetensors"}


def _weclip_args(inputs, out, mode):
    return ["train-decoder", inputs["data"], "-p", inputs["prototypes"], "-o", out, "--recipe", "weclip", *DECODER]


def _vpl_setup(ws, assets, root: Path) -> dict:
    pseudo = root / "pseudo"
    shutil.copytree(ws.pseudo, pseudo)
    return {"pseudo": pseudo, "prototypes": ws.text}


def _segment_setup(key: str) -> Callable:
    def setup(ws, assets, root: Path) -> dict:
        shutil.copyfile(assets[f"{key}0"], root / f"{key}.safetensors")
        return {"weights": root / f"{key}.safetensors", "world": ws.world}
    return setup


def _segment_args(dense: list[str]) -> tuple[Callable, Callable]:
    def base(inputs, out):
        return ["segment", inputs["world"], "--split", "val", "-o", out, *rc.SEG_TINY, *SIDE, "--classes",
                "star,circle", *dense[:-1], dense[-1] if dense[-1] != "WEIGHTS" else inputs["weights"]]

    def first(inputs, out, mode):
        return [*base(inputs, out), "--shard", "0/2"]

    def second(inputs, out, mode):
        return [*base(inputs, out), *(["--shard", "1/2"] if mode == "next shard" else [])]

    return first, second


def _clip_setup(ws, assets, root: Path) -> dict:
    shutil.copytree(assets["clip0"], root / "clip")
    return {"clip": root / "clip", "world": ws.world}


def _clip_args(inputs, out, mode: str, first: bool) -> list:
    """`segment` with the toy CLIP read from its folder: the first command shard 0 of 2 (or, ``finished`` and
    ``killed``, the whole run), the second shard 1 (``next shard``) or the whole run."""
    shard = ["--shard", "0/2"] if first and mode in ("next shard", "plain run") else \
        ["--shard", "1/2"] if mode == "next shard" else []
    return ["segment", inputs["world"], "--split", "val", "-o", out, "--model", f"local-dir:{inputs['clip']}",
            "--dense", "maskclip", "--classes", "star,circle", *rc.TEXT_ARGS, *rc.CPU, *SIDE, *shard]


def _resumed(args_of: Callable) -> Callable:
    return lambda inputs, out, mode: [*args_of(inputs, out, mode), "--resume"]


_proxy_first, _proxy_second = _segment_args(["--dense", "proxyclip", "--proxy-model", rc.DINO_MODEL,
                                             "--proxy-weights", "WEIGHTS"])
_sam_first, _sam_second = _segment_args(["--dense", "trident", "--proxy-model", rc.DINO_MODEL, "--proxy-weights",
                                         "none", "--sam-model", "test", "--sam-weights", "WEIGHTS"])
TRAINING = ("interrupted", "finished")
SHARDS = ("next shard", "plain run")
RERUNS = ("next shard", "plain run", "finished", "killed")  # killed: kill -9 of the first command's process group

STORIES = {
    "train-pgseg on a caption folder": Story(
        _pgseg_setup, _pgseg_args, _resumed(_pgseg_args),
        {"caption edited": (_edit_caption, False), "image replaced": (_image_replaced("pairs"), False),
         "--init replaced": (_swapped_to("init", "init1"), False),
         "data moved": (_moved("pairs"), True),
         "--init moved": (_moved("init"), True), "absolute paths": (_absolute, True)},
        lambda out: _tensors(out / "pgseg.safetensors"), ("pgseg.safetensors", "_stage.json"), TRAINING,
        "vpltool.io.write_checkpoint"),
    "train-pgseg --multi-label --nouns": Story(
        _nouns_setup, _nouns_args, _resumed(_nouns_args),
        {"--nouns edited": (_edit_nouns, False), "--nouns moved": (_moved("nouns"), True)},
        lambda out: _tensors(out / "pgseg.safetensors"), ("pgseg.safetensors", "_stage.json"), ("finished",),
        stand_in=False),
    "train-pgseg on shards": Story(
        _shards_setup, lambda i, o, m: ["train-pgseg", i["pairs"], "-o", o, *PGSEG],
        lambda i, o, m: ["train-pgseg", i["pairs"], "-o", o, *PGSEG, "--resume"],
        {"shard replaced (same name and size)": (_shard_replaced, False), "shards moved": (_moved("pairs"), True)},
        lambda out: _tensors(out / "pgseg.safetensors"), ("pgseg.safetensors", "_stage.json"), TRAINING,
        "vpltool.io.write_checkpoint"),
    "train-decoder --recipe weclip": Story(
        _weclip_setup, _weclip_args, _resumed(_weclip_args),
        {"labels.csv line edited": (_edit_labels, False), "image replaced": (_image_replaced("data"), False),
         "prototypes replaced": (_swapped_to("prototypes", "text1"), False),
         "dataset moved": (_moved("data"), True), "absolute paths": (_absolute, True)},
        lambda out: _tensors(out / "decoder.safetensors"), ("decoder.safetensors",), TRAINING,
        "vpltool.stages.train_decoder.save_checkpoint"),
    "train-decoder on crf masks": Story(
        _vpl_setup, lambda i, o, m: ["train-decoder", i["pseudo"], "-p", i["prototypes"], "-o", o, *DECODER],
        lambda i, o, m: ["train-decoder", i["pseudo"], "-p", i["prototypes"], "-o", o, *DECODER, "--resume"],
        {"pseudo mask edited": (_edit_mask, False), "pseudo folder moved": (_moved("pseudo"), True)},
        lambda out: _tensors(out / "decoder.safetensors"), ("decoder.safetensors",), TRAINING,
        "vpltool.stages.train_decoder.save_checkpoint"),
    "segment --dense proxyclip --shard": Story(
        _segment_setup("dino"), _proxy_first, _proxy_second,
        {"--proxy-weights replaced": (_swapped_to("weights", "dino1"), False),
         "--proxy-weights moved": (_moved("weights"), True)},
        _masks, ("_stage.json",), SHARDS),
    "segment --model local-dir:DIR (a CLIP from local bytes)": Story(
        _clip_setup, lambda i, o, m: _clip_args(i, o, m, True), lambda i, o, m: _clip_args(i, o, m, False),
        {"weights replaced under their name": (_weights_replaced("clip", "open_clip_model.safetensors", "clip1"),
                                               False),
         "weights rewritten, the same bytes": (_weights_replaced("clip", "open_clip_model.safetensors", "clip0w"),
                                               True)},
        _masks, ("_stage.json",), RERUNS, stand_in=False),
    "segment --dense trident --shard": Story(
        _segment_setup("sam"), _sam_first, _sam_second,
        {"--sam-weights replaced": (_swapped_to("weights", "sam1"), False),
         "--sam-weights moved": (_moved("weights"), True)},
        _masks, ("_stage.json",), SHARDS),
}


# --------------------------------------------------------------------------------------------- running a story
def _interrupting(target: str):
    """A patch of the checkpoint writer ``target`` that stops the command (as a kill would, but in this process:
    KeyboardInterrupt) right after its :data:`STOP_AT`-th checkpoint is on disk."""
    module, name = target.rsplit(".", 1)
    import importlib

    real = getattr(importlib.import_module(module), name)

    def write_then_stop(*args, **kwargs):
        result = real(*args, **kwargs)
        if int(args[3]) >= STOP_AT:
            raise KeyboardInterrupt
        return result

    return mock.patch(target, write_then_stop)


def _killed(args: list, out: Path) -> None:
    """``vpltool ARGS`` in a child process in its own session (paced, :data:`robustness_cases.PACED_CLI`), killed
    with ``kill -9`` of its whole process group once its first item is on disk; no process of it survives."""
    import signal

    proc = rc.paced_cli(args)
    try:
        rc.wait_until(proc, lambda: any(Path(out).glob("*.png")))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL and not rc.survivors(proc.pid)


def _run(story: Story, args: list, mode: str, first: bool, kill: bool = True):
    """One command; the first of an interrupted story stops after its checkpoint (exit 130), the first of a
    ``killed`` one is killed with kill -9 mid-run (``kill``: else it runs whole)."""
    if first and mode == "killed" and kill:
        _killed(args, args[args.index("-o") + 1])
        return None
    if first and mode == "interrupted":
        with _interrupting(story.interrupt):
            r = rc.invoke(*args)
        assert r.exit_code == 130, r.output[-1500:]
        return r
    return rc.invoke(*args)


def _certified(out: Path, story: Story) -> dict[str, tuple[int, int] | None]:
    def stamp(p: Path):
        return (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None

    return {name: stamp(out / name) for name in story.certified}


def _clean_result(story: Story, ws, assets, root: Path, changes: list[str], mode: str):
    """The two commands afresh on inputs with the same change made before the first: nothing changes between."""
    inputs = story.setup(ws, assets, root)
    for change in changes:
        inputs = story.changes[change][0](inputs, root, assets)
    out = root / "out"
    for n, args_of in enumerate((story.first, story.second)):
        r = _run(story, args_of(inputs, out, mode), mode, n == 0, kill=False)  # nothing changed: run it whole
        assert n == 0 or r.exit_code == 0, r.output[-1500:]
    return story.result(out)


@pytest.mark.parametrize("name", sorted(STORIES))
def test_a_changed_input_is_refused_or_recomputed_never_certified_mixed(ws, assets, name, tmp_path, monkeypatch):
    story = STORIES[name]
    if story.stand_in:  # train-pgseg's model family as the tests' tiny stand-in: seconds, not minutes
        pgseg_stand_in.install(monkeypatch)
    counter = iter(range(10**6))

    def run(change, mode):
        root = tmp_path / f"ex{next(counter)}"
        root.mkdir()
        monkeypatch.chdir(root)  # paths as the user types them: relative to the working folder
        inputs = {k: (Path(os.path.relpath(v, root)) if isinstance(v, Path) and str(v).startswith(str(root)) else v)
                  for k, v in story.setup(ws, assets, root).items()}
        out = Path("out")
        _run(story, story.first(inputs, out, mode), mode, first=True)
        apply, same_bytes = story.changes[change]
        inputs = apply(inputs, root, assets)
        before = _certified(root / out, story)
        r = rc.invoke(*story.second(inputs, out, mode))
        shown = f"{name}: {change}, {mode}\n{r.output[-1500:]}"
        print(f"{name} | {change} | {mode} | exit {r.exit_code} | {r.output.strip().splitlines()[-1][:200]}")
        assert "Traceback" not in r.output and (r.exception is None or isinstance(r.exception, SystemExit)), shown
        if same_bytes:
            assert r.exit_code == 0, f"the same bytes by another path were refused: {shown}"
        assert r.exit_code in (0, 2), shown
        if r.exit_code == 2:
            lines = [line for line in r.output.splitlines() if line.strip()]
            errors = rc.error_lines(r.output)
            assert len(errors) == 1 and lines[-1] == errors[0], shown
            assert _certified(root / out, story) == before, f"a refused run changed what was certified: {shown}"
            return
        got = story.result(root / out)
        clean = root / "clean"
        clean.mkdir()
        monkeypatch.chdir(clean)
        want = _clean_result(story, ws, assets, clean, [change], mode)
        assert got == want, f"certified a result of mixed inputs (differs from a clean run on the new ones): {shown}"

    for forced in reversed(FORCED.get(name, ())):  # drawn every time, beside the draws
        run = example(**forced)(run)
    FUZZ(given(change=st.sampled_from(sorted(story.changes)), mode=st.sampled_from(story.modes))(run))()


# the draws each run makes whatever hypothesis draws: a model's weights replaced under their name between two shards,
# and before a finished folder's re-run, and after the first command was killed with kill -9
FORCED = {"segment --model local-dir:DIR (a CLIP from local bytes)": (
    {"change": "weights replaced under their name", "mode": "next shard"},
    {"change": "weights replaced under their name", "mode": "finished"},
    {"change": "weights replaced under their name", "mode": "killed"})}


# --------------------------------------------------------------------------------------------- a chain of stages
def _chain(clip: Path, world: Path) -> list[list]:
    """The pipeline's stages on the toy CLIP read from ``clip`` (``local-dir``), each reading the one before; the
    later stages take the CLIP from the records (text-prototypes from the features folder's)."""
    return [["extract", world, "--split", "val", "-o", "features", "--model", f"local-dir:{clip}", *rc.CPU,
             "--workers", "1", "--cache", "full"],
            ["text-prototypes", "features", "-o", "text.safetensors", *rc.TEXT_ARGS, *rc.CPU],
            ["cam", "features", "-p", "text.safetensors", "-o", "cams", *rc.CPU],
            ["eval", "cams", "--json", "scores.json"]]


def _chain_result(root: Path) -> dict:
    """What the chain certified: every CAM's maps, and the scores."""
    scores = json.loads((root / "scores.json").read_text())
    return {**{p.name: _tensors(p) for p in sorted((root / "cams").glob("*.safetensors"))},
            "scores": (scores.get("miou"), scores.get("iou"))}


def test_a_chain_whose_model_changes_between_stages_is_refused_or_recomputed(ws, assets, tmp_path, monkeypatch):
    """The CLIP's weights replaced between two stages of a chain (after extract, after text-prototypes): a later
    stage refuses in one line, or the chain certifies what a clean chain on the new weights alone does. The same
    bytes written anew are accepted."""
    counter = iter(range(10**6))

    @settings(FUZZ, max_examples=1)
    @given(change=st.sampled_from(["clip1", "clip0w"]), at=st.sampled_from([1, 2]))
    @example(change="clip1", at=1)  # every time: the weights replaced right after extract
    def run(change, at):
        root = tmp_path / f"chain{next(counter)}"
        (root / "clip").parent.mkdir(parents=True)
        shutil.copytree(assets["clip0"], root / "clip")
        monkeypatch.chdir(root)
        stages = _chain(Path("clip"), ws.world)
        for n, args in enumerate(stages):
            if n == at:
                shutil.copyfile(assets[change], root / "clip" / "open_clip_model.safetensors")
            r = rc.invoke(*args)
            shown = f"chain: {change} before {args[0]}\n{r.output[-1500:]}"
            print(f"chain | {change} before stage {at} | {args[0]} | exit {r.exit_code} | "
                  f"{r.output.strip().splitlines()[-1][:200]}")
            assert "Traceback" not in r.output and r.exit_code in (0, 2), shown
            if r.exit_code == 2:
                lines = [line for line in r.output.splitlines() if line.strip()]
                assert len(rc.error_lines(r.output)) == 1 and lines[-1].startswith("error:"), shown
                assert change != "clip0w", f"the same bytes written anew were refused: {shown}"
                return
        got = _chain_result(root)
        clean = root / "clean"
        shutil.copytree(root / "clip", clean / "clip")
        monkeypatch.chdir(clean)
        for args in _chain(Path("clip"), ws.world):
            rc.cli_ok(*args)
        assert got == _chain_result(clean), f"the chain certified a mix of two CLIPs ({change} before stage {at})"

    run()
