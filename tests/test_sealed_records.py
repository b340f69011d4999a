"""A stage record that cannot be edited silently (its seal, ``record_digest``), for every folder kind, and
``--overwrite`` that fails keeps the last good result (:mod:`vpltool.io.beside`), for every stage that writes items.

The folder kinds are not listed by hand: :func:`folder_kinds` finds every stage name of a module that writes a
``_stage.json`` (and each text family's training stage), and a test fails when a kind has no maker here."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from vpltool import io
from vpltool.errors import ContractError, VplError

import robustness_cases as rc  # tests/ is on sys.path

VPLTOOL = Path(io.__file__).resolve().parents[1]
WRITERS = ("StageFolder(", "write_stage_record(", "prepare_stage_dir(")


def folder_kinds() -> set[str]:
    """Every stage whose folder holds a ``_stage.json``: the ``STAGE`` of each module (outside io) that writes one,
    and the training stage each text family records (``train_text`` writes ``cfg.STAGE``)."""
    from vpltool.models.registry import TEXT_FAMILIES, text_config

    found = set()
    for path in VPLTOOL.rglob("*.py"):
        if path.parent.name == "io":
            continue
        text = path.read_text()
        if any(w in text for w in WRITERS):
            found |= set(re.findall(r'^STAGE(?::[^=]*)? = "([a-z0-9-]+)"', text, re.M))
    return found | {text_config(f).STAGE for f in TEXT_FAMILIES}


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> rc.Workspace:
    return rc.Workspace(tmp_path_factory.mktemp("sealed"))


def _amg(ws: rc.Workspace, name: str) -> Path:
    """segment-anything's amg.py layout, one all-background mask per train image (no SAM runs)."""
    import numpy as np
    from PIL import Image

    root = ws.out(name)
    for f in sorted(ws.cams.glob("*.safetensors")):
        (root / f.stem).mkdir(parents=True)
        Image.fromarray(np.zeros((96, 96), np.uint8)).save(root / f.stem / "0.png")
    return root


def _train(ws: rc.Workspace, family: str, name: str) -> Path:
    """A finished training folder of a text family: pgseg's stand-in, talk2dino with the toy DINO (a few steps)."""
    from vpltool.config import RuntimeConfig
    from vpltool.models.text.family import text_family
    from vpltool.stages.train_text import run_train_text

    out = ws.out(name)
    with pytest.MonkeyPatch.context() as mp:
        if family == "pgseg":
            import pgseg_stand_in

            from vpltool.config.pgseg import pgseg_recipe

            pgseg_stand_in.install(mp)
            cfg = pgseg_recipe("cpu", batch_size=2, epochs=1, warmup_epochs=1, crop_size=32, min_scale=0.3,
                               log_every=1, checkpoint_every=2)
        else:
            toy = VPLTOOL / "assets" / "toy-dino" / "model.safetensors"
            cfg = text_family("talk2dino").TrainConfig.recipe_config(
                "demo", batch_size=2, epochs=1, crop_size=32, log_every=1, checkpoint_every=2, dino_weights=str(toy))
        run_train_text(ws.world, out, cfg, RuntimeConfig(device="cpu", workers=1))
    return out


# kind -> a finished folder of it (the workspace's own where it has one)
MAKERS = {
    "make-world": lambda ws: ws.world,
    "extract": lambda ws: ws.features,
    "cam": lambda ws: ws.cams,
    "crf": lambda ws: ws.pseudo,
    "predict": lambda ws: ws.predictions(),
    "sam-pseudo": lambda ws: _made(ws, "sealed_sam", "sam-pseudo", ws.cams, "--masks", _amg(ws, "sealed_amg"),
                                   "--start", "argmax", "--workers", "1"),
    "segment": lambda ws: _made(ws, "sealed_segment", "segment", ws.world, "--split", "val", *rc.TINY, *rc.CPU,
                                "--classes", "star,circle", "--dense", "maskclip"),
    "make-pairs": lambda ws: _made(ws, "sealed_pairs", "make-pairs", out_first=True, extra=("--scenes", "2")),
    "report": lambda ws: _report(ws),
    "train-pgseg": lambda ws: _train(ws, "pgseg", "sealed_pgseg"),
    "train-text": lambda ws: _train(ws, "talk2dino", "sealed_talk2dino"),
}


