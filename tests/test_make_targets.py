"""The README's targets in the README's order on a fresh run folder: `make demo`, then `make sgc`, `make dense`,
`make affinity` and `make sam`, each adding its own rows (its metrics files, then the table again).

The real Makefile runs for real (its rules, timestamps, recursion, ``-j``) with ``VPL`` pointed at a stand-in that
writes each command's output file instead of computing it and logs its command line, so the whole sequence takes a
few seconds. What is checked is make's choice of what to build, the part the stand-in cannot change: under the old
bare ``.SECONDARY:`` every target was an intermediate file, and ``make dense`` after ``make demo`` said "Nothing to
be done for 'report'" and added no row.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pace  # tests/ is on sys.path: hang bounds in idle-machine seconds

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")

# the stand-in vpltool: writes what each command's options name (a folder gets its _stage.json), logs its argv
FAKE = textwrap.dedent("""\
    #!{python}
    import json, os, sys
    from pathlib import Path

    args = sys.argv[1:]
    with open(os.environ["FAKE_VPL_LOG"], "a") as log:
        log.write(json.dumps(args) + "\\n")
    cmd, rest = args[0], args[1:]

    def touch(path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{{}}")

    def folder(path):
        touch(Path(path) / "_stage.json")
        if cmd == "train-decoder":
            touch(Path(path) / "decoder.safetensors")

    out = next((rest[i + 1] for i, a in enumerate(rest) if a in ("-o", "--json")), None)
    if cmd == "make-world":
        folder(rest[0])
    elif cmd == "demo-report":
        touch(Path(rest[0]) / "metrics.json")
    elif cmd == "report":
        touch(Path(out) / "index.html")
    elif cmd == "choose-pseudo":
        print(Path(rest[0]) / "pseudo")
    elif out is not None:
        touch(out) if out.endswith((".json", ".safetensors")) else folder(out)
    else:
        sys.exit("fake vpltool: no output in " + " ".join(args))
    # cam's second folder (--refine none's), crf's (--with-cams's) and its start labels' (sam-pseudo's)
    for second in ("--raw-out", "--with-out", "--start-out", "--with-start-out"):
        if second in rest:
            folder(rest[rest.index(second) + 1])
    """)


# the stand-in as the fork server's entry (FORK_ENTRY): each child logs its pid and its parent's, then runs it
FAKE_ENTRY = textwrap.dedent("""\
    import os, runpy

    def main():
        with open(os.environ["FAKE_SERVED_LOG"], "a") as log:
            log.write(f"{{os.getpid()}} {{os.getppid()}}\\n")
        runpy.run_path({script!r}, run_name="__main__")
    """)


def make(tmp: Path, target: str, *extra: str, served: bool = False) -> tuple[subprocess.CompletedProcess,
                                                                              list[list[str]]]:
    """``make TARGET`` on the run folder ``tmp/run`` with the stand-in; returns the result and the commands run.
    ``served``: the stand-in is no command-line ``VPL`` but the venv's vpltool and the fork server's entry (the
    Makefile's own ``VPL``, so that its demo targets run their commands through the server)."""
    log = tmp / "log.jsonl"
    log.write_text("")
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env["FAKE_VPL_LOG"] = str(log)
    vpl = [f"VPL={tmp / 'vpltool'}"]
    if served:
        env.update(FAKE_SERVED_LOG=str(tmp / "served.log"), PYTHONPATH=str(tmp), TMPDIR=str(tmp / "tmpdir"))
        vpl = ["FORK_ENTRY=fakevpl:main"]
    result = pace.run(["make", "--no-print-directory", target, f"RUN={tmp / 'run'}", f"VENV={tmp / 'venv'}",
                       *vpl, "WORKERS=2", *extra], 120, cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result, [json.loads(line) for line in log.read_text().splitlines()]


def outputs(cmds: list[list[str]], name: str) -> list[str]:
    """The output of each ``name`` command (its -o or --json), relative names under the run folder."""
    found = []
    for args in cmds:
        if args[0] == name:
            found.append(next(args[i + 1] for i, a in enumerate(args) if a in ("-o", "--json")))
    return found


@pytest.fixture()
def world(tmp_path: Path) -> Path:
    (tmp_path / "venv").mkdir()
    (tmp_path / "venv" / ".installed").write_text("")  # newer than pyproject.toml: `setup` is up to date
    fake = tmp_path / "vpltool"
    fake.write_text(FAKE.format(python=sys.executable))
    fake.chmod(0o755)
    (tmp_path / "venv" / "bin").mkdir()  # for the fork server: this interpreter, the stand-in as its entry
    (tmp_path / "venv" / "bin" / "python").symlink_to(sys.executable)
    (tmp_path / "venv" / "bin" / "vpltool").symlink_to(fake)  # the client's fallback
    (tmp_path / "fakevpl.py").write_text(FAKE_ENTRY.format(script=str(fake)))
    (tmp_path / "tmpdir").mkdir()
    return tmp_path


def test_demo_then_sgc_dense_affinity_each_add_their_rows(world: Path):
    run = world / "run"
    _, demo = make(world, "demo")
    assert [a[0] for a in demo][-2:] == ["demo-report", "report"]
    assert not any(a[0] == "segment" for a in demo)  # the demo itself leaves the open-vocabulary rows out
    assert not any("caa+sgc" in a for a in demo) and not any("dino" in a for a in demo)
    # none's and caa's CAMs of each split and prototypes from one GradCAM pass: four cam runs, not eight
    cams = [a for a in demo if a[0] == "cam"]
    assert sorted(a[a.index("--raw-out") + 1] for a in cams) == sorted(
        f"{run}/{c}" for c in ("cams_text", "cams_vision", "cams_text_val", "cams_vision_val"))
    crfs = [a for a in demo if a[0] == "crf"]  # and their CRF masks: four crf runs, not eight
    assert sorted(a[a.index("--with-out") + 1] for a in crfs) == sorted(
        f"{run}/{c}" for c in ("pseudo", "pseudo_val", "pseudo_text", "pseudo_text_val"))
    # the vision CAMs' runs also write sam-pseudo's start labels (for `make sam` below), the text CAMs' do not
    starts = sorted(a[a.index(o) + 1] for a in crfs for o in ("--start-out", "--with-start-out") if o in a)
    assert starts == sorted(f"{run}{r}/start/{c}" for r in ("", "/caa") for c in ("pseudo", "pseudo_val"))

    result, sgc = make(world, "sgc")
    assert "Nothing to be done" not in result.stdout
    assert f"{run}/metrics/caa+sgc/pseudo_val.json" in outputs(sgc, "eval")
    assert any("caa+sgc" in a for a in sgc if a[0] == "cam")
    assert [a[0] for a in sgc][-2:] == ["demo-report", "report"]

    result, dense = make(world, "dense")
    assert "Nothing to be done" not in result.stdout
    segmented = outputs(dense, "segment")
    methods = ("none", "maskclip", "sclip", "clearclip", "naclip", "sc-clip", "proxyclip", "cass", "trident")
    assert sorted(segmented) == sorted(f"{run}/dense/{m}/segment_val" for m in methods)
    scored = outputs(dense, "eval")
    assert {f"{run}/metrics/dense/{m}/segment_val.json" for m in methods} <= set(scored)
    assert {f"{run}/metrics/dense/maskclip/{f}.json" for f in ("cams", "pseudo", "pred_val")} <= set(scored)
    assert [a[0] for a in dense][-2:] == ["demo-report", "report"]
    assert not any("caa+sgc" in a for a in dense)  # sgc's rows are not redone

    result, affinity = make(world, "affinity")
    assert "Nothing to be done" not in result.stdout
    cams = [a for a in affinity if a[0] == "cam"]
    assert {a[a.index("--affinity") + 1] for a in cams} == {"dino", "clip+dino"}
    assert f"{run}/metrics/caa@dino/pseudo_val.json" in outputs(affinity, "eval")
    assert not any(a[0] == "segment" for a in affinity)
    assert [a[0] for a in affinity][-2:] == ["demo-report", "report"]

    result, sam = make(world, "sam")  # SAM's pseudo masks of each refinement, and their decoders as candidates
    assert "Nothing to be done" not in result.stdout
    assert sorted(outputs(sam, "sam-pseudo")) == sorted(f"{run}{r}/sam/{s}" for r in ("", "/caa")
                                                        for s in ("pseudo", "pseudo_val"))
    assert {f"{run}/metrics/sam/pseudo_val.json", f"{run}/metrics/caa/sam/pred_train.json"} <= set(outputs(sam, "eval"))
    chose = next(a for a in sam if a[0] == "choose-pseudo")
    assert chose[1:5] == [str(run), "none", "none+sam", "caa"] and chose[5] == "caa+sam"
    assert not any(a[0] == "crf" for a in sam)  # the CRF's masks are not redone
    for args in (a for a in sam if a[0] == "sam-pseudo"):  # and sam-pseudo starts from the labels crf wrote
        out = Path(args[args.index("-o") + 1])
        assert args[args.index("--start") + 1] == str(out.parent.parent / "start" / out.name)
    assert [a[0] for a in sam][-2:] == ["demo-report", "report"]

    # nothing a rule made was removed as an intermediate (the CAM and mask folders of every refinement stay)
    for args in demo + sgc + dense + affinity + sam:
        for out in outputs([args], args[0]) if args[0] not in ("make-world", "demo-report", "report",
                                                               "choose-pseudo") else ():
            assert Path(out).exists() or (Path(out) / "_stage.json").exists(), out
    # and once everything is there, each target has nothing left to do
    for target in ("demo", "sgc", "dense", "affinity", "sam"):
        _, again = make(world, target)
        assert again == [], (target, again)


def test_demo_runs_its_commands_through_one_fork_server_and_leaves_nothing(world: Path):
    """`make demo` (the Makefile's own VPL): every command of its recursive make is a child of one fork server
    (vpltool/runtime/forkserver.py), the same commands as plain processes run; the server and its socket are gone
    when make ends. FORK_SERVER=0: plain processes."""
    _, served = make(world, "demo", served=True)
    children = [line.split() for line in (world / "served.log").read_text().splitlines()]
    assert len(children) == len(served) > 30  # each command a child (the stand-in as a fallback would log no line)
    assert len({pid for pid, _ in children}) == len(children) and len({ppid for _, ppid in children}) == 1
    assert list((world / "tmpdir").iterdir()) == []  # the socket's folder removed
    assert not [p for p in Path("/proc").iterdir() if p.name == children[0][1]]  # the server ended
    shutil.rmtree(world / "run")
    (world / "served.log").unlink()
    _, plain = make(world, "demo", "FORK_SERVER=0", served=True)
    assert not (world / "served.log").exists()
    assert sorted(map(json.dumps, plain)) == sorted(map(json.dumps, served))


@pytest.mark.parametrize("target", ["demo", "sgc", "dense", "affinity", "sam", "sam3", "sam3-pseudo", "sam3-regions",
                                    "weclip", "pgseg"])
def test_no_target_deletes_what_a_pattern_rule_made(target):
    """Every pattern rule's target is in .PRECIOUS: make deletes no CAM folder record, mask record or decoder as an
    intermediate (with `.PRECIOUS: %.json %.safetensors`, which make 4.3 does not match against a rule's own
    pattern, `make -n weclip` ended in `rm runs/x/weclip_seed0/decoder.safetensors ...`)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    dry = subprocess.run(["make", "-n", target, "RUN=runs/x", "DEVICE=cpu"], cwd=ROOT, capture_output=True,
                         text=True, env=env)
    assert dry.returncode == 0, dry.stderr
    assert not [line for line in dry.stdout.splitlines() if line.startswith("rm ")], dry.stdout[-2000:]


def test_sam3_targets_add_their_rows_with_the_toy_sam3(world: Path):
    """`make sam3-pseudo` and `make sam3-regions` after `make demo`: sam-pseudo's SAM 3 masks of each refinement with
    the toy SAM 3 by default (their decoders candidates of the choice), and CorrCLIP's, OV-Stitcher's and TextRegion's
    rows with SAM 3's regions; neither is part of `make demo`, and each has nothing left to do once made."""
    run = world / "run"
    _, demo = make(world, "demo")
    assert not any(a[0] == "sam-pseudo" or "sam3" in a for a in demo)

    result, sam3 = make(world, "sam3-pseudo")
    assert "Nothing to be done" not in result.stdout
    assert sorted(outputs(sam3, "sam-pseudo")) == sorted(f"{run}{r}/sam3/{s}" for r in ("", "/caa")
                                                         for s in ("pseudo", "pseudo_val"))
    for args in (a for a in sam3 if a[0] == "sam-pseudo"):
        assert args[args.index("--masks") + 1] == "sam3"
        assert args[args.index("--sam-weights") + 1] == "vpltool/assets/toy-sam3"
    chose = next(a for a in sam3 if a[0] == "choose-pseudo")
    assert chose[1:6] == [str(run), "none", "none+sam3", "caa", "caa+sam3"]
    assert f"{run}/metrics/caa/sam3/pred_train.json" in outputs(sam3, "eval")
    assert not any(a[0] == "crf" for a in sam3)  # the CRF's masks are not redone

    result, regions = make(world, "sam3-regions")
    assert "Nothing to be done" not in result.stdout
    segmented = [a for a in regions if a[0] == "segment"]
    assert sorted(outputs(segmented, "segment")) == sorted(f"{run}/dense/{m}@sam3/segment_val"
                                                           for m in ("corrclip", "ov-stitcher", "textregion"))
    for args in segmented:
        assert args[args.index("--dense") + 1] in ("corrclip", "ov-stitcher", "textregion")
        assert args[args.index("--region-masks") + 1] == "sam3"
        assert args[args.index("--sam-weights") + 1] == "vpltool/assets/toy-sam3"
        assert args[args.index("--prob-threshold") + 1]  # each method's threshold is set
    assert not any(a[0] in ("sam-pseudo", "train-decoder") for a in regions)
    for target in ("sam3-pseudo", "sam3-regions"):
        _, again = make(world, target)
        assert again == [], (target, again)


def test_voc_with_sam3_needs_its_weights():
    """make voc takes no toy SAM 3: PSEUDO=sam3 without SAM3_PSEUDO_WEIGHTS on the command line is refused in one
    line, before anything runs; with them it runs on."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    base = ["make", "-n", "voc", "VOC_ROOT=/data/VOC2012", "PSEUDO=sam3", "RUN=runs/x"]
    refused = subprocess.run(base, cwd=ROOT, capture_output=True, text=True, env=env)
    assert refused.returncode != 0 and "needs SAM3_PSEUDO_WEIGHTS" in refused.stderr
    given = subprocess.run([*base, "SAM3_PSEUDO_WEIGHTS=/w/sam3"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert "needs SAM3_PSEUDO_WEIGHTS" not in given.stderr


def test_demo_installs_no_test_extra_and_a_current_setup_serves_it(tmp_path: Path):
    """`make demo`'s setup (setup-demo) pip-installs the CRF extra without the test extras; where `make setup` is
    current (its stamp newer than pyproject.toml) it installs nothing and only marks itself done."""
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    planned = subprocess.run(["make", "-n", "--no-print-directory", "setup-demo", f"VENV={venv}"], cwd=ROOT, env=env,
                             capture_output=True, text=True, check=True).stdout
    pip = [line for line in planned.splitlines() if "pip install" in line]
    assert len(pip) == 1 and pip[0].split("-e ")[1].startswith("'.[crf]'")  # the extras: crf alone
    venv.mkdir()
    (venv / ".installed").write_text("")  # newer than pyproject.toml
    subprocess.run(["make", "--no-print-directory", "setup-demo", f"VENV={venv}", "PYTHON=false"], cwd=ROOT, env=env,
                   capture_output=True, text=True, check=True)
    assert (venv / ".installed-demo").is_file() and not (venv / "bin").exists()  # no venv made, nothing installed


def test_every_numeric_test_is_in_a_file_that_make_test_runs_again(request):
    """`make test`'s second pass runs ``-m numeric`` over NUMERIC_FILES only (the files that grep finds marking one):
    a test marked numeric in any other way (a conftest hook, a mark built elsewhere) would silently miss it."""
    listed = subprocess.run(["make", "-s", "-C", str(ROOT), "--eval", "_numeric_files: ; @echo $(NUMERIC_FILES)",
                             "_numeric_files"], capture_output=True, text=True, check=True).stdout.split()
    marked = {Path(item.path).relative_to(ROOT).as_posix() for item in request.session.items
              if item.get_closest_marker("numeric")}
    assert listed, "NUMERIC_FILES is empty: the second pass would run nothing"
    if not marked:
        pytest.skip("no numeric test collected in this run (a part of the suite): the check needs the whole suite")
    assert marked <= set(listed), f"marked numeric but not in NUMERIC_FILES: {sorted(marked - set(listed))}"
