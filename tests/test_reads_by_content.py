"""Every model file a run reads is recorded by content in one place (vpltool.io.reads, filled by the registry's door),
for every registered dense method and every model family: the folder's records name each file a load read, and a
recorded weights file replaced by another model's bytes between two shards (or between a kill and the re-run) is
refused in one line before any model loads, leaving no ``_stage.json``; with the bytes put back the folder finishes.

The registries are enumerated, so a new built-in method or family with no tiny model here fails these tests (add its
row to :data:`METHOD_OPTIONS` or :data:`FAMILY_RUNS`). Tiny seeded models (the toy CLIP, DINO and SAM, a tiny SAM 3,
a tiny C-RADIOv3 with SigLIP 2's text tower, a tiny PGSeg, Talk2DINO and decoder), a 2 + 3 scene world.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import model_kinds as mk  # tests/ is on sys.path
import numpy as np
import pytest
from cli_once import invoke

from vpltool import io
from vpltool.config.dense import DENSE_SPECS
from vpltool.io.digests import sha256_file
from vpltool.models import registry

TESTS = Path(__file__).parent
TEXT = ["--templates", "a photo of a {}.", "--background", "grass,sky"]
SEG = ["--split", "val", "--device", "cpu", "--classes", "star,circle"]
# files a run reads outside the registry's door, each recorded by content another way (so a new one fails the test)
OUTSIDE_THE_LEDGER: dict[str, str] = {}


@dataclasses.dataclass
class Kit:
    """The tiny models and inputs (made once): ``models`` holds every model file, so that what a run opens under it
    is what the ledger must name."""

    root: Path
    world: Path
    models: Path
    clip: Path  # the toy CLIP's local-dir folder
    dino: Path
    sam: Path
    sam3: Path  # a tiny SAM 3, Hugging Face's layout
    radio: Path
    language: Path
    regions: Path
    soft: Path

    def out(self, name: str) -> Path:
        path = self.root / "out" / name
        shutil.rmtree(path, ignore_errors=True)
        return path


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> Kit:
    import tiny_towers
    from PIL import Image

    from vpltool.demo.make_world import write_dataset
    from vpltool.models.backbones.loading import registered_folder
    from vpltool.models.backbones.sam3_files import write_tiny

    root = tmp_path_factory.mktemp("reads")
    world = write_dataset(root / "world", n_train=2, n_val=3, seed=0)
    models = root / "models"
    models.mkdir()
    clip = Path(shutil.copytree(registered_folder("vpltool-toy"), models / "clip"))
    dino = Path(shutil.copy(mk.TOY_DINO, models / "dino.safetensors"))
    sam = Path(shutil.copy(mk.TOY_SAM, models / "sam.safetensors"))
    sam3 = write_tiny(models / "sam3", "hf")
    sys.path.insert(0, str(TESTS.parent / "parity"))
    import radseg_files

    radio, language = radseg_files.tiny_files(models / "radseg", tiny_towers.RADIO, ["star", "circle"])
    regions, soft = root / "regions", root / "soft"
    regions.mkdir()
    soft.mkdir()
    for image in sorted((world / "images").glob("val_*")):  # four regions, as tests/method_matrix.py draws them
        w, h = Image.open(image).size
        ids = np.zeros((h, w), np.int64)
        ids[h // 4: 3 * h // 4, w // 4: 3 * w // 4], ids[: h // 4], ids[3 * h // 4:, : w // 2] = 1, 2, 3
        np.savez_compressed(regions / f"{image.stem}.npz", instance_mask=ids)
        masks = np.stack([(ids == i) * 3.0 for i in range(3)]).astype(np.float16)
        np.savez_compressed(soft / f"{image.stem}.npz", masks=masks)
    return Kit(root, world, models, clip, dino, sam, Path(sam3), Path(radio), Path(language), regions, soft)


def _proxy(k: Kit) -> list[object]:
    return ["--proxy-model", "test_vit", "--proxy-weights", k.dino]


# every built-in --dense method: its options here beyond the CLIP (the toy CLIP, a local-dir folder), and the file
# a swap replaces (its own model's weights; the CLIP's for a method that reads no other model)
METHOD_OPTIONS: dict[str, Callable[[Kit], tuple[list[object], Path]]] = {
    **{m: (lambda k: ([], k.clip / "open_clip_model.safetensors"))
       for m in ("none", "maskclip", "sclip", "clearclip", "naclip", "sc-clip")},
    "proxyclip": lambda k: (_proxy(k), k.dino),
    "cass": lambda k: (_proxy(k), k.dino),
    "corrclip": lambda k: ([*_proxy(k), "--region-masks", k.regions], k.dino),
    "ov-stitcher": lambda k: ([*_proxy(k), "--region-masks", k.regions, "--short-side", 112, "--slide-crop", 112,
                               "--slide-stride", 56], k.dino),
    "textregion": lambda k: (["--region-masks", k.soft], k.clip / "open_clip_model.safetensors"),
    "trident": lambda k: ([*_proxy(k), "--sam-model", "toy", "--sam-weights", k.sam], k.sam),
    # one template, not ImageNet's 80 (~2,200 prompts a run through its SigLIP 2 text tower): the same files read
    "radseg": lambda k: (["--proxy-model", "vpl_test_radio_v3", "--proxy-weights", k.radio, "--language-model",
                          k.language, "--templates", "a photo of a {}."], k.radio),
    "sam3": lambda k: (["--sam3-weights", k.sam3], k.sam3 / "model.safetensors"),
    "activesam": lambda k: (["--sam3-weights", k.sam3, "--preview-resolution", 56, "--hypernym-tokens", 0],
                            k.sam3 / "model.safetensors"),
}
BUILT_IN = sorted(name for name, spec in DENSE_SPECS.items() if spec.plugin is None)


def test_every_built_in_method_has_a_row():
    """A built-in method with no tiny model here fails, so that none is forgotten."""
    assert sorted(METHOD_OPTIONS) == BUILT_IN, "add the method's row to METHOD_OPTIONS"


_OPENED: list[set[str]] = []


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _OPENED and isinstance(args[0], (str, os.PathLike)):
        _OPENED[-1].add(os.path.abspath(args[0]))


sys.addaudithook(_audit)  # (for the process: it records only while a run below collects)


def _run(args: list[object], opened: set[str] | None = None):
    if opened is not None:
        _OPENED.append(opened)
    try:
        return invoke(args)
    finally:
        if opened is not None:
            _OPENED.pop()


@contextlib.contextmanager
def no_model_loads() -> Iterator[None]:
    """While it is open, any family's load through the registry fails the test: the refusal must come first."""
    with pytest.MonkeyPatch.context() as mp:
        for name in registry.families():
            fam = registry.family(name)

            def boom(*a, _name=name, **kw):
                raise AssertionError(f"the {_name} model loaded")

            mp.setitem(registry._FAMILIES, name, dataclasses.replace(fam, load=boom))
        yield