def _made(ws: rc.Workspace, name: str, command: str, *args: object, out_first: bool = False,
          extra: tuple = ()) -> Path:
    out = ws.out(name)
    rc.cli_ok(command, out, *extra) if out_first else rc.cli_ok(command, *args, "-o", out)
    return out


def _report(ws: rc.Workspace) -> Path:
    run = ws.out("sealed_run")
    for folder in (ws.features, ws.cams, ws.pseudo):
        shutil.copytree(folder, run / folder.name)
    rc.cli_ok("report", run, "-o", run / "report", "--workers", "1")
    return run / "report"


def test_every_folder_kind_has_a_maker_here():
    """A new stage that writes a ``_stage.json`` gets its row in the tests below, or this fails."""
    assert folder_kinds() == set(MAKERS), (folder_kinds() ^ set(MAKERS))


def _edit(record: dict) -> dict:
    """The edit a user makes to pass a check: the dtype flipped where the record has one, else the params."""
    if isinstance(record.get(io.NUMERICS), dict) and record[io.NUMERICS].get("dtype"):
        other = {"bf16": "fp32", "fp32": "bf16"}.get(record[io.NUMERICS]["dtype"], "fp32")
        return {**record, io.NUMERICS: {**record[io.NUMERICS], "dtype": other}}
    return {**record, "params": {**record["params"], "edited": True}}


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_an_edited_record_is_refused_and_an_unedited_one_reads(ws, kind, tmp_path):
    """Each kind's real folder: its record is sealed and reads; the same record edited (its dtype, or its params)
    is refused in one line naming the folder and the fix, by the record's reader and the stage folder's."""
    made = MAKERS[kind](ws)
    folder = tmp_path / kind
    shutil.copytree(made, folder)
    path = io.stage_record_path(folder)
    record = io.read_record(path)
    assert record["stage"] == kind and record[io.RECORD_DIGEST] == io.record_digest(record)
    assert io.read_stage_record(folder, kind) == record
    path.write_text(json.dumps(_edit(record), indent=2))
    for read in (lambda: io.read_record(path), lambda: io.read_stage_record(folder, kind)):
        with pytest.raises(ContractError) as e:
            read()
        line = str(e.value)
        assert "\n" not in line and line.startswith(f"{folder}: its _stage.json was edited"), line
        assert f"re-make it with `vpltool {kind} --overwrite`" in line, line
    path.write_text(json.dumps(record, indent=4, sort_keys=True))  # the same record laid out otherwise: still reads
    assert io.read_record(path) == record


@pytest.mark.parametrize("kind", ["crf", "sam-pseudo"])
def test_train_decoder_refuses_mask_folders_whose_dtype_was_edited_before_any_model_loads(ws, kind, tmp_path):
    """The held-back class: a mask folder's dtype edited, then ``train-decoder --precision <the edited dtype>``:
    exit 2 in one line, no decoder folder; the record without its seal (an older vpltool's, or the edit with the
    seal deleted) is refused there too, since the PNGs cannot say their dtype."""
    folder = tmp_path / kind
    shutil.copytree(MAKERS[kind](ws), folder)
    path = io.stage_record_path(folder)
    record = io.read_record(path)
    edited = _edit(record)
    for name, written in (("edited", edited), ("unsealed", {k: v for k, v in edited.items()
                                                             if k != io.RECORD_DIGEST})):
        path.write_text(json.dumps(written))
        out = tmp_path / f"decoder_{name}"
        r = rc.invoke("train-decoder", folder, "-p", ws.text, "-o", out, "--precision",
                      edited[io.NUMERICS]["dtype"], *rc.DECODER_ARGS)
        errors = rc.error_lines(r.output)
        assert r.exit_code == 2 and len(errors) == 1, r.output[-800:]
        assert str(folder) in errors[0] and f"`vpltool {kind} --overwrite`" in errors[0], errors[0]
        assert ("was edited" if name == "edited" else "is not sealed") in errors[0], errors[0]
        assert not out.exists() or not any(out.iterdir())


