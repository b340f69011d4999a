"""The one registry of model families (vpltool.models.registry): which families there are, that each loads
offline from a local file, and that a name it does not know or a file of another architecture is one line (exit 2
from the CLI), never a random model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from vpltool.cli import app
from vpltool.errors import VplError
from vpltool.models import ClipBackbone, DinoBackbone, DinoSpec, ModelSpec, check_model, families, load_model
from vpltool.models.registry import family

ASSETS = Path(__file__).resolve().parents[1] / "vpltool" / "assets"
TOY_CLIP = ASSETS / "toy-clip"
TOY_DINO = ASSETS / "toy-dino" / "model.safetensors"
TOY_DINO_MODEL = "test_vit"  # the architecture of the shipped toy DINO (timm's test ViT)


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg, msg
    return msg


def test_the_families_are_listed():
    names = families()
    assert {"clip", "dino"} <= set(names)
    assert names == sorted(names)
    for name in ("clip", "dino"):
        fam = family(name)
        assert fam.name == name and callable(fam.load) and fam.summary


@pytest.mark.parametrize("call", [lambda: load_model("nope", None), lambda: check_model("nope", None)])
def test_an_unknown_family_is_one_line_naming_the_known_ones(call):
    with pytest.raises(VplError) as e:
        call()
    msg = _one_line(e)
    assert "'nope'" in msg and "clip" in msg and "dino" in msg


def test_clip_loads_offline_from_a_local_file(tiny_spec, tmp_path):
    """A weights file on disk is what the model holds, bit for bit (no download, no random init in its place)."""
    saved = load_model("clip", tiny_spec).model.state_dict()
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in saved.items()}, str(path))
    bb = load_model("clip", ModelSpec(tiny_spec.model, str(path), tiny_spec.config_dir), "cpu")
    assert isinstance(bb, ClipBackbone)
    assert all(torch.equal(saved[k], v) for k, v in bb.model.state_dict().items())


def test_clip_loads_the_shipped_toy_folder_with_a_dense_preset():
    bb = load_model("clip", ModelSpec(model=f"local-dir:{TOY_CLIP}"), "cpu", dense="naclip")
    assert isinstance(bb, ClipBackbone) and bb.mixing.method == "naclip"


def test_dino_loads_offline_from_a_local_file():
    spec = DinoSpec(TOY_DINO_MODEL, str(TOY_DINO))
    check_model("dino", spec)
    dino = load_model("dino", spec, "cpu")
    assert isinstance(dino, DinoBackbone)
    from safetensors.torch import load_file

    stored = load_file(str(TOY_DINO))
    state = dino.model.state_dict()
    assert stored.keys() <= state.keys()
    assert all(torch.equal(stored[k], state[k]) for k in stored)


def test_clip_refuses_a_file_of_another_architecture(tiny_spec):
    with pytest.raises(VplError) as e:
        load_model("clip", ModelSpec(tiny_spec.model, str(TOY_DINO), tiny_spec.config_dir))
    assert "does not hold" in _one_line(e)


@pytest.mark.parametrize("call", [check_model, lambda name, spec: load_model(name, spec, "cpu")])
def test_dino_refuses_a_file_of_another_architecture(call):
    with pytest.raises(VplError) as e:
        call("dino", DinoSpec(TOY_DINO_MODEL, str(TOY_CLIP / "open_clip_model.safetensors")))
    assert "open_clip_model.safetensors" in _one_line(e)


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def test_cli_another_architecture_is_one_line_and_exit_2(world, features_dir, text_protos, tmp_path):
    """Through the stages that ask the registry: extract (clip) and cam --affinity dino (dino); nothing written."""
    runner = CliRunner()
    out = tmp_path / "features"
    r = runner.invoke(app, ["extract", str(world), "-o", str(out), "--model", "vpl-test-vit", "--pretrained",
                            str(TOY_DINO), "--device", "cpu"])
    assert r.exit_code == 2, r.output
    assert len(_error_lines(r.output)) == 1 and "does not hold" in r.output
    assert not out.exists()
    cams = tmp_path / "cams"
    r = runner.invoke(app, ["cam", str(features_dir), "-p", str(text_protos), "-o", str(cams), "--refine", "caa",
                            "--affinity", "dino", "--dino-model", TOY_DINO_MODEL, "--dino-weights",
                            str(TOY_CLIP / "open_clip_model.safetensors"), "--device", "cpu"])
    assert r.exit_code == 2, r.output
    assert len(_error_lines(r.output)) == 1
    assert not cams.exists()


def test_the_segmenting_families_are_named_once_in_the_registry():
    """PGSeg and GroupViT are the pgseg family's, any other method name the clip family's (a --dense method); the
    stages get the pgseg family's hooks through the registry."""
    import vpltool.models.text.pgseg as pgseg
    from vpltool.models.registry import SEGMENTERS, family_module, segmenter_family
    from vpltool.models.text.family import text_family
    from vpltool.stages import segment_text
    from vpltool.stages.cam import text as cam_text

    assert [segmenter_family(m) for m in ("pgseg", "groupvit", "naclip", "maskclip", "none")] == \
        ["pgseg", "pgseg", "clip", "clip", "clip"]
    assert set(SEGMENTERS.values()) <= set(families())
    assert family_module("pgseg") is pgseg
    assert text_family("pgseg") is segment_text.text_family_of("pgseg") is cam_text._family("pgseg")
    assert isinstance(text_family("pgseg"), pgseg.PGSegFamily)
    with pytest.raises(VplError, match="unknown model family 'nope'"):
        family_module("nope")