def _refused_in_one_line(r, out: Path, swapped: Path) -> str:
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert r.exit_code == 2 and len(errors) == 1 and "Traceback" not in r.output, r.output[-1500:]
    line = errors[0]
    # the ledger's line; or, for a file a parameter already names by content (a local-dir CLIP, --proxy-weights,
    # --sam-weights), that parameter's, which is compared first: either names the file (or its folder), both digests
    # and the fix
    assert str(swapped) in line or f"{swapped.parent}:" in line or str(swapped.parent) + " " in line, line
    assert len(re.findall(r"[0-9a-f]{12}…", line)) == 2 and "--overwrite" in line and "another --out" in line, line
    if "from other inputs" not in line:
        assert str(swapped) in line and "put the file back" in line, line
    assert not (out / "_stage.json").exists()
    return errors[0]


def _another_model(path: Path) -> None:
    """Another model of the same architecture written over ``path`` (a RADIO checkpoint: another seed's)."""
    if path.name == "radio.pth.tar":
        import radseg_files
        import tiny_towers

        radseg_files.write_radio_checkpoint(path, model=tiny_towers.RADIO, hidden=64, seed=1,
                                            text_dim=radseg_files.TINY_TEXT["projection_size"])
    else:
        mk.replace_with_another(path)


def _swap_then_back(path: Path, run: Callable[[], None]) -> None:
    saved = path.read_bytes()
    _another_model(path)
    assert path.read_bytes() != saved
    try:
        run()
    finally:
        path.write_bytes(saved)