def test_an_unsealed_record_of_items_that_record_their_dtype_reads_as_before(ws, tmp_path):
    """A CAM folder whose record has no seal (every vpltool before it): its CAM files record their own dtype, so it
    reads as before, and crf makes masks of it."""
    cams = tmp_path / "cams"
    shutil.copytree(ws.cams, cams)
    path = io.stage_record_path(cams)
    record = io.read_record(path)
    path.write_text(json.dumps({k: v for k, v in record.items() if k != io.RECORD_DIGEST}))
    assert io.RECORD_DIGEST not in io.read_stage_record(cams, "cam")
    rc.cli_ok("crf", cams, "-o", tmp_path / "pseudo", "--workers", "1")
    assert io.read_record(io.stage_record_path(tmp_path / "pseudo"))[io.RECORD_DIGEST]


def test_the_seal_covers_every_field_a_record_may_hold_later():
    """Computed over the whole record but the seal: a field another part of vpltool adds (a ledger of what the run
    read) is covered as soon as it is written with the record, and an edit of it is seen."""
    record = {"stage": "crf", "params": {}, "inputs": {}, "count": 0, "reads": [{"path": "a", "sha256": "1"}]}
    sealed = io.seal(record)
    assert list(sealed)[-1] == io.RECORD_DIGEST and io.record_digest(sealed) == sealed[io.RECORD_DIGEST]
    sealed["reads"][0]["sha256"] = "2"
    assert io.record_digest(sealed) != sealed[io.RECORD_DIGEST]
    assert io.record_digest({**record, "count": (0,)[0]}) == io.record_digest(json.loads(json.dumps(record)))


# --------------------------------------------------------------------------------------------- --overwrite that fails
def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class Injected(RuntimeError):
    pass


def _fail_after_first(monkeypatch, writer: str) -> list[Path]:
    """``io.<writer>`` writes its first item, then fails (the run's fault, after an item of the new result)."""
    real, written = getattr(io, writer), []

    def once(path, *args, **kwargs):
        if written:
            raise Injected(f"injected after {written[0].name}")
        written.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(io, writer, once)
    return written


def _overwrite_args(ws: rc.Workspace, kind: str, out: Path) -> list[object]:
    return {"cam": ["cam", ws.features, "-p", ws.text, "-o", out, *rc.CPU, "--refine", "none"],
            "crf": ["crf", ws.cams, "-o", out, "--workers", "1"],
            "sam-pseudo": ["sam-pseudo", ws.cams, "-o", out, "--masks", _amg(ws, "overwrite_amg"), "--start",
                           "argmax", "--workers", "1"],
            "segment": ["segment", ws.world, "-o", out, "--split", "val", *rc.TINY, *rc.CPU, "--classes",
                        "star,circle", "--dense", "maskclip"],
            "make-world": ["make-world", out, "--train", "3", "--val", "1"]}[kind]


WRITER = {"cam": "write_cam", "crf": "write_mask", "sam-pseudo": "write_mask", "segment": "write_mask",
          "make-world": "atomic_path"}


