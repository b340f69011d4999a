"""`vpltool doctor`: each weights file a method would load (path, SHA-256, size, present or not), found through the
methods' and families' own lookup with no model loaded; an absent file is one `missing:` line saying how to get it,
then one `error:` line, exit 2."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

import vpltool
from vpltool.cli import app
from vpltool.config.dense import DENSE_SPECS


@pytest.fixture(autouse=True)
def no_model_loads(monkeypatch):
    """doctor reads files; building a model of any family fails the test."""
    import vpltool.models.registry as registry

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(registry, "load_model", refuse)


@pytest.fixture(scope="module")
def tiny_sam3(tmp_path_factory):
    pytest.importorskip("transformers")
    from vpltool.models.backbones.sam3_files import write_tiny

    return write_tiny(tmp_path_factory.mktemp("sam3") / "hf", "hf")


def _sha(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _cli(*args):
    return CliRunner().invoke(app, ["doctor", *map(str, args)], terminal_width=400)


def test_sam3s_files_by_content(tiny_sam3):
    r = _cli("--dense", "sam3", "--dense", "activesam", "--sam3-weights", tiny_sam3)
    assert r.exit_code == 0, r.output
    rows = vpltool.api.doctor(["sam3", "activesam"], sam3_weights=str(tiny_sam3))
    files = sorted(p for p in Path(tiny_sam3).iterdir() if p.is_file())
    assert {r.method for r in rows} == {"--dense sam3", "--dense activesam"}
    for method in ("--dense sam3", "--dense activesam"):
        mine = sorted((r for r in rows if r.method == method), key=lambda r: r.path)
        assert [Path(r.path) for r in mine] == files  # config.json, model.safetensors
        assert all(r.present and r.family == "sam3" for r in mine)
        assert [r.sha256 for r in mine] == [_sha(p) for p in files]
        assert [r.size for r in mine] == [p.stat().st_size for p in files]
    for row in rows:
        assert row.line() in r.output


@pytest.mark.parametrize("given", [None, "absent"])
def test_sam3_missing_says_how_to_get_it(given, tmp_path):
    args = ["--dense", "sam3"] + ([] if given is None else ["--sam3-weights", tmp_path / given])
    r = _cli(*args)
    lines = r.output.splitlines()
    missing = [line for line in lines if line.startswith("missing:")]
    errors = [line for line in lines if line.startswith("error:")]
    assert r.exit_code == 2 and len(missing) == 1 and len(errors) == 1 and lines[-1] == errors[0], r.output
    assert "gated facebook/sam3" in missing[0] and "sam3.pt" in missing[0] and "offline" in missing[0]
    assert (str(tmp_path / given) if given else "no file given to --sam3-weights") in missing[0]


def test_one_missing_line_per_absent_file(tmp_path):
    """Two methods reading one absent file: one line; two absent files: two."""
    r = _cli("--dense", "sam3", "--dense", "activesam", "--sam3-weights", tmp_path / "a")
    assert r.exit_code == 2 and r.output.count("missing:") == 1, r.output
    r = _cli("--dense", "trident", "--dense", "sam3", "--model", "vpl-test-vit", "--pretrained", tmp_path / "c.pt",
             "--proxy-weights", tmp_path / "d.pth", "--sam-weights", tmp_path / "s.pth", "--sam3-weights",
             tmp_path / "a")
    missing = [line for line in r.output.splitlines() if line.startswith("missing:")]
    assert r.exit_code == 2 and len(missing) == 4, r.output
    for name in ("c.pt", "d.pth", "s.pth", "a"):
        assert sum(str(tmp_path / name) + ":" in line for line in missing) == 1, name


def test_every_method_names_the_files_of_its_models(tiny_sam3, tmp_path):
    """Every built-in --dense method: each model it loads (its CLIP unless it gives its own, its proxy, its SAM,
    its SAM 3) by its file, present, with the file's digest."""
    from vpltool.models import ModelSpec

    files = {}
    for name in ("clip.pt", "dino.pth", "sam.pth"):
        files[name] = tmp_path / name
        files[name].write_bytes(name.encode() * 10)
    from vpltool.stages.doctor import doctor

    rows = doctor(
        None, (), ModelSpec("vpl-test-vit", str(files["clip.pt"])), proxy_weights=str(files["dino.pth"]),
        sam_weights=str(files["sam.pth"]), sam3_weights=str(tiny_sam3))
    by_method = {}
    for row in rows:
        assert row.present and row.sha256 == _sha(Path(row.path)), row
        by_method.setdefault(row.method.removeprefix("--dense "), set()).add(row.family)
    own = [n for n in DENSE_SPECS if DENSE_SPECS[n].plugin is None]
    assert set(own) <= set(by_method)
    for name in own:
        spec = DENSE_SPECS[name]
        expected = {"clip"} if name not in ("radseg", "sam3", "activesam") else set()
        expected |= {"dino"} if spec.proxy_model else set()
        expected |= {"sam"} if spec.sam else set()
        expected |= {"sam3"} if spec.concept_prompts else set()
        assert by_method[name] == expected, name


def test_region_masks_sam3_and_a_text_familys_checkpoint(tiny_sam3, tmp_path):
    rows = vpltool.api.doctor("corrclip", model="vpl-test-vit", pretrained="none", proxy_weights="none",
                              region_masks="sam3", sam_weights=str(tiny_sam3))
    assert {r.family for r in rows} == {"sam3"} and all(r.present for r in rows)  # random CLIP and DINO: no file
    ckpt = tmp_path / "pgseg.safetensors"
    ckpt.write_bytes(b"x" * 100)
    [row] = vpltool.api.doctor(model=f"pgseg:{ckpt}")
    assert (row.family, row.path, row.size, row.sha256) == ("pgseg", str(ckpt), 100, _sha(ckpt))
    r = _cli("--model", f"pgseg:{tmp_path / 'gone.safetensors'}")
    assert r.exit_code == 2 and "missing: --model pgseg:" in r.output and "pgseg.safetensors" in r.output


def test_sam3s_download_commands_each_fetch_one_layout_vpltool_reads(tmp_path):
    """The `missing:` line's download commands (sam3_weights.GET) each name the files of one layout, and what they
    fetch, passed as the line says, is read (a folder holding both layouts, the whole repository, is refused)."""
    import re
    import shutil

    from vpltool.errors import VplError
    from vpltool.models.backbones.sam3_files import write_tiny
    from vpltool.models.backbones.sam3_weights import GET, locate

    commands = re.findall(r"`hf download facebook/sam3 ([^`]*) --local-dir (\S+)`", GET)
    assert [c[0].split() for c in commands] == [["config.json", "model.safetensors"], ["sam3.pt"]]
    hf, meta = write_tiny(tmp_path / "hf", "hf"), write_tiny(tmp_path / "meta", "meta")
    for (names, folder), source, layout in zip(commands, (hf, meta.parent), ("hf", "meta")):
        (tmp_path / folder).mkdir()
        for name in names.split():  # what the command fetches
            shutil.copy(source / name, tmp_path / folder / name)
        passed = tmp_path / folder / "sam3.pt" if layout == "meta" else tmp_path / folder
        said = f"and pass {folder}/sam3.pt" if layout == "meta" else f"--local-dir {folder}` and pass that folder"
        assert said in GET
        assert locate(passed).layout == layout
    shutil.copy(meta, hf / "sam3.pt")  # the whole repository: both layouts in one folder
    with pytest.raises(VplError, match="holds both"):
        locate(hf)
