"""Hostile inputs, generated: every command's options and every input file kind, drawn from edge values.

The property is the promise of docs/robustness.md itself, for any input: the command exits 0, or exits 2 with one
``error:`` line (the last) or click's usage error, never a traceback; no temporary file is left anywhere; a
refused run leaves no ``_stage.json`` in its output; and nothing outside the run's own output changes.

The damaged inputs reach past the stage folders: a dataset's photo, an item of another run of the same stage copied
into a finished folder (same image, same id: only its run differs), a model file (cut short, a tensor missing,
reshaped or NaN) and an img2dataset shard (cut between or inside members, a member removed, a header garbled). An
exit 0 must have done what the options asked: a damaged input it read is never certified, and what it certified is
what the clean input gives.

The commands and their options are read from the typer app, so a new command or option is fuzzed without editing
this file (a command without a base invocation below gets its positional arguments drawn from the workspace's
folders and files). The run here is bounded and derandomized (``VPLTOOL_FUZZ_EXAMPLES`` examples per command, 2 by
default); ``make fuzz`` runs a longer one. A fault it finds is fixed as a class and becomes a row of
``robustness_cases.py``.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import shutil
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
import model_kinds as mk  # noqa: E402
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from test_docs import command_options, misnamed_options  # noqa: E402

from vpltool.models.registry import families  # noqa: E402

import robustness_cases as rc  # noqa: E402

EXAMPLES = int(os.environ.get("VPLTOOL_FUZZ_EXAMPLES", "2"))
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))

# edge values per option type (strings as a shell passes them)
INTS = ["0", "-1", "1", "3", "2147483648", "-9223372036854775809", "100000000000000000000", "", "1.5", "abc"]
FLOATS = ["0", "-0", "-1", "1e-320", "nan", "-nan", "inf", "-inf", "1e39", "1e300", "", "abc"]
STRINGS = ["", " ", ",", ",,", "|", "a,a", "a|a", "A,a", "é,ß,漢字", "x" * 5000, "\t", "../..", "-", "none", "a,,b",
           "background", "%s{}", "\x00"]


def _command_table():
    import typer.main

    from vpltool.cli import app

    group = typer.main.get_command(app)
    # `app` serves its page until interrupted: a valid draw would never return (its refusals, made before it serves,
    # are robustness_cases' `app` rows)
    return {name: cmd for name, cmd in group.commands.items() if name not in ("help", "app")}


COMMANDS = _command_table()
OPTIONS = command_options()


# --------------------------------------------------------------------------------------------- the workspace
@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> rc.Workspace:
    return rc.Workspace(tmp_path_factory.mktemp("fuzz"))


def _base(ws: rc.Workspace, name: str, out: Path) -> list[object] | None:
    """A valid invocation of ``name`` on the workspace, writing ``out`` (None: none known, draw the arguments)."""
    decoder = ws.decoder / "decoder.safetensors"
    made = {"choose-pseudo": lambda: [_scored_run(ws, out), "none", "--refine", "none", "--by", "masks"],
            "demo-report": lambda: [_demo_run(ws, out)]}
    if name in made:
        return made[name]()
    return {
        "extract": [ws.world, "--split", "val", "-o", out, *rc.TINY, *rc.CPU, "--workers", "1"],
        "text-prototypes": [ws.features, "-o", out / "text.safetensors", *rc.TEXT_ARGS, *rc.CPU],
        "cam": [ws.features, "-p", ws.text, "-o", out, *rc.CPU],
        "learn-prototypes": [ws.features, "-c", ws.cams, "-t", ws.text, "-o", out / "vision.safetensors", "--iters",
                             "2", *rc.CPU],
        "crf": [ws.cams, "-o", out, "--workers", "1"],
        "segment": [ws.world, "--split", "val", "-o", out, *rc.SEG_TINY, "--dense", "maskclip", "--classes",
                    "star,circle"],
        "train-decoder": [ws.pseudo, "-p", ws.text, "-o", out, *rc.DECODER_ARGS],
        "predict": [decoder, "--split", "val", "-o", out, *rc.CPU],
        "export": ["-o", out / "m.onnx", "--decoder", decoder, "--size", "96x96"],
        "eval": [ws.pseudo, "--json", out / "scores.json"],
        "make-world": [out, "--train", "2", "--val", "1"],
        "train-toy-dino": [out / "dino.safetensors", "--data", ws.world, "--epochs", "1", "--batch-size", "2"],
        "train-toy-sam": [out / "sam.safetensors", "--data", ws.world, "--epochs", "1", "--batch-size", "2"],
        "train-toy-sam3": [out, "--data", ws.world, "--epochs", "1", "--batch-size", "6", "--side", "56", "--width",
                           "8"],
        "train-toy-radio": [out, "--siglip-steps", "1", "--radio-steps", "1", "--batch-size", "2", "--width", "8",
                            "--depth", "1", "--side", "32", "--no-dino-teacher"],
        "train-pgseg": [ws.world, "-o", out, *rc.PGSEG_ARGS],
        "benchmark": ["naclip", "--root", f"voc21={rc._miniature(ws, 'voc21')}", "-o", out, *rc.TINY, *rc.CPU],
        "diagnose": [ws.features, "-p", ws.text, "--json", out / "diagnose.json", *rc.CPU],
        "report": [_run_of(ws), "-o", out, "--workers", "1"],
        "make-pairs": [out, "--scenes", "2"],
        "train-toy-clip": [out, "--steps", "1", "--batch-size", "4"],
    }.get(name)


def _run_of(ws: rc.Workspace) -> Path:
    """A run folder as the Makefile leaves it (features, CAMs, pseudo masks), made once: what `report` reads."""
    run = ws.root / "fuzz_run"
    for folder in (ws.features, ws.cams, ws.pseudo):
        if not (run / folder.name).is_dir():
            shutil.copytree(folder, run / folder.name)
    return run


def _scored_run(ws: rc.Workspace, out: Path) -> Path:
    """``out`` as a run folder whose own pseudo masks (``out/pseudo``, CRF of ``out/cams_vision``) eval scored on
    train: what `choose-pseudo` chooses among (it writes ``out/metrics/pseudo_choice.json``). The CAMs and masks are
    made once and copied."""
    base = ws.root / "fuzz_choice_base"
    if not (base / "pseudo" / "_stage.json").is_file():
        rc.cli_ok("cam", ws.features, "-p", ws.text, "-o", base / "cams_vision", "--refine", "none", *rc.CPU)
        rc.cli_ok("crf", base / "cams_vision", "-o", base / "pseudo", "--workers", "1")
    shutil.copytree(base, out)
    rc.cli_ok("eval", out / "pseudo", "--json", out / "metrics" / "pseudo.json")
    return out


def _demo_run(ws: rc.Workspace, out: Path) -> Path:
    """``out`` as a demo run folder (features, text CAMs, pseudo masks): `demo-report` writes its metrics.json and
    contact sheets there."""
    for name, source in (("features", ws.features), ("cams_text", ws.cams), ("pseudo", ws.pseudo)):
        shutil.copytree(source, out / name)
    return out


def _valid_choices(ws: rc.Workspace, command: str) -> dict[str, list[str]]:
    """The valid values of the choice-like options, drawn beside the edge values so that every path runs: each
    --dense method, each --recipe of the command, a trained PGSeg checkpoint for --pgseg."""
    from vpltool.config import DECODER_RECIPES
    from vpltool.config.dense import DENSE_CHOICES
    from vpltool.config.pgseg import PGSEG_RECIPES

    recipes = {"train-decoder": list(DECODER_RECIPES), "train-pgseg": list(PGSEG_RECIPES)}.get(command, [])
    return {"--dense": list(DENSE_CHOICES), "--recipe": recipes, "--refine": ["none", "caa", "caa+sgc"],
            "--pgseg": [str(_pgseg_checkpoint(ws))], "--class-file": ["sclip:voc21", "sclip"],
            "--affinity": ["clip", "dino", "clip+dino"]}


def _pgseg_checkpoint(ws: rc.Workspace) -> Path:
    """A tiny PGSeg trained on the workspace world (one epoch), made once: the --pgseg of the drawn runs."""
    path = ws.root / "fuzz_pgseg_model" / "pgseg.safetensors"
    if not path.is_file():
        rc.cli_ok("train-pgseg", ws.world, "-o", path.parent, *rc.PGSEG_ARGS)
    return path


def _pool(ws: rc.Workspace) -> list[Path]:
    """Paths an argument may be given instead of the right one: every kind of workspace file and folder."""
    return [ws.world, ws.features, ws.cams, ws.pseudo, ws.decoder, ws.text, ws.decoder / "decoder.safetensors",
            ws.world / "labels.csv", ws.first_feature_file(), ws.root / "nowhere", Path("")]


def _option_values(option, ws: rc.Workspace, command: str = "") -> st.SearchStrategy[list[str]]:
    """The words one option is given as: its flag alone, or its name and an edge value of its declared type, or
    one of its valid values (:func:`_valid_choices`)."""
    name = max(option.opts, key=len)
    if option.is_flag:
        return st.just([name])
    valid = _valid_choices(ws, command).get(name) if name in ("--dense", "--recipe", "--refine", "--pgseg",
                                                               "--class-file", "--affinity") else None
    if valid:
        return st.one_of(st.sampled_from(valid), st.sampled_from(STRINGS)).map(lambda v: [name, v])
    kind = getattr(getattr(option, "type_descriptor", None), "annotation", str)
    if kind is int:
        values = st.sampled_from(INTS)
    elif kind is float:
        values = st.sampled_from(FLOATS)
    elif kind is Path and name not in ("--out", "-o"):
        values = st.sampled_from([*map(str, _pool(ws)), *STRINGS[:4]])
    else:
        values = st.sampled_from(STRINGS)
    return values.map(lambda v: [name, v])


def _invocation(ws: rc.Workspace, name: str, out: Path) -> st.SearchStrategy[list[str]]:
    """A base invocation (or drawn positional arguments) with one to three options set to edge values."""
    cmd = COMMANDS[name]
    options = [p for p in cmd.params if p.param_type_name == "option" and p.name not in ("help", "out", "log_file")
               and not p.hidden]
    base = _base(ws, name, out)
    if base is None:
        n_args = sum(1 for p in cmd.params if p.param_type_name == "argument")
        head = st.lists(st.sampled_from([str(p) for p in _pool(ws)]), min_size=n_args, max_size=n_args)
    else:
        head = st.just([str(a) for a in base])
    picked = st.lists(st.sampled_from(options), min_size=1, max_size=3, unique_by=lambda p: p.name) \
        if options else st.just([])
    return st.tuples(head, picked.flatmap(lambda ps: st.tuples(*[_option_values(p, ws, name) for p in ps]))).map(
        lambda t: [name, *t[0], *(w for words in t[1] for w in words)])


# --------------------------------------------------------------------------------------------- the property
def _holds(ws: rc.Workspace, args: list[str], out: Path, own: tuple[Path, ...] = ()) -> tuple[int, str]:
    """Run ``vpltool ARGS`` and check the promise (module doc); ``own``: paths the run may change besides
    ``out``. Returns the exit code and the output."""
    before = rc.disk_state(ws.root)
    r = rc.invoke(*args)
    # a command ends what it started: a loading worker left running went on writing into the next case's workspace
    left_running = multiprocessing.active_children()
    after = rc.disk_state(ws.root)
    shown = f"vpltool {' '.join(map(repr, args))[:600]}\n{r.output[-1500:]}"
    assert not left_running, (shown, "processes still running after the command returned", left_running)
    assert "Traceback" not in r.output and (r.exception is None or isinstance(r.exception, SystemExit)), shown
    assert r.exit_code in (0, 2), shown
    lines = [line for line in r.output.splitlines() if line.strip()]
    if r.exit_code == 2:
        usage = any(line.startswith("Usage:") for line in lines) and any("Error" in line for line in lines)
        errors = rc.error_lines(r.output)
        assert usage or (len(errors) == 1 and lines[-1] == errors[0]), shown
        assert not (out / "_stage.json").exists(), shown
        # a fix that names an option names one of this command (or of the vpltool command it names)
        assert not [w for line in errors for w in misnamed_options(args[0], line, OPTIONS)], shown
    mine = [str(p.relative_to(ws.root)) for p in (out, *own)]
    changed = [p for p in rc.disk_changes(before, after)
               if not any(p.lstrip("-").startswith(m) for m in mine)]
    assert not changed, (shown, changed)
    assert not [p for p in after if p.endswith(".tmp")], shown
    return r.exit_code, r.output


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_at_its_edge_values_keeps_the_promise(ws, name):
    out = ws.root / f"fuzz_{name}"

    @FUZZ
    @given(data=st.data())
    def run(data):
        shutil.rmtree(out, ignore_errors=True)
        out.unlink(missing_ok=True) if out.is_symlink() else None
        args = data.draw(_invocation(ws, name, out))
        _holds(ws, args, out)

    run()


# --------------------------------------------------------------------------------------------- damaged inputs
def _mutations(ws: rc.Workspace):
    """(stage input folder, base invocation on a copy of it) for the stages that read a folder of items, a folder of
    photos (a copy of the world: its ``images/`` is damaged)."""
    return {
        "features": lambda copy, out: ["cam", copy, "-p", ws.text, "-o", out, *rc.CPU],
        "cams": lambda copy, out: ["crf", copy, "-o", out, "--workers", "1"],
        "cams-eval": lambda copy, out: ["eval", copy],
        "pseudo": lambda copy, out: ["eval", copy, "--json", out / "scores.json"],
        "pseudo-decoder": lambda copy, out: ["train-decoder", copy, "-p", ws.text, "-o", out, *rc.DECODER_ARGS],
        "photos": lambda copy, out: ["extract", copy, "--split", "val", "-o", out, *rc.TINY, *rc.CPU, "--workers",
                                     "1"],
        "plain-photos": lambda copy, out: ["segment", copy, "-o", out, *rc.TINY, *rc.CPU, "--dense", "maskclip",
                                           "--classes", "star", *rc.TEXT_ARGS],
    }


def _sources(ws: rc.Workspace) -> dict[str, Path]:
    return {"features": ws.features, "cams": ws.cams, "cams-eval": ws.cams, "pseudo": ws.pseudo,
            "pseudo-decoder": ws.pseudo, "photos": ws.world, "plain-photos": _plain_photos(ws)}


def _plain_photos(ws: rc.Workspace) -> Path:
    """A folder of two photos (the world's val images), no dataset around them: what `segment PHOTOS` reads."""
    folder = ws.root / "fuzz_plain_photos"
    if not folder.is_dir():
        folder.mkdir()
        for image in sorted((ws.world / "images").glob("val_*.png")):
            shutil.copy(image, folder / image.name)
    return folder


def _other_run(ws: rc.Workspace, kind: str) -> Path | None:
    """A finished folder of another run of the stage that made ``kind``'s folder (other options, same images, made
    once): where an item of another run comes from. None for the inputs that are no stage folder."""
    made = {"features": ("extract", ws.world, "--split", "train", *rc.TINY, *rc.CPU, "--workers", "1"),
            "cams": ("cam", ws.features, "-p", ws.text, "--refine", "none", *rc.CPU),
            "pseudo": ("crf", ws.cams, "--no-crf", "--workers", "1")}
    stage = {"cams-eval": "cams", "pseudo-decoder": "pseudo"}.get(kind, kind)
    if stage not in made:
        return None
    out = ws.root / f"fuzz_other_{stage}"
    if not (out / "_stage.json").is_file():
        rc.cli_ok(*made[stage][:2], "-o", out, *made[stage][2:])
    return out


def _result(out: Path, output: str) -> dict[str, object]:
    """What a run made in ``out``, as a user reads it: each item's tensors or mask pixels, the scores of an eval
    JSON, the figures it printed (``output``'s lines with an IoU); the folder's own files (records, lock, log) left
    out, since they name the inputs by path and digest."""
    import json

    import numpy as np
    from safetensors.numpy import load_file

    made: dict[str, object] = {"printed": [line for line in output.splitlines() if "IoU" in line]}
    for path in sorted(out.rglob("*")):
        name = str(path.relative_to(out))
        if not path.is_file() or path.name.startswith(("_", ".")) or path.suffix in (".jsonl", ".log"):
            continue
        if path.suffix == ".safetensors":
            made[name] = {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in load_file(str(path)).items()}
        elif path.suffix == ".png":
            from PIL import Image

            made[name] = np.asarray(Image.open(path)).tobytes()
        elif path.suffix == ".json":
            scores = json.loads(path.read_text())
            made[name] = {k: scores.get(k) for k in ("miou", "iou", "classes", "n_images")}
        else:
            made[name] = path.read_bytes()
    return made


def _mutate(folder: Path, how: str, pick: int, cut: float, other: Path | None = None, prefix: str = "") -> None:
    """Damage one file of a copied stage folder: truncate it, put another item's file, the same item's file of
    another run (``other``, a finished folder of the same stage) or a file of another format in its place, or edit
    a field of the folder's record. ``prefix``: only files whose name starts with it (the images the command
    reads)."""
    import json

    items = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(("_", "."))
                   and p.name.startswith(prefix))
    target = items[pick % len(items)]
    if how == "other run":
        shutil.copyfile(other / target.name, target)
    elif how == "special file":  # no regular file under an item's name (each skipped silently, or hung, once)
        target.unlink()
        SPECIALS[pick % len(SPECIALS)](target)
    elif how == "extreme shape":  # a photo 100,000 wide and 16 tall, the least side taken (a 0-pixel side once)
        import numpy as np
        from PIL import Image

        Image.fromarray(np.full((16, 100_000, 3), pick % 256, np.uint8)).save(target, format="PNG")
    elif how == "truncate":
        data = target.read_bytes()
        target.write_bytes(data[:int(len(data) * cut)])
    elif how == "other item":
        shutil.copyfile(items[(pick + 1) % len(items)], target)
    elif how == "other format":
        target.write_bytes(b"\x89PNG\r\n\x1a\n" if target.suffix != ".png" else b'{"vpltool_file": "scores"}')
    else:  # a field of the record edited
        record = folder / "_stage.json"
        if not record.is_file():
            return  # a folder without a record (photos, a model): nothing to edit
        data = json.loads(record.read_text())
        keys = sorted(data)
        key = keys[pick % len(keys)]
        data[key] = [None, "", -1, 1e308, "x" * 300, {"a": 1}][pick % 6]
        record.write_text(json.dumps(data))