def _digest(path: Path) -> str:
    return sha256_file(path)


@pytest.mark.parametrize("method", BUILT_IN)
def test_a_method_s_weights_are_recorded_by_content_and_a_swap_between_shards_is_refused(kit, method):
    own, swapped = METHOD_OPTIONS[method](kit)
    out = kit.out(f"seg_{method}")
    from vpltool.models.dense import dense_hooks

    clip = [] if type(dense_hooks(method)).own_backbone else ["--model", f"local-dir:{kit.clip}", *TEXT]  # none read
    args = ["segment", kit.world, *SEG, "-o", out, *clip, "--short-side", 32, "--dense", method, *own]
    opened: set[str] = set()
    r = _run([*args, "--shard", "0/2"], opened)
    assert r.exit_code == 0, r.output[-2000:]
    reads = json.loads((out / "_run.json").read_text())["inputs"]["reads"]
    read = {p for p in opened if p.startswith(f"{kit.models}{os.sep}") and os.path.isfile(p)
            and not any(p.startswith(str(kit.models / o)) for o in OUTSIDE_THE_LEDGER)}
    assert read, "the run read no model file"
    assert read <= set(reads), f"read outside the ledger: {sorted(read - set(reads))}"
    assert reads[str(swapped)]["sha256"] == _digest(swapped)
    assert reads[str(swapped)]["size"] == swapped.stat().st_size

    def shard_1_refused() -> None:
        with no_model_loads():
            _refused_in_one_line(_run([*args, "--shard", "1/2"]), out, swapped)

    _swap_then_back(swapped, shard_1_refused)
    r = _run([*args, "--shard", "1/2"])
    assert r.exit_code == 0 and (out / "_stage.json").is_file(), r.output[-2000:]
    record = json.loads((out / "_stage.json").read_text())
    assert record["inputs"]["reads"] == reads | record["inputs"]["reads"]
    assert record["inputs"]["reads"][str(swapped)]["sha256"] == _digest(swapped)


# ---- every model family: its model file replaced between a kill and the re-run
def _pgseg(k: Kit) -> Path:
    from vpltool.models.text import pgseg

    path = k.models / "pgseg.safetensors"
    if not path.exists():
        pgseg.save_checkpoint(path, pgseg.build_model(pgseg.tiny_config(), seed=3).eval())
    return path


def _talk2dino(k: Kit) -> Path:
    from vpltool.models.text.family import text_family

    path = k.models / "talk2dino.safetensors"
    if not path.exists():
        fam = text_family("talk2dino")
        cfg = fam.model_config(fam.TrainConfig.recipe_config("demo", dino_weights=str(k.dino), crop_size=64))
        fam.save_checkpoint(path, fam.build_model(cfg, 0))
    return path


def _decoder(k: Kit) -> Path:
    """A one-step decoder on the world's own masks over the tiny test CLIP (no CLIP file: the decoder's is read)."""
    from vpltool.config import DecoderConfig, RuntimeConfig, TextPrototypesConfig
    from vpltool.data import open_dataset
    from vpltool.models import ModelSpec
    from vpltool.runtime.numerics import run_numerics
    from vpltool.stages.text_prototypes import run_text_prototypes
    from vpltool.stages.train_decoder import run_train_decoder

    path = k.models / "decoder" / "decoder.safetensors"
    if path.exists():
        return path
    dataset = open_dataset(k.world, "train")
    pseudo = k.root / "gt_pseudo"
    pseudo.mkdir()
    for item in dataset.items:
        shutil.copy(item.gt, pseudo / f"{item.id}.png")
    io.write_stage_record(pseudo, "crf", params={}, inputs={"dataset": dataset.identity()},
                          count=len(dataset.items), ids=[i.id for i in dataset.items], numerics=run_numerics())
    protos = k.root / "text.safetensors"
    run_text_prototypes(dataset.classes, protos, ModelSpec("vpl-test-vit", "none"),
                        TextPrototypesConfig(templates="a photo of a {}.", background="grass,sky"),
                        device="cpu")
    cfg = DecoderConfig(dim=16, layers=1, heads=2, crop_size=64, batch_size=2, iters=1, log_every=1, warmup_iters=1)
    run_train_decoder(pseudo, protos, path.parent, cfg, RuntimeConfig(device="cpu", workers=1))
    return path