@pytest.mark.parametrize("kind", sorted(WRITER))
def test_overwrite_that_fails_after_its_first_item_keeps_the_last_result_byte_for_byte(ws, kind, tmp_path,
                                                                                         monkeypatch):
    """A finished folder (with a user's notes in it) overwritten by a run of other settings that fails after its
    first item: every file as it was, records included, and nothing left beside it. The same run, not failing,
    replaces it and keeps the notes."""
    out = tmp_path / kind
    rc.cli_ok(*_overwrite_args(ws, kind, out))
    (out / "notes.txt").write_text("my notes on these masks\n")
    before = _snapshot(out)
    args = [*_overwrite_args(ws, kind, out), "--overwrite", *_other_settings(kind)]
    with monkeypatch.context() as mp:
        written = _fail_after_first(mp, WRITER[kind])
        r = rc.invoke(*args)
    assert r.exit_code != 0 and written, r.output[-800:]
    assert _snapshot(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == [kind]  # nothing left beside it
    rc.cli_ok(*args)
    after = _snapshot(out)
    assert after["notes.txt"] == before["notes.txt"] and after != before
    assert io.read_record(io.stage_record_path(out))["params"] != json.loads(before["_stage.json"])["params"]
    assert sorted(p.name for p in out.parent.iterdir()) == [kind]


def _other_settings(kind: str) -> list[str]:
    """Settings that make the overwrite another result (so that a byte kept is no accident)."""
    return {"cam": ["--refine", "caa"], "crf": ["--no-crf"], "sam-pseudo": ["--merge", "max-iou"],
            "segment": ["--prob-threshold", "0.5"], "make-world": ["--seed", "9"]}[kind]


def test_overwrite_of_another_stages_folder_is_refused_before_anything_moves(ws, tmp_path):
    out = tmp_path / "cams"
    shutil.copytree(ws.cams, out)
    before = _snapshot(out)
    with pytest.raises(VplError, match="holds `cam` output"):
        with io.StageFolder(out, "crf", {}, overwrite=True, shard=(0, 1)):
            pass
    assert _snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["cams"]


def test_a_killed_overwrite_is_put_back_by_the_next_run_and_a_finished_one_kept(tmp_path):
    """``kill -9`` between the set-aside and the swap (made here by hand): the next run into the folder puts the
    last result back when the new one had not finished, keeps the new one (and the notes) when it had."""
    from vpltool.io import beside

    out = tmp_path / "out"
    with io.StageFolder(out, "crf", {"a": 1}, shard=(0, 1)) as folder:
        (out / "x.txt").write_text("old")
        folder.complete(count=0)
    (out / "notes.txt").write_text("mine")
    before = _snapshot(out)
    aside = beside.aside_path(out)
    shutil.copytree(out, aside)  # the state a killed run leaves: the last result beside, a partial new in place
    shutil.rmtree(out)
    out.mkdir()
    io.write_json(out / io.RUN_RECORD, {"stage": "crf", "params": {"a": 2}})
    with io.StageFolder(out, "crf", {"a": 1}, shard=(0, 1)):
        now = _snapshot(out)  # put back before this run looks at the folder: it resumes the last (its _run.json)
        assert {k: v for k, v in now.items() if k != io.RUN_RECORD} == before
    assert not aside.exists()
    shutil.copytree(out, aside)  # now a killed run that had finished: its record there, the notes not yet moved
    (out / "notes.txt").unlink()
    (out / io.RUN_RECORD).unlink()  # complete() removes it with the record written
    io.write_stage_record(out, "crf", params={"a": 2}, inputs={}, count=0)
    with io.StageFolder(out, "crf", {"a": 2}, shard=(0, 1)):
        pass
    assert not aside.exists() and (out / "notes.txt").read_text() == "mine"
    assert io.read_record(io.stage_record_path(out))["params"] == {"a": 2}


@pytest.mark.parametrize("swap", ["renameat2", "three renames"])
def test_stage_folder_puts_the_last_result_back_on_either_swap(tmp_path, monkeypatch, swap):
    """The skeleton alone, with the system's exchange and with the fallback of three renames: a failing
    ``overwrite`` leaves every file as it was; a finishing one keeps the user's notes and drops the last run's
    items that the new run did not write."""
    from vpltool.io import beside

    if swap == "three renames":
        monkeypatch.setattr(beside, "_EXCHANGE", None)
    out = tmp_path / "out"
    with io.StageFolder(out, "crf", {"a": 1}, shard=(0, 1)) as folder:
        for name in ("x", "y"):
            io.write_json(out / f"{name}.json", {"stage": "crf", "vpltool": "0", "item": name})  # a vpltool file
        folder.complete(count=2)
    (out / "notes.txt").write_text("mine")
    before = _snapshot(out)
    with pytest.raises(Injected):
        with io.StageFolder(out, "crf", {"a": 2}, shard=(0, 1), overwrite=True):
            io.write_json(out / "x.json", {"stage": "crf", "vpltool": "0", "item": "new"})
            raise Injected("after the first item")
    assert _snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with io.StageFolder(out, "crf", {"a": 2}, shard=(0, 1), overwrite=True) as folder:
        io.write_json(out / "x.json", {"stage": "crf", "vpltool": "0", "item": "new"})
        folder.complete(count=1)
    after = _snapshot(out)
    assert after["notes.txt"] == b"mine" and "y.json" not in after and json.loads(after["x.json"])["item"] == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_the_exchange_is_atomic_where_the_system_has_it(tmp_path):
    """Both folders keep their inodes, swapped (renameat2 here, or the fallback where the system lacks it)."""
    from vpltool.io import beside

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    ino = (a.stat().st_ino, b.stat().st_ino)
    beside.exchange(a, b)
    assert (b.stat().st_ino, a.stat().st_ino) == ino and sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_where_nothing_can_be_set_aside_the_folder_is_overwritten_in_place(tmp_path, monkeypatch):
    """A folder whose last result cannot be moved (a mount point, a parent the user may not write): the overwrite
    runs in place, as before the set-aside, and leaves nothing beside it."""
    from vpltool.io import beside

    out = tmp_path / "out"
    with io.StageFolder(out, "crf", {"a": 1}, shard=(0, 1)) as folder:
        folder.complete(count=0)

    def refuse(a, b):
        raise OSError(16, "Device or resource busy")

    monkeypatch.setattr(beside, "exchange", refuse)
    with io.StageFolder(out, "crf", {"a": 2}, shard=(0, 1), overwrite=True) as folder:
        assert folder._aside is None
        folder.complete(count=0)
    assert io.read_record(io.stage_record_path(out))["params"] == {"a": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_train_decoder_overwrite_that_fails_keeps_the_last_decoder_and_a_killed_one_is_put_back(ws, tmp_path,
                                                                                              monkeypatch):
    """A trained decoder (with a user's notes beside it) overwritten by a run of other settings that fails after its
    first iteration: every file as it was, nothing left beside it; a run killed there (its new folder in place, the
    last result beside) is put back by the next run into the folder; the same run, not failing, replaces it and
    keeps the notes."""
    from vpltool.io import beside
    from vpltool.stages import train_decoder

    out = tmp_path / "decoder"
    args = ["train-decoder", ws.pseudo, "-p", ws.text, "-o", out, *rc.DECODER_ARGS]
    rc.cli_ok(*args)
    (out / "notes.txt").write_text("my notes on this decoder\n")
    before = _snapshot(out)
    other = [*args, "--overwrite", "--iters", "3"]
    with monkeypatch.context() as mp:
        real = train_decoder._Run.finish

        def fails(self):
            raise Injected("injected after the iterations, before the decoder is written")
        mp.setattr(train_decoder._Run, "finish", fails)
        r = rc.invoke(*other)
        assert r.exit_code != 0 and _snapshot(out) == before, r.output[-800:]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["decoder"]
        aside = beside.aside_path(out)  # a kill -9 mid-run: the last result beside, the unfinished one in place
        shutil.copytree(out, aside)
        shutil.rmtree(out / "checkpoints")
        (out / "decoder.safetensors").unlink()
        mp.setattr(train_decoder._Run, "finish", real)
        r = rc.invoke(*args)  # the next run into the folder puts the last result back, then refuses as before
    assert r.exit_code == 2 and _snapshot(out) == before, r.output[-800:]
    assert not aside.exists()
    rc.cli_ok(*other)
    after = _snapshot(out)
    assert after["notes.txt"] == before["notes.txt"] and after["decoder.safetensors"] != before["decoder.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decoder"]