KINDS = ["features", "cams", "cams-eval", "pseudo", "pseudo-decoder", "photos", "plain-photos"]
# what stands under an item's name that is no regular file (by ``pick % 4``): a FIFO and a link to /dev/zero (a
# read never ends), a folder (was skipped silently: one photo fewer, exit 0), a symbolic link to itself (ELOOP)
SPECIALS = (os.mkfifo, lambda p: p.symlink_to("/dev/zero"), lambda p: p.mkdir(), lambda p: p.symlink_to(p.name))
# what a damage makes of each kind of input: an unreadable file (never certified) or a valid one of other content
# (a photo or a model replaced by another is another input, and may be certified as such)
UNREADABLE = ("other format", "truncate", "special file")
PHOTO_DAMAGES = ("extreme shape",)  # what a folder of photos holds that no stage folder does
FOREIGN = ("other item", "other run")  # another item's file, the same item's file of another run: never certified


@pytest.mark.parametrize("kind", KINDS)
def test_every_input_kind_damaged_keeps_the_promise(ws, kind):
    source = _sources(ws)[kind]
    copy, out = ws.root / f"damaged_{kind}", ws.root / f"fuzz_damaged_{kind}"
    photos = kind in ("photos", "plain-photos")
    inner = (lambda root: root / "images") if kind == "photos" else (lambda root: root)  # where the damage goes
    # the command on the clean input, at the same paths: what an exit 0 on a damaged copy must have made
    shutil.copytree(source, copy)
    code, output = _holds(ws, [str(a) for a in _mutations(ws)[kind](copy, out)], out, own=(copy,))
    clean = _result(out, output)
    assert code == 0 and len(clean) > 1 or clean["printed"], (kind, output)
    other = _other_run(ws, kind)

    @FUZZ
    @given(how=st.sampled_from(["truncate", "other item", "other format", "record", "other run", "special file",
                                *PHOTO_DAMAGES]),
           pick=st.integers(0, 50), cut=st.sampled_from([0.0, 0.01, 0.5, 0.99]))
    @example(how="other run", pick=0, cut=0.5)  # every time: a finished folder holding another run's item
    @example(how="special file", pick=0, cut=0.5)  # and each of SPECIALS named like an item: a FIFO,
    @example(how="special file", pick=1, cut=0.5)  # a link to /dev/zero,
    @example(how="special file", pick=2, cut=0.5)  # a folder
    @example(how="special file", pick=3, cut=0.5)  # and a link loop
    def run(how, pick, cut):
        if how == "other run" and other is None:
            return  # photos and models have no run
        if how == "extreme shape" and not photos:
            return  # a stage folder's item is read from its record: its shape is the record's
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(source, copy)
        _mutate(inner(copy), how, pick, cut, other, "val_" if photos else "")
        code, output = _holds(ws, [str(a) for a in _mutations(ws)[kind](copy, out)], out, own=(copy,))
        # a damaged input is never certified: whatever it let through, it did not finish
        stage_folder = not photos
        unreadable = how in ("other format", "special file") or (how == "truncate" and cut < 0.99)
        if unreadable or (how in FOREIGN and stage_folder):
            assert not (out / "_stage.json").exists() and not (out / "scores.json").exists(), (kind, how, pick, cut)
        # what it let through (an edit the command does not read) made the clean input's result, not another one
        if code == 0 and (stage_folder or how == "record"):
            assert _result(out, output) == clean, (kind, how, pick, cut)

    run()


