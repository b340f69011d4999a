"""Each --dense method's own settings (vpltool.config.knobs.MethodKnobs): a dataclass of its knobs, not fields of
SegmentConfig; the options `segment` and `benchmark` add are made from it, records keep the knobs by name as before
(runs written before the move resume), and a malformed knobs class is refused in one line."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, fields
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vpltool.config import SegmentConfig, to_params
from vpltool.config.dense import DENSE_SPECS, KNOBS, MethodKnobs, check_knobs_class, knob
from vpltool.config.dense_knobs import CassKnobs, CorrCLIPKnobs, TridentKnobs
from vpltool.errors import VplError, VplWarning

OLD_RUNS = Path(__file__).parent / "assets" / "old_runs" / "segment_knobs"
# the commands that wrote tests/assets/old_runs/segment_knobs when the knobs were SegmentConfig fields (vpltool at
# 3e2cf00; corrclip's at 6d686ed, after its record took the mask folder by content), run in that folder; each
# resumes with nothing to do
TOY = ["--classes", "star,circle", "--model", "vpltool-toy", "--device", "cpu"]
DINO = ["--proxy-model", "vit_tiny_patch16_224", "--proxy-weights", "none"]
OLD_COMMANDS = {
    "naclip": ["--dense", "naclip"],
    "cass": ["--dense", "cass", *DINO, "--global-weight", "0.2", "--no-stretch"],
    "trident": ["--dense", "trident", *DINO, "--sam-model", "test", "--sam-weights", "none", "--cos-fac", "1.5",
                "--sam-halves"],
    "corrclip": ["--dense", "corrclip", *DINO, "--region-masks", "regions"],
}


def test_the_knobs_are_each_method_s_own_class_not_segment_config_fields():
    shared = {f.name for f in fields(SegmentConfig)}
    assert {"global_weight", "cos_fac", "region_masks", "sam_refine"}.isdisjoint(shared) and "knobs" in shared
    assert (DENSE_SPECS["cass"].knobs_class, DENSE_SPECS["trident"].knobs_class,
            DENSE_SPECS["corrclip"].knobs_class) == (CassKnobs, TridentKnobs, CorrCLIPKnobs)
    assert DENSE_SPECS["naclip"].knobs_class is MethodKnobs and DENSE_SPECS["naclip"].knobs == ()
    taken: dict = {}
    for spec in DENSE_SPECS.values():  # every row's class passes the check a plugin's passes
        check_knobs_class(spec.knobs_class, taken)
        taken.update({k.field: k for k in spec.knobs})
    cfg = SegmentConfig.of(dense="cass", global_weight=0.2, stretch=False)
    assert cfg.knobs == CassKnobs(global_weight=0.2, stretch=False) and SegmentConfig(dense="cass").knobs == CassKnobs()
    assert cfg == SegmentConfig(dense="cass", knobs=CassKnobs(global_weight=0.2, stretch=False))
    with pytest.raises(VplError, match="knobs is a TridentKnobs; give CassKnobs"):
        SegmentConfig(dense="cass", knobs=TridentKnobs(cos_fac=2.0))
    from dataclasses import replace  # another method's settings with nothing given: the method's own defaults

    assert replace(SegmentConfig(dense="naclip"), dense="trident").knobs == TridentKnobs()


def test_of_takes_the_method_s_knobs_by_name_and_says_what_it_ignores():
    with pytest.warns(VplWarning, match=r"--cos-fac 2 has no effect without --dense trident; it is ignored"):
        cfg = SegmentConfig.of(dense="cass", cos_fac=2.0, cluster_cut=0.2)
    assert cfg.knobs.cluster_cut == 0.2 and "cos_fac" not in to_params(cfg)
    with pytest.raises(VplError, match="no option 'slide_crp'; did you mean 'slide_crop'"):
        SegmentConfig.of(dense="naclip", slide_crp=3)
    with pytest.raises(VplError, match="--sam-refine: Trident's SAM prompt refinement needs SAM's image encoder"):
        SegmentConfig.of(dense="cass", sam_refine=True)
    # a knob that is a segmentor setting reaches the resolved settings
    assert SegmentConfig.of(dense="trident", sam_refine=True, minimal_area=9).resolved().minimal_area == 9


def test_a_malformed_knobs_class_is_refused_in_one_line():
    @dataclass(frozen=True)
    class Plain(MethodKnobs):
        size: int | None = None  # not made by knob()

    @dataclass(frozen=True)
    class Shared(MethodKnobs):
        short_side: int | None = knob("--short-side", "a shared setting's name")

    @dataclass(frozen=True)
    class Clash(MethodKnobs):
        spread: float | None = knob("--cos-fac", "Trident's option, another field")

    @dataclass(frozen=True)
    class Defaulted(MethodKnobs):
        size: int = knob("--size", "help")

    object.__setattr__(Defaulted.__dataclass_fields__["size"], "default", 3)
    taken = {k.field: k for spec in DENSE_SPECS.values() for k in spec.knobs}
    for cls, words in ((Plain, "make it with vpltool.config.dense.knob"), (Shared, "shared segment setting"),
                       (Clash, "option --cos-fac is already that of 'cos_fac'"), (Defaulted, "must be None"),
                       (dict, "subclassing vpltool.config.dense.MethodKnobs")):
        with pytest.raises(TypeError, match=words) as e:
            check_knobs_class(cls, taken)
        assert "\n" not in str(e.value)


def test_segment_and_benchmark_make_each_knob_option_from_its_class():
    import typer

    from vpltool.cli import app

    for command in ("segment", "benchmark"):
        params = {p.name: p for p in typer.main.get_command(app).commands[command].params}
        for field, row in KNOBS.items():
            assert row.option.split("/")[0] in params[field].opts
    assert {f.name for f in fields(CassKnobs)} <= set(KNOBS)


@pytest.mark.parametrize("run", list(OLD_COMMANDS))
def test_a_run_written_when_the_knobs_were_segment_config_fields_resumes(run, tmp_path, monkeypatch):
    """The folders of tests/assets/old_runs/segment_knobs were written by `segment` before the move; the same
    command resumes each with nothing to do (its record's parameters, the knobs among them, compare equal), and
    leaves its masks and record as they were. The photos moved with the asset, so the record's dataset identity
    (its absolute path and file times) is that of the copy: only the parameters are the old run's."""
    from vpltool.cli import app
    from vpltool.data import open_dataset

    work = tmp_path / "old"
    shutil.copytree(OLD_RUNS, work)
    monkeypatch.chdir(work)
    record = work / run / "_stage.json"
    old = json.loads(record.read_text())
    old["inputs"] = open_dataset("photos").inputs()
    record.write_text(json.dumps(old, indent=1))
    masks = {p.name: p.read_bytes() for p in (work / run).glob("*.png")}
    result = CliRunner().invoke(app, ["segment", "photos", "-o", run, *TOY, *OLD_COMMANDS[run]])
    assert result.exit_code == 0, result.output
    assert "0 masks" in result.output and "2 already done" in result.output
    # the same parameters (a folder recorded by content keeps the path it was read at last: not compared)
    assert _no_paths(json.loads(record.read_text())["params"]) == _no_paths(old["params"])
    assert {p.name: p.read_bytes() for p in (work / run).glob("*.png")} == masks


def _no_paths(value):
    """``value`` without the ``path`` of the files and folders it records by content."""
    if isinstance(value, dict):
        return {k: _no_paths(v) for k, v in value.items() if not (k == "path" and "sha256" in value)}
    return [_no_paths(v) for v in value] if isinstance(value, list) else value


def _older_corrclip_record(work: Path) -> dict:
    """corrclip's record as a vpltool before 48b463c wrote it: the mask folder as the path given and its files'
    digest beside the generator (``region_source.files_sha256``; since then ``region_masks`` holds the folder by
    content, ``{path, sha256, files}``, and that digest is its ``sha256``)."""
    from vpltool.data import open_dataset

    record = json.loads((work / "corrclip" / "_stage.json").read_text())
    params = record["params"]
    params["region_source"] = {"generator": "folder", "files_sha256": params["region_masks"]["sha256"]}
    params["region_masks"] = "regions"
    record["inputs"] = open_dataset("photos").inputs()
    return record


def test_a_corrclip_run_of_an_older_record_form_resumes_and_a_real_difference_is_still_refused(tmp_path,
                                                                                               monkeypatch):
    """A corrclip folder whose record holds the older form of its region source resumes with the same command
    (it was refused as "region_source differ"); other mask bytes are still refused, named as a changed input,
    and another setting still as another parameter."""
    from vpltool.cli import app

    work = tmp_path / "old"
    shutil.copytree(OLD_RUNS, work)
    monkeypatch.chdir(work)
    record, args = work / "corrclip" / "_stage.json", ["segment", "photos", "-o", "corrclip", *TOY,
                                                       *OLD_COMMANDS["corrclip"]]
    older = _older_corrclip_record(work)
    record.write_text(json.dumps(older, indent=1))
    masks = {p.name: p.read_bytes() for p in (work / "corrclip").glob("*.png")}
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "0 masks" in result.output and "2 already done" in result.output
    assert {p.name: p.read_bytes() for p in (work / "corrclip").glob("*.png")} == masks
    changed = {**older, "params": {**older["params"], "region_source": {"generator": "folder",
                                                                         "files_sha256": "0" * 64}}}
    record.write_text(json.dumps(changed, indent=1))  # made from other mask files than these
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "made from other inputs (region_masks" in result.output, result.output
    assert "its content changed (sha256 000000000000" in result.output and "other parameters" not in result.output
    record.write_text(json.dumps(older, indent=1))
    result = CliRunner().invoke(app, [*args, "--short-side", "224"])
    assert result.exit_code == 2 and "other parameters (settings, short_side differ)" in result.output, result.output