# every model family: (its weights file, the command that reads it writing OUT) -> the file a swap replaces
FAMILY_RUNS: dict[str, Callable[[Kit, Path], tuple[Path, list[object]]]] = {
    "clip": lambda k, out: (k.clip / "open_clip_model.safetensors",
                            ["segment", k.world, *SEG, "-o", out, "--model", f"local-dir:{k.clip}", *TEXT,
                             "--dense", "maskclip", "--short-side", 32]),
    "dino": lambda k, out: (k.dino, ["segment", k.world, *SEG, "-o", out, "--model", f"local-dir:{k.clip}", *TEXT,
                                     "--dense", "proxyclip", *_proxy(k), "--short-side", 32]),
    "sam": lambda k, out: (k.sam, ["segment", k.world, *SEG, "-o", out, "--model", f"local-dir:{k.clip}", *TEXT,
                                   "--dense", "trident", *_proxy(k), "--sam-model", "toy", "--sam-weights", k.sam,
                                   "--short-side", 32]),
    "sam3": lambda k, out: (k.sam3 / "model.safetensors", ["segment", k.world, *SEG, "-o", out, "--dense", "sam3",
                                                           "--sam3-weights", k.sam3]),
    "pgseg": lambda k, out: (_pgseg(k), ["segment", k.world, *SEG, "-o", out, "--model", f"pgseg:{_pgseg(k)}",
                                         "--bg-thresh", "0", "--short-side", 48, "--slide-crop", 0]),
    "talk2dino": lambda k, out: (_talk2dino(k), ["segment", k.world, *SEG, "-o", out, "--model",
                                                 f"talk2dino:{_talk2dino(k)}", "--short-side", 64, "--slide-crop", 0]),
    "decoder": lambda k, out: (_decoder(k), ["predict", _decoder(k), "--split", "val", "--device", "cpu", "-o", out]),
}
FAMILIES = sorted(name for name in registry.families()
                  if registry.BACKBONES.plugin(name) is None and registry.TEXT_FAMILIES.plugin(name) is None)


def test_every_family_has_a_row():
    assert sorted(FAMILY_RUNS) == FAMILIES, "add the family's row to FAMILY_RUNS"


class _Killed(BaseException):
    """What a kill -9 leaves, in this process: every item written, the run record there, no _stage.json."""


@pytest.mark.parametrize("family", FAMILIES)
def test_a_family_s_file_swapped_between_a_kill_and_the_re_run_is_refused(kit, family):
    out = kit.out(f"kill_{family}")
    swapped, args = FAMILY_RUNS[family](kit, out)

    def killed(self, *a, **kw):
        raise _Killed()

    with pytest.MonkeyPatch.context() as mp, pytest.raises(_Killed):
        mp.setattr(io.StageFolder, "finish", killed)
        _run(args)
    assert (out / "_run.json").is_file() and not (out / "_stage.json").exists()
    reads = json.loads((out / "_run.json").read_text())["inputs"]["reads"]
    assert reads[str(swapped)] == {"sha256": _digest(swapped), "size": swapped.stat().st_size}
    done = sorted(p for p in out.iterdir() if p.suffix == ".png")
    done[0].unlink()  # an item the kill left unwritten: the re-run has work, so a model would load

    def rerun_refused() -> None:
        with no_model_loads():
            _refused_in_one_line(_run(args), out, swapped)

    _swap_then_back(swapped, rerun_refused)
    r = _run(args)
    assert r.exit_code == 0 and (out / "_stage.json").is_file(), r.output[-2000:]
    assert json.loads((out / "_stage.json").read_text())["inputs"]["reads"][str(swapped)]["sha256"] == \
        _digest(swapped)