# --------------------------------------------------------------------------------------------- class files
def _class_file(names: list[str], how: str, at: int, marked: bool) -> list[str]:
    """A class file for classes ``names`` as a user writes one (the background's words first, marked
    ``background:`` or not, then one line a class asking its name), with one line dropped, doubled or moved to the
    end (``at``: which), or kept whole."""
    lines = [("background: " if marked else "") + "grass, sky, wall, water", *names]
    at %= len(lines)
    if how == "drop":
        return lines[:at] + lines[at + 1:]
    if how == "double":
        return lines[:at + 1] + lines[at:]
    if how == "to the end":
        return lines[:at] + lines[at + 1:] + [lines[at]]
    return lines


def test_a_damaged_class_file_is_refused_or_read_as_written(ws, tmp_path):
    """``segment --class-file``: exit 2 in one line, or exit 0 having done what the file asked: each class queried
    by its own line (its name among the queries recorded for it), the background by the first line's words when
    the file has that line."""
    from vpltool import io
    from vpltool.data import open_dataset

    names = list(open_dataset(ws.world, "val").classes[1:])

    @FUZZ
    @given(how=st.sampled_from(["drop", "double", "to the end", "whole"]), at=st.integers(0, 20),
           marked=st.booleans())
    @example(how="drop", at=len(names), marked=False)  # every time: one line short, its last class missing
    @example(how="drop", at=1, marked=False)  # and its first: the background's words read as the first class's
    def run(how, at, marked):
        lines = _class_file(names, how, at, marked)
        path, out = ws.root / "fuzz_classes.txt", ws.root / "fuzz_class_seg"  # inside the workspace _holds watches
        shutil.rmtree(out, ignore_errors=True)
        path.write_text("\n".join(lines) + "\n")
        code, output = _holds(ws, ["segment", str(ws.world), "--split", "val", "-o", str(out), *rc.SEG_TINY,
                                   "--dense", "maskclip", "--class-file", str(path)], out)
        if code != 0:
            return
        params = io.read_record(out / io.STAGE_RECORD)["params"]
        queries = params["class_queries"]
        assert len(queries) == len(names), (lines, output)
        for name, asked in zip(names, queries):  # each class asks its own line
            assert name in asked, (lines, name, asked)
        if lines[0].endswith("grass, sky, wall, water"):  # the background's line, kept first
            assert params["background_words"] == ["grass", "sky", "wall", "water"], (lines, params)

    run()