def test_benchmark_of_a_pgseg_method_without_its_checkpoint_says_how_in_one_line(tmp_path):
    r = CliRunner().invoke(app, ["benchmark", "groupvit", "--root", f"voc21={tmp_path}", "-o", str(tmp_path / "b")])
    assert r.exit_code == 2, r.output
    (line,) = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert "benchmark groupvit: give its checkpoint, --model groupvit:FILE" in line
    assert not (tmp_path / "b").exists()


def test_a_plugin_family_gets_the_weights_rule_for_free(tmp_path):
    """A family registered from outside (a plugin), reading its file its own way (a bare torch.load): a NaN in the
    file is refused by the registry's load_model, in one line naming the file and the tensor; a load that returns
    nothing the registry can check is a TypeError, never a model that escapes the rule."""
    from vpltool.models import registry

    path = tmp_path / "plugin.pt"
    layer = torch.nn.Linear(3, 2)
    with torch.no_grad():
        layer.bias[1] = float("nan")
    torch.save(layer.state_dict(), path)

    def load(spec, device="cpu"):
        model = torch.nn.Linear(3, 2)
        model.load_state_dict(torch.load(spec, weights_only=True))
        return model

    try:
        registry.register_family("plugin-test", load, fix="ask the plugin's author")
        with pytest.raises(VplError) as e:
            load_model("plugin-test", path)
        assert _one_line(e) == f"{path}: tensor 'bias' holds NaN or inf; ask the plugin's author"
        registry.register_family("plugin-none", lambda spec, device="cpu": object())
        with pytest.raises(TypeError, match="no torch module"):
            load_model("plugin-none", path)
    finally:
        for name in ("plugin-test", "plugin-none"):
            registry._FAMILIES.pop(name, None)


def test_the_rule_finds_the_modules_a_family_returns():
    """The registry checks what a family's load returns: a module, a tuple holding one (the decoder and its file),
    or an object whose attributes hold them (the backbones); non-persistent buffers (a causal mask of -inf) are
    not weights."""
    from vpltool.models.registry import certify

    good, bad = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    with torch.no_grad():
        bad.weight[0, 0] = float("inf")
    good.register_buffer("mask", torch.full((2, 2), float("-inf")), persistent=False)
    holder = type("Backbone", (), {})()
    holder.model, holder.name = bad, "x"
    assert certify((good, "a file"), "w") == (good, "a file")
    for model in (bad, (good, bad), holder):
        with pytest.raises(VplError, match="^w: tensor 'weight' holds NaN or inf"):
            certify(model, "w")


def test_no_model_is_loaded_around_the_registrys_door():
    """A family's own load function is called by its registration alone: everything else asks the registry's
    load_model, where every weight is checked (RADSeg's backbone hook called load_dino itself, its weights unchecked).
    A new loader called directly elsewhere fails here."""
    import ast

    loads = {"load_backbone", "load_dino", "load_sam", "load_pgseg", "load_talk2dino", "load_decoder", "create_model"}
    registrations = {("vpltool/decoder/__init__.py", "load_decoder"), ("vpltool/models/backbones/clip.py",
                                                                       "create_model"),
                     ("vpltool/models/text/family.py", "impl.load_model"),
                     ("vpltool/models/text/pgseg/family.py", "load_pgseg"),
                     ("vpltool/models/text/talk2dino/family.py", "load_talk2dino")}
    root = Path(__file__).resolve().parents[1]
    found = set()
    for path in sorted((root / "vpltool").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            f, name = node.func, None
            if isinstance(f, ast.Name) and f.id in loads:
                name = f.id
            elif isinstance(f, ast.Attribute) and f.attr == "load_model" and ast.unparse(f.value) != "registry":
                name = ast.unparse(f)  # a text family's own hook (fam.load_model), not the registry's
            if name:
                found.add((path.relative_to(root).as_posix(), name))
    assert found - registrations == set(), sorted(found - registrations)
    assert registrations <= found  # the list names real call sites: a moved one is updated here