# ---- the ledger's span, a file replaced between check and load, a plugin's family
def test_a_file_replaced_between_the_check_and_the_load_is_refused_before_the_load_reads_it(kit, monkeypatch):
    out = kit.out("check_then_load")
    swapped = kit.sam3 / "model.safetensors"
    real, loaded = registry.read_by_content, []

    def replace_at_the_load(fam, spec, files=None):  # the load's door (files given), after the run's check
        if files is not None and fam.name == "sam3" and not loaded:
            loaded.append(_another_model(swapped))
        return real(fam, spec, files)

    monkeypatch.setattr(registry, "read_by_content", replace_at_the_load)
    saved = swapped.read_bytes()
    try:
        with no_model_loads():
            r = _run(["segment", kit.world, *SEG, "-o", out, "--dense", "sam3", "--sam3-weights", kit.sam3])
    finally:
        swapped.write_bytes(saved)
    assert loaded, "the load was never reached"
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert r.exit_code == 2 and len(errors) == 1 and "Traceback" not in r.output, r.output[-1500:]
    assert f"{swapped}: replaced after this run read it (sha256 " in errors[0] and "put the file back" in errors[0]
    assert not (out / "_stage.json").exists()


def test_nothing_is_kept_outside_a_run(kit, tmp_path):
    """The ledger lives for one run (a command, a Python stage) or one open folder: a folder opened outside a run
    records only what loads while it is open, never what an earlier call read."""
    from vpltool.io import reads
    from vpltool.models.backbones.dino import DinoSpec

    spec = DinoSpec("test_vit", str(kit.dino))
    registry.check_model("dino", spec)  # outside any run: kept nowhere
    assert reads.ledger() == {}
    with io.naming_scope():
        registry.check_model("dino", spec)
        assert list(reads.ledger()) == [str(kit.dino)]
        with io.StageFolder(tmp_path / "in_a_run", "segment", {"x": 1}, shard=(0, 2)):
            pass
    assert list(json.loads((tmp_path / "in_a_run" / "_run.json").read_text())["inputs"]["reads"]) == [str(kit.dino)]
    assert reads.ledger() == {}
    run = tmp_path / "outside" / "_run.json"
    with io.StageFolder(run.parent, "segment", {"x": 1}, shard=(0, 2)):
        assert "inputs" not in json.loads(run.read_text())  # the earlier run's reads are not this folder's
        registry.check_model("dino", spec)  # read while the folder is open: recorded at once
        assert list(json.loads(run.read_text())["inputs"]["reads"]) == [str(kit.dino)]
    assert reads.ledger() == {}


def test_a_plugin_s_family_is_recorded_and_refused_alike(tmp_path, monkeypatch):
    """A family registered outside vpltool (as a plugin's module registers it) goes through the same door."""
    import torch
    from safetensors.torch import load_file, save_file

    from vpltool.io.reads import FileReplaced

    weights = tmp_path / "plugin.safetensors"
    save_file({"weight": torch.ones(2, 2), "bias": torch.zeros(2)}, str(weights))

    def load(spec, device="cpu", **_):
        layer = torch.nn.Linear(2, 2)
        layer.load_state_dict(load_file(str(spec)))
        return layer

    monkeypatch.setitem(registry._FAMILIES, "ledger-plugin", registry.Family("ledger-plugin", load))
    out = tmp_path / "out"
    with io.naming_scope(), io.StageFolder(out, "segment", {"x": 1}, shard=(0, 2)):
        registry.load_model("ledger-plugin", weights)
    assert json.loads((out / "_run.json").read_text())["inputs"]["reads"][str(weights)]["sha256"] == \
        _digest(weights)
    save_file({"weight": torch.full((2, 2), 2.0), "bias": torch.zeros(2)}, str(weights))
    with pytest.raises(FileReplaced, match="put the file back"), io.naming_scope(), \
            io.StageFolder(out, "segment", {"x": 1}, shard=(1, 2)):
        registry.load_model("ledger-plugin", weights)
    assert not (out / "_stage.json").exists()


def test_a_file_the_run_named_by_content_before_its_check_is_held_to_that_digest(kit, tmp_path):
    """A record's parameter names a file by its digest (io.file_identity) before the check reads it: other bytes at
    the check are refused (the ledger's own hash must not name the file anew over what the record says)."""
    from vpltool.io.reads import FileReplaced
    from vpltool.models.backbones.dino import DinoSpec

    path = Path(shutil.copy(kit.dino, tmp_path / "dino.safetensors"))
    with io.naming_scope():
        io.file_identity(path)
        _another_model(path)
        with pytest.raises(FileReplaced, match="when it named it"):
            registry.check_model("dino", DinoSpec("test_vit", str(path)))