# --------------------------------------------------------------------------------------------- damaged model files
# every family the registry knows (model_kinds.KINDS must have its row), each kind of damage: drawn from the registry,
# so that a new family is fuzzed as soon as it registers
FAMILIES = sorted(families())


def test_every_model_family_has_a_damage_generator():
    """A family the registry knows with no row in model_kinds.KINDS would escape the generators below."""
    missing = sorted(set(families()) - set(mk.KINDS))
    assert not missing, f"model families without a damage generator (add a row to tests/model_kinds.py): {missing}"


def _clean_result(ws: rc.Workspace, family: str) -> dict[str, object]:
    """What the family's command makes of its clean model (made once per workspace)."""
    cache = ws.__dict__.setdefault("_clean_models", {})
    if family not in cache:
        copy, out = mk.fresh_copy(ws, family, f"fuzz_clean_{family}"), ws.root / f"fuzz_clean_{family}_out"
        shutil.rmtree(out, ignore_errors=True)
        code, output = _holds(ws, [str(a) for a in mk.KINDS[family].args(ws, copy, out)], out, own=(copy,))
        assert code == 0, output[-1500:]
        cache[family] = _result(out, output)
    return cache[family]


@pytest.mark.parametrize("how", mk.DAMAGES)
@pytest.mark.parametrize("family", FAMILIES)
def test_a_damaged_model_file_is_refused_in_one_line(ws, family, how):
    """Each family's model file cut short, missing a tensor, one of another shape, a NaN or an inf in it, or every
    weight NaN under the same header (a Talk2DINO checkpoint of NaN weights was certified): never run, never a
    traceback; one line naming the file. Or, where the damage lies in tensors the command does not read (a SAM
    file's mask decoder under --dense trident), exit 0 with what the clean model gives."""
    assert family in mk.KINDS, f"no damage generator for model family {family!r}: add a row to tests/model_kinds.py"
    kind = mk.KINDS[family]
    copy, out = ws.root / f"fuzz_model_{family}", ws.root / "fuzz_model_out"

    @settings(FUZZ, max_examples=max(1, EXAMPLES // 2))  # a few draws: each a command
    @given(pick=st.integers(0, 500), cut=st.sampled_from([0.0, 0.3, 0.999]))
    def run(pick, cut):
        shutil.rmtree(out, ignore_errors=True)
        model = mk.fresh_copy(ws, family, copy.name)
        mk.damage(kind.weights_file(model), how, pick, cut)
        code, output = _holds(ws, [str(a) for a in kind.args(ws, model, out)], out, own=(model,))
        if code == 0:
            assert how not in ("every weight NaN", "every weight 0") and \
                _result(out, output) == _clean_result(ws, family), \
                (family, how, pick, cut, output[-600:])
        else:
            assert model.name in rc.error_lines(output)[0], (family, how, pick, cut, output[-600:])

    run()


@pytest.mark.parametrize("when", mk.REPLACED)
@pytest.mark.parametrize("family", FAMILIES)
def test_a_model_file_replaced_under_its_name_is_refused_or_used_whole(ws, family, when, monkeypatch):
    """Another model of the same architecture copied over the file, between a run (``--shard 0/2``) and its
    resume (``--shard 1/2``), between a run killed before it finished and its re-run (the masks before the kill
    kept, the one it cut off gone), after the command checked the file and named it by its digest and before the
    family's load reads it, or while the load reads it: exit 2 in one line, or exit 0 having made and recorded
    exactly what a clean run on the new bytes makes (never masks of one model under the other's digest, never two
    models in one folder)."""
    import json

    from vpltool.models import registry

    kind = mk.KINDS[family]
    model, out = mk.fresh_copy(ws, family, f"fuzz_replaced_{family}"), ws.root / "fuzz_replaced_out"
    shutil.rmtree(out, ignore_errors=True)
    args = [str(a) for a in kind.args(ws, model, out)]
    if when == "replaced between a run and its resume":
        code, output = _holds(ws, [*args, "--shard", "0/2"], out, own=(model,))
        assert code == 0, output[-1500:]
        mk.replace_with_another(kind.weights_file(model), kind.noise)
        second = [*args, "--shard", "1/2"]
    elif when == "replaced between a kill and its re-run":
        from robustness_round11_ledger import killed_before_finish

        killed_before_finish(*args)
        assert (out / "_run.json").is_file() and not (out / "_stage.json").exists(), (family, "not killed")
        items = sorted(p for p in out.iterdir() if p.is_file() and not p.name.startswith(("_", ".")))
        items[-1].unlink()  # the item the kill cut off
        mk.replace_with_another(kind.weights_file(model), kind.noise)
        second = args
    elif when == "replaced between check and load":  # after the command checked it and named it by its digest
        real, done = registry.model_files, []

        def replace_then_list(fam, spec):  # where the registry's load_model begins
            if fam.name == family and not done:
                done.append(mk.replace_with_another(kind.weights_file(model), kind.noise))
            return real(fam, spec)

        monkeypatch.setattr(registry, "model_files", replace_then_list)
        second = args
    else:  # while the family's load reads it
        fam = registry.family(family)

        def load_after_a_replace(spec, *a, **kw):
            mk.replace_with_another(kind.weights_file(model), kind.noise)
            return fam.load(spec, *a, **kw)

        monkeypatch.setitem(registry._FAMILIES, family, dataclasses.replace(fam, load=load_after_a_replace))
        second = args
    code, output = _holds(ws, second, out, own=(model,))
    monkeypatch.undo()
    print(f"{family} | {when} | exit {code} | {output.strip().splitlines()[-1][:200]}")
    if code == 2:  # the same options given again: a line blaming other parameters names a fix that cannot work
        assert "other parameters" not in rc.error_lines(output)[0], (family, when, output[-600:])
        return
    got, record = _result(out, output), json.loads((out / "_stage.json").read_text())
    shutil.rmtree(out)  # the same command afresh, on the new bytes as they now are
    clean_code, clean_output = _holds(ws, args, out, own=(model,))
    assert clean_code == 0, clean_output[-1500:]
    assert got == _result(out, clean_output), (family, when, "masks of another model than the file's", output[-600:])
    clean_record = json.loads((out / "_stage.json").read_text())
    assert record["params"] == clean_record["params"] and record["inputs"] == clean_record["inputs"], \
        (family, when, "a record naming other bytes than those that made the masks")


# --------------------------------------------------------------------------------------------- damaged shards
SHARD_DAMAGES = ["cut between members", "cut inside a member", "a member removed", "a header's bytes flipped"]


def _damage_shard(path: Path, how: str, pick: int) -> None:
    """An img2dataset shard damaged as a broken download or copy leaves it: cut at the end of a member's blocks
    (tar's reader takes that for the end), cut inside one, rewritten without one member, or a member's header
    garbled."""
    import io as _io
    import tarfile

    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    m = members[pick % len(members)][0]
    data = path.read_bytes()
    if how == "cut between members":
        path.write_bytes(data[:m.offset_data + -(-m.size // 512) * 512])
    elif how == "cut inside a member":
        path.write_bytes(data[:m.offset_data + m.size // 2])
    elif how == "a member removed":
        with tarfile.open(path, "w") as tar:
            for info, body in members:
                if info is not m:
                    tar.addfile(info, _io.BytesIO(body))
    else:
        path.write_bytes(data[:m.offset] + bytes(b ^ 0x5A for b in data[m.offset:m.offset + 100])
                         + data[m.offset + 100:])


def test_a_damaged_shard_is_refused_or_every_sample_trained_on(ws):
    """`train-pgseg` on img2dataset shards, one damaged: exit 2 in one line, or exit 0 having trained on every sample
    the undamaged shards hold (the record's count)."""
    from vpltool import io
    from vpltool.data.pairs import open_pairs

    picture = (ws.world / "images" / "train_000000.png").read_bytes()
    clean = rc._pairs_tar(ws, "fuzz_shards", {"a.png": picture, "a.txt": b"a red star", "b.png": picture,
                                              "b.txt": b"a blue ring", "c.png": picture, "c.txt": b"a red ring"})
    count = len(open_pairs(clean).pairs)
    copy, out = ws.root / "fuzz_shards_damaged", ws.root / "fuzz_shards_out"

    @settings(FUZZ, max_examples=max(1, EXAMPLES // 2))  # a few draws: each a command
    @given(how=st.sampled_from(SHARD_DAMAGES), pick=st.integers(0, 50))
    @example(how="cut between members", pick=3)  # every time: a download stopped between two samples
    def run(how, pick):
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(clean, copy)
        _damage_shard(copy / "00000.tar", how, pick)
        code, output = _holds(ws, ["train-pgseg", str(copy), "-o", str(out), *map(str, rc.PGSEG_ARGS)], out,
                              own=(copy,))
        if code == 0:
            assert io.read_record(out / io.STAGE_RECORD)["count"] == count, (how, pick, output[-600:])

    run()


# --------------------------------------------------------------------------------------------- a method's output
# every --dense method whose output a broken plugin or a bug could damage (each method that needs no side file:
# the others run the same writing path), each damage of tests/bad_output_method.py: drawn, never written
def _plain_methods() -> list[str]:
    from vpltool.config.dense import PLAIN_METHODS

    return list(PLAIN_METHODS)


def test_a_dense_methods_damaged_output_is_never_written(ws):
    """A method's output (its postprocess hook's, or the shared path's) damaged as a plugin or a bug damages it:
    labels past the classes or 255, negative, half-size, float; probabilities NaN, above 1, of another shape. Each
    is one line naming the method, and no mask is written (they were written and certified)."""
    import bad_output_method as bom

    out = ws.root / "fuzz_method_output"

    @FUZZ
    @given(method=st.sampled_from(_plain_methods()), damage=st.sampled_from(sorted(bom.DAMAGES)))
    @example(method="naclip", damage="a label past the classes")  # every time: the held-back class
    @example(method="maskclip", damage="a half-size label map")
    def run(method, damage):
        shutil.rmtree(out, ignore_errors=True)
        with bom.damaged_postprocess(method, damage):
            code, output = _holds(ws, ["segment", str(ws.world), "--split", "val", "-o", str(out), *rc.SEG_TINY,
                                       "--dense", method, "--classes", "star,circle"], out)
        assert code == 2 and f"--dense {method}" in rc.error_lines(output)[0], (method, damage, output[-600:])
        assert not list(out.glob("*.png")), (method, damage)

    run()


# --------------------------------------------------------------------------------------------- an edited record
def _leaves(record: object, path: tuple = ()) -> list[tuple]:
    """Every field of a JSON record, nested ones too, as key paths (``("numerics", "dtype")``)."""
    if isinstance(record, dict):
        found = [path] if path else []
        return found + [p for k, v in record.items() for p in _leaves(v, (*path, k))]
    return [path] if path else []


def _edit_field(record: dict, field: tuple, pick: int) -> object:
    """Edit ``record`` in place at the key path ``field`` (:func:`_leaves`) as :func:`_edited` picks: the field's new
    value, or ``...`` where it was deleted."""
    holder = record
    for key in field[:-1]:
        holder = holder[key]
    value = _edited(holder[field[-1]], pick)
    if value is ...:
        del holder[field[-1]]
    else:
        holder[field[-1]] = value
    return value


def _edited(value: object, pick: int) -> object:
    """Another value of a field: a dtype or mode name flipped (the edit a user makes to pass a check), a number
    moved, a string changed, or the field deleted (``...``)."""
    flips = {"bf16": "fp32", "fp32": "bf16", "fast": "reproducible", "reproducible": "fast"}
    if pick % 3 == 0:
        return ...
    if isinstance(value, str) and value in flips:  # (a dict or a list is no name to flip)
        return flips[value]
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    return None


def test_an_edited_record_never_mixes_dtypes(ws):
    """A field of an extract folder's ``_stage.json`` edited (nested ones too: its ``numerics``) or deleted, and cam
    run at a drawn ``--precision``: exit 2 in one line, or exit 0 having made every CAM in the dtype every feature
    file's own header records (bf16 features once reached `cam --precision fp32`, certified, by an edited dtype)."""
    import json

    from vpltool import io

    copy, out = ws.root / "fuzz_record_features", ws.root / "fuzz_record_cams"
    made = {io.header_numerics(io.read_header(p)).get("dtype") for p in ws.features.glob("*.safetensors")}
    other = {"bf16": "fp32", "fp32": "bf16"}[made.pop()]

    @FUZZ
    @given(field=st.sampled_from(_leaves(json.loads((ws.features / "_stage.json").read_text()))),
           pick=st.integers(0, 50), precision=st.sampled_from(["auto", "fp32", "bf16"]))
    @example(field=("numerics", "dtype"), pick=1, precision=other)  # every time: the held-back class
    @example(field=("numerics",), pick=0, precision=other)
    def run(field, pick, precision):
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(ws.features, copy)
        record = json.loads((copy / "_stage.json").read_text())
        value = _edit_field(record, field, pick)
        (copy / "_stage.json").write_text(json.dumps(record))
        code, output = _holds(ws, ["cam", str(copy), "-p", str(ws.text), "-o", str(out), "--precision", precision,
                                   *rc.CPU], out, own=(copy,))
        if code == 0:
            features = {io.header_numerics(io.read_header(p)).get("dtype") for p in copy.glob("*.safetensors")}
            cams = {io.header_numerics(io.read_header(p)).get("dtype") for p in out.glob("*.safetensors")}
            assert cams == features, (field, value, precision, features, cams)

    run()


# the workspace's stage folders, and the next stage that reads each (its record believed: a mask folder's dtype)
READERS = {"features": lambda ws, f, out, p: ["cam", f, "-p", ws.text, "-o", out, "--precision", p, *rc.CPU],
           "cams": lambda ws, f, out, p: ["crf", f, "-o", out, "--workers", "1"],
           "pseudo": lambda ws, f, out, p: ["train-decoder", f, "-p", ws.text, "-o", out, *rc.DECODER_ARGS[:-2],
                                            "--precision", p, *rc.CPU]}


@pytest.mark.parametrize("kind", sorted(READERS))
def test_an_edited_record_of_any_folder_kind_is_refused_by_the_stage_that_reads_it(ws, kind):
    """Any field of a stage folder's sealed ``_stage.json`` edited or deleted (its seal too), and the next stage
    run: exit 2 in one line naming the folder, before anything is written (mask folders included, whose PNGs
    cannot say their dtype: once an edited crf record let bf16 masks into an fp32 training, exit 0)."""
    import json

    folder = getattr(ws, kind)
    copy, out = ws.root / f"fuzz_sealed_{kind}", ws.root / f"fuzz_sealed_{kind}_out"

    @FUZZ
    @given(field=st.sampled_from(_leaves(json.loads((folder / "_stage.json").read_text()))),
           pick=st.integers(0, 50), precision=st.sampled_from(["auto", "fp32", "bf16"]))
    @example(field=("numerics", "dtype"), pick=1, precision="fp32")
    @example(field=("record_digest",), pick=0, precision="bf16")  # the seal deleted with the edit
    def run(field, pick, precision):
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(folder, copy)
        record = json.loads((copy / "_stage.json").read_text())
        edit = json.loads(json.dumps(record))
        value = _edit_field(edit, field, pick)
        if field == ("numerics", "dtype"):  # the dtype flipped, whatever this CPU made it in
            edit["numerics"]["dtype"] = value = {"bf16": "fp32", "fp32": "bf16"}[record["numerics"]["dtype"]]
        (copy / "_stage.json").write_text(json.dumps(edit))
        code, output = _holds(ws, READERS[kind](ws, copy, out, precision), out, own=(copy,))
        if edit == record:  # an edit that changed nothing (a value edited to itself)
            return
        unsealed = "record_digest" not in edit
        if unsealed and kind != "pseudo":  # an older vpltool's record: read as before, each item vouches for itself
            return
        assert code == 2 and str(copy.name) in rc.error_lines(output)[0], (field, value, output[-600:])

    run()


# --------------------------------------------------------------------------------------------- the environment
SWITCHES = ["1", "0", "true", "False", "YES", "no", "on", "off", "", " 1 ", "2", "-1", "garbage", "y", "enable",
            "1.0", "tru", "on\t"]


def test_a_switch_of_the_environment_is_read_as_said_or_refused(ws):
    """``VPLTOOL_REPRODUCIBLE`` and ``VPLTOOL_ASSUME_AMX`` drawn from the words people write: an on word asks the
    mode (in this process, where torch is loaded, said in its warning), an off word or none runs in fast mode, and
    anything else is one line naming the variable (``yes`` once ran in fast mode silently, ``2`` was ignored)."""
    from unittest import mock

    from vpltool.runtime import numerics

    @FUZZ
    @given(name=st.sampled_from([numerics.MODE_ENV, numerics.ASSUME_AMX_ENV]),
           value=st.one_of(st.sampled_from(SWITCHES), st.text(st.characters(blacklist_characters="\x00",
                                                                             blacklist_categories=("Cs",)),
                                                              max_size=6)))
    @example(name=numerics.MODE_ENV, value="yes")  # every time: the held-back class
    @example(name=numerics.MODE_ENV, value="2")
    def run(name, value):
        word = value.strip().lower()
        out = ws.root / "fuzz_switch"
        shutil.rmtree(out, ignore_errors=True)
        with mock.patch.dict(os.environ, {name: value}), \
                mock.patch.dict(numerics._state, {"late": None, "warned": False}):
            code, output = _holds(ws, ["text-prototypes", str(ws.features), "-o", str(out / "text.safetensors"),
                                       *rc.TEXT_ARGS, *rc.CPU], out)
        if word and word not in (*numerics.ON_WORDS, *numerics.OFF_WORDS):
            assert code == 2 and rc.error_lines(output)[0].startswith(f"error: {name}="), (name, value, output)
            return
        assert code == 0, (name, value, output)
        asked = name == numerics.MODE_ENV and word in numerics.ON_WORDS
        assert ("VPLTOOL_REPRODUCIBLE=1 asked" in output) == asked, (name, value, output)

    run()


# --------------------------------------------------------------------------------------------- the Python door
DOOR_VALUES = [None, 0, 5, -1, 1.5, True, "", "x", ["a"], ("a", "b"), {"a": 1}, b"x", Path("x")]


def test_the_python_door_answers_any_type_in_one_line(ws):
    """:func:`vpltool.segmenter` and a call, one keyword given a value of any type: a segmenter (or a result), or a
    :class:`~vpltool.errors.VplError`; never another exception (``templates=[...]``, ``model=None``,
    ``batch_size='2'`` were raw AttributeErrors and TypeErrors)."""
    import numpy as np

    import vpltool
    from vpltool.config import SegmentConfig
    from vpltool.errors import VplError

    keywords = sorted({*SegmentConfig.option_names("maskclip"), "model", "pretrained", "batch_size", "device",
                       "precision"} - {"dense", "classes"})
    base = {"model": "vpl-test-vit", "pretrained": "none", "device": "cpu", "templates": "a photo of a {}.",
            "background": "grass,sky"}

    @FUZZ
    @given(key=st.sampled_from(keywords), value=st.sampled_from(DOOR_VALUES), per_call=st.booleans())
    @example(key="templates", value=["a"], per_call=False)  # every time: the held-back classes
    @example(key="model", value=None, per_call=False)
    @example(key="batch_size", value="x", per_call=True)
    def run(key, value, per_call):
        try:
            if per_call:
                seg = ws.segmenter()
                seg(np.zeros((32, 32, 3), np.uint8), ["star"], **{key: value})
            else:
                vpltool.segmenter("maskclip", **{**base, key: value})
        except VplError as e:
            assert "\n" not in str(e), (key, value, str(e))
        try:
            vpltool.list_methods(value)
        except VplError:
            pass

    run()


# --------------------------------------------------------------------------------------------- a result's save
def _doors() -> list[str]:
    """Every door that segments a photo in Python: each model family of :func:`vpltool.list_methods` (walked, so a
    new family is drawn as soon as it registers) and an exported file's (:func:`vpltool.onnx_segmenter`)."""
    from vpltool.api.methods import method_families

    return [*sorted(set(method_families().values())), "onnx"]


def _door(ws: rc.Workspace, door: str):
    """A segmenter of ``door``, tiny and seeded: the tiny CLIP (``clip``), an `export --decoder` file of the
    workspace decoder (``onnx``), or the family's first method on its tiny checkpoint (model_kinds.KINDS)."""
    import vpltool
    from vpltool.api.methods import method_families

    if door == "clip":
        return ws.segmenter()
    if door == "onnx":
        pytest.importorskip("onnxruntime")
        path = ws.root / "fuzz_door.onnx"
        if not path.is_file():
            rc.cli_ok("export", "-o", path, "--decoder", ws.decoder / "decoder.safetensors", "--size", "96x96")
        return vpltool.onnx_segmenter(path)
    assert door in mk.KINDS, f"no tiny checkpoint for family {door!r}: add its row to tests/model_kinds.py"
    method = next(name for name, family in method_families().items() if family == door)
    return vpltool.segmenter(method, checkpoint=mk.KINDS[door].clean(ws), device="cpu")


# where save() is asked to write: the photo the result segmented (by its path, a symbolic link, a hard link: never,
# whatever overwrite says), a file of the user's (only with overwrite=True), a stage folder's mask (never)
SAVE_TARGETS = ("the photo", "a symbolic link to it", "a hard link to it", "a file of the user's",
                "a stage folder's mask")


@pytest.mark.parametrize("door", _doors())
def test_a_result_of_every_door_never_saves_over_its_photo_or_a_foreign_file(ws, door):
    """``result.save(path)`` of each door's result: over the photo it segmented (the ONNX door's once wrote there
    with overwrite=True), or over a file vpltool did not write without overwrite=True, or into a stage folder: one
    line naming the path, nothing written; a file of the user's with overwrite=True is replaced, as asked."""
    from vpltool.errors import VplError

    home = ws.root / f"fuzz_save_{door}"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir()
    photo = home / "photo.png"
    shutil.copy(sorted((ws.world / "images").glob("val_*.png"))[0], photo)
    result = _door(ws, door)(str(photo), ["star", "circle"]) if door != "onnx" else _door(ws, door)(str(photo))
    stage_mask = sorted(ws.pseudo.glob("*.png"))[0]
    kept = {p: p.read_bytes() for p in (photo, stage_mask)}

    @FUZZ
    @given(target=st.sampled_from(SAVE_TARGETS), overwrite=st.booleans())
    @example(target="the photo", overwrite=True)  # every time: each door's photo, and a file of the user's
    @example(target="a hard link to it", overwrite=True)
    @example(target="a file of the user's", overwrite=False)
    def run(target, overwrite):
        path = {"the photo": photo, "a symbolic link to it": home / "link.png", "a hard link to it": home / "hard.png",
                "a file of the user's": home / "notes.png", "a stage folder's mask": stage_mask}[target]
        for made in (home / "link.png", home / "hard.png", home / "notes.png"):
            made.unlink(missing_ok=True)
        (home / "link.png").symlink_to(photo.name)
        os.link(photo, home / "hard.png")
        (home / "notes.png").write_bytes(b"my notes")
        try:
            result.save(path, overwrite=overwrite)
            refused = None
        except VplError as e:
            refused = str(e)
        if target == "a file of the user's" and overwrite:  # replaced, as the user asked
            assert refused is None and (home / "notes.png").read_bytes() != b"my notes", (door, refused)
        else:
            assert refused is not None and "\n" not in refused and refused.startswith(str(path)), \
                (door, target, overwrite, refused)
        assert all(p.read_bytes() == data for p, data in kept.items()), (door, target, "written over")
        if target == "a file of the user's" and not overwrite:
            assert (home / "notes.png").read_bytes() == b"my notes", (door, "the user's file written over")

    run()


# --------------------------------------------------------------------------------------------- plugins that end us
@pytest.fixture
def ending_plugins(ws, monkeypatch):
    """The plugins whose register() ends the process (os._exit), hangs or dies of SIGSEGV (plugin_sites.ENDING)
    and one that lists cleanly and marks the process that ran it (plugin_sites.MARKED), installed as if this process
    had just started (no plugin read yet); afterwards, as before. Yields the marks file."""
    import importlib

    from plugin_sites import SHORT_TIMEOUT, fresh_plugin_state, write_ending, write_marked

    site = ws.root / "fuzz_plugins_ending"
    if not site.is_dir():
        write_marked(write_ending(site))
    marks = ws.root / "fuzz_plugin_marks.txt"
    marks.write_text("")
    with fresh_plugin_state(quiet=True):
        monkeypatch.syspath_prepend(str(site))
        monkeypatch.setenv("VPLTOOL_PLUGIN_TIMEOUT", SHORT_TIMEOUT)
        monkeypatch.setenv("VPLTOOL_TEST_MARKS", str(marks))
        yield marks
        monkeypatch.undo()
        importlib.invalidate_caches()


def _own_names() -> dict[str, list[str]]:
    """vpltool's own methods (by family) and model families, walked from the registries."""
    from vpltool.api.methods import method_families
    from vpltool.models.registry import loaded_families

    by_family: dict[str, list[str]] = {}
    for method, family in method_families().items():
        by_family.setdefault(family, []).append(method)
    return {"methods": [m for names in by_family.values() for m in names], "families": loaded_families()}


def test_every_listing_command_and_method_beside_a_plugin_that_ends_the_process(ws, ending_plugins):
    """With plugins installed whose register() calls os._exit(0), hangs or crashes, and one that lists cleanly but
    marks the process it runs in: every command's --help, `vpltool --help`, list_methods() (details, licences),
    families(), list_models(), plugins.problems() and installed(), and a look-up of every own method and family of
    the registries run none of a plugin's code in this process (no mark, no entry point loaded) and keep their one-line
    promise; the listing names the three broken plugins and shows the clean one's method. A needed plugin that is
    broken is one line."""
    from plugin_sites import ENDING, ENDING_WORDS

    import vpltool
    from vpltool.api.methods import check_method, method_licence, method_summary
    from vpltool.config import SegmentConfig
    from vpltool.errors import VplError
    from vpltool.models import families
    from vpltool.models.registry import model_family, segmenter_family
    from vpltool.plugins import entry_points as ep

    own = _own_names()
    listed = vpltool.list_methods()
    details, licences = vpltool.list_methods(details=True), vpltool.list_methods(licences=True)
    assert "marked" in listed and "marked" in details and "marked" in licences, listed  # shown, from the child
    assert "marked" in vpltool.plugins.installed()["dense"] and set(own["families"]) <= set(families())
    vpltool.list_models()
    problems = vpltool.plugins.problems()
    for dist, words in ENDING_WORDS.items():
        assert [x for x in problems if x.startswith(f"plugin {dist} 0.1.0:") and words in x], (dist, problems)
    for name in ("--help", *(f"{c} --help" for c in sorted(COMMANDS))):
        r = rc.invoke(*name.split())
        assert r.exit_code == 0 and "Traceback" not in r.output, (name, r.output[-600:])
    for method in own["methods"]:  # each of vpltool's own: looked up, summarised, configured where a --dense one
        assert check_method(method) == method and method_summary(method) and method_licence(method) is not None
        if segmenter_family(method) == "clip":
            SegmentConfig.of(dense=method)
    for family in own["families"]:
        assert model_family(f"{family}:x")[0] in (family, "clip")
    with pytest.raises(VplError) as refused:  # needed, and broken: no clean plugin has it
        vpltool.segmenter(next(iter(ENDING)), model="vpl-test-vit", pretrained="none", device="cpu")
    assert "\n" not in str(refused.value), str(refused.value)
    foreign = sorted(k for k in ep._LOADED if not k.startswith("demo ="))
    assert foreign == [] and str(os.getpid()) not in ending_plugins.read_text().split(), \
        ("a listing ran a plugin's code in this process", foreign)
    assert ending_plugins.read_text().split(), "the clean plugin was never listed (in a child)"


# --------------------------------------------------------------------------------------------- every stage's record
def _stage_folder(ws: rc.Workspace, stage: str) -> Path:
    """A finished folder of ``stage`` (one whose folder a later stage classifies: vpltool.io.protocols), made once,
    tiny: the workspace's CAMs and CRF masks, its decoder's predictions, `segment` of the val photos, `sam-pseudo`
    over a mask folder as segment-anything's amg.py writes one (no SAM loads)."""
    made = {"cam": lambda: ws.cams, "crf": lambda: ws.pseudo, "predict": ws.predictions}
    if stage in made:
        return made[stage]()
    out = ws.root / f"fuzz_stage_{stage}"
    if not (out / "_stage.json").is_file():
        args = {"segment": [ws.world, "--split", "val", *rc.SEG_TINY, "--dense", "maskclip", "--classes",
                            "star,circle"],
                "sam-pseudo": [ws.cams, "--masks", rc._amg_folder(ws, "fuzz_stage_amg"), "--workers", "1"]}
        assert stage in args, f"no folder maker for stage {stage!r}: add it to _stage_folder (tests/test_fuzz.py)"
        rc.cli_ok(stage, args[stage][0], "-o", out, *args[stage][1:])
    return out


def _classified_stages() -> list[str]:
    """The stages whose folders a later stage classifies (:data:`vpltool.io.protocols._READERS`), walked."""
    from vpltool.io import protocols

    return sorted(protocols._READERS)


@pytest.mark.parametrize("stage", _classified_stages())
def test_an_edited_record_of_every_stage_is_refused_in_one_line(ws, stage):
    """Every stage's sealed ``_stage.json`` edited by hand, its dtype, its numeric mode, a field of its inputs or any
    other: `eval` of the folder (the cheapest reader: it refuses before reading an item) exits 2 in one line naming
    the folder and the stage that re-makes it; nothing is written."""
    import json

    folder = _stage_folder(ws, stage)
    record = json.loads((folder / "_stage.json").read_text())
    fields = [f for f in _leaves(record) if f != ("record_digest",)]
    copy, out = ws.root / f"fuzz_edited_{stage}", ws.root / f"fuzz_edited_{stage}_out"
    inputs = next(f for f in fields if f[0] == "inputs" and len(f) > 1)

    @FUZZ
    @given(field=st.sampled_from(fields), pick=st.integers(1, 50))
    @example(field=("numerics", "dtype"), pick=1)  # every time: the dtype, the mode and an input edited
    @example(field=("numerics", "mode"), pick=1)
    @example(field=inputs, pick=1)
    def run(field, pick):
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(folder, copy)
        edit = json.loads(json.dumps(record))
        value = _edit_field(edit, field, pick)
        if edit == record:  # an edit that changed nothing
            return
        (copy / "_stage.json").write_text(json.dumps(edit))
        code, output = _holds(ws, ["eval", str(copy), "--json", str(out / "scores.json")], out, own=(copy,))
        line = rc.error_lines(output)[0] if code == 2 else ""
        assert code == 2 and copy.name in line and f"vpltool {stage}" in line, (stage, field, value, output[-600:])
        assert not out.exists(), (stage, field, "written")

    run()
