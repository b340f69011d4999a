"""A method from outside the tree: tests/plugin_example, a package of its own, pip-installed offline, adds `--dense
example-smooth` (its knobs class, its post-process, its benchmark presets) and the model family `example-mean`
through the vpltool.plugins entry point; they appear in --help, list_methods() and benchmark, and run through the
CLI and Python, while `vpltool --help` imports neither torch nor the plugin's method module. A broken plugin is one
line naming its distribution and the fix, and the other commands run."""

from __future__ import annotations

import json

import pytest
from plugin_sites import BROKEN, TINY, fake_dist, install_example, run_with, write_broken


@pytest.fixture(scope="module")
def example_site(tmp_path_factory):
    return install_example(tmp_path_factory.mktemp("plugin"))


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory):
    return write_broken(tmp_path_factory.mktemp("broken") / "site")


LISTED = """
import json, sys
import typer
from vpltool import list_methods, plugins
plugins.load()  # a program that runs the CLI's app: the plugins' options join it when vpltool.cli is imported
from vpltool.cli import app
from vpltool.config.benchmarks import BENCHMARK_PRESETS
from vpltool.models import families
cli = typer.main.get_command(app).commands
seg = {p.name: p for p in cli["segment"].params}
out = {"dense_help": seg["dense"].help, "smooth": seg["smooth_size"].opts, "smooth_help": seg["smooth_size"].help,
       "benchmark": "smooth_size" in {p.name for p in cli["benchmark"].params},
       "presets": "example-smooth" in BENCHMARK_PRESETS, "cam": cli["cam"].params[0].name,
       "methods": list_methods(), "families": families(), "installed": plugins.installed(),
       "summary": list_methods("example*", details=True)["example-smooth"],
       "root_help": __import__("typer.testing").testing.CliRunner().invoke(app, ["--help"]).output,
       "heavy": [m for m in ("torch", "vpltool_example.method", "vpltool_example.attention", "vpltool_example.family")
                 if m in sys.modules]}
print(json.dumps(out))
"""


def test_the_example_is_listed_and_its_knob_is_an_option_without_importing_its_method(example_site):
    got = run_with([example_site], LISTED)
    assert "| example-smooth " in got["dense_help"] and got["smooth"] == ["--smooth-size"]
    assert got["smooth_help"].startswith("--dense example-smooth: the side, in pixels")
    assert got["benchmark"] and got["presets"]
    assert "example-smooth" in got["methods"] and got["methods"].index("example-smooth") < got["methods"].index("pgseg")
    assert "example-mean" in got["families"]
    assert got["installed"]["dense"] == dict.fromkeys(("example-smooth", "example-vv"), "vpltool-example 0.1.0")
    assert got["summary"].startswith("a dense CLIP method of the plugin vpltool-example 0.1.0; its segmentor: ")
    assert got["heavy"] == []  # the light module alone: torch and its method load when the method runs
    methods = got["root_help"].split("Methods:")[1]  # `vpltool --help` ends with the methods, the plugin's too
    assert "segment --dense METHOD: none, maskclip" in methods and "example-smooth" in methods, got["root_help"]


RUNS = """
import json, sys
import numpy as np
from PIL import Image
from typer.testing import CliRunner
import vpltool
import vpltool.plugins
assert vpltool.plugins.load("example-smooth") == []  # its --smooth-size joins the app's options at import
from vpltool.cli import app
world, out, *tiny = sys.argv[1:]
text = ["--templates", "a photo of a {}.", "--background", "grass,sky"]
run = CliRunner().invoke(app, ["segment", world, "--split", "val", "-o", out, "--classes", "circle,star", *tiny,
                               "--dense", "example-smooth", "--smooth-size", "3", "--short-side", "64",
                               "--device", "cpu", *text])
seg = vpltool.segmenter("example-smooth", model=tiny[1], pretrained="none", model_config_dir=tiny[5],
                        smooth_size=3, short_side=64, templates=text[1], background=text[3], device="cpu")
photo = sorted(p for p in __import__("pathlib").Path(world, "images").glob("val_*"))[0]
mask = np.asarray(Image.open(f"{out}/{photo.stem}.png"))
result = seg(str(photo), ["circle", "star"])
plain = vpltool.segmenter("example-smooth", model=tiny[1], pretrained="none", model_config_dir=tiny[5],
                          smooth_size=1, short_side=64, templates=text[1], background=text[3], device="cpu")
import torch
from vpltool.models import load_model
from vpltool_example.method import smoothed
before = torch.from_numpy(plain(str(photo), ["circle", "star"]).scores)
want = smoothed(before, 3, 0.1)  # with its own threshold
mean = load_model("example-mean", "2.0")(np.full((2, 2, 3), 255, np.uint8)).tolist()
print(json.dumps({"exit": run.exit_code, "output": run.output[-800:], "same": bool((mask == result.labels).all()),
                  "scores": float((want[0] - torch.from_numpy(result.scores)).abs().max()),
                  "labels": bool((want[1].numpy() == result.labels).all()),
                  "moved": float((want[0] - before).abs().max()),
                  "mean": mean, "record": json.load(open(f"{out}/_stage.json"))["params"]["smooth_size"]}))
"""


def test_the_example_runs_through_the_cli_and_python(example_site, world, tmp_path):
    got = run_with([example_site], RUNS, str(world), str(tmp_path / "seg"), *TINY)
    assert got["exit"] == 0, got["output"]
    assert "segment (example-smooth): 3 masks" in got["output"]
    assert got["same"]  # Python's labels are the CLI's mask
    # its post-process ran with its knob: the scores are the unsmoothed run's, box-averaged, and their labels
    assert got["scores"] < 1e-6 and got["labels"] and got["moved"] > 1e-3
    assert got["record"] == 3 and got["mean"] == [2.0, 2.0, 2.0]


BROKEN_RUN = """
import json, sys
from typer.testing import CliRunner
from vpltool.cli import app
world, out, *tiny = sys.argv[1:]
args = ["segment", world, "--split", "val", "--classes", "circle,star", *tiny, "--short-side", "64", "--device",
        "cpu", "--templates", "a photo of a {}.", "--background", "grass,sky"]
r = CliRunner()
plain = r.invoke(app, [*args, "-o", out + "/naclip", "--dense", "naclip"])
misspelt = r.invoke(app, [*args, "-o", out + "/misspelt", "--dense", "misspelt"])
clash = r.invoke(app, [*args, "-o", out + "/clash", "--dense", "clash"])
numpy = r.invoke(app, [*args, "-o", out + "/numpy", "--dense", "numpy-hooks"])
import subprocess
helped = subprocess.run([sys.executable, "-m", "vpltool", "segment", "--help"], capture_output=True, text=True)
from vpltool import list_methods
print(json.dumps({"plain": [plain.exit_code, plain.output], "misspelt": [misspelt.exit_code, misspelt.output],
                  "clash": [clash.exit_code, clash.output[-600:]], "methods": list_methods(),
                  "numpy": [numpy.exit_code, numpy.output],
                  "help": [helped.returncode, helped.stderr + helped.stdout]}))
"""


def test_a_broken_plugin_is_one_line_naming_it_and_the_other_commands_run(example_site, broken_site, world,
                                                                          tmp_path):
    got = run_with([example_site, broken_site], BROKEN_RUN, str(world), str(tmp_path), *TINY)
    code, output = got["plain"]  # vpltool's own method: no plugin is read, none is warned of
    assert code == 0 and "warning: plugin " not in output, output
    code, output = got["help"]  # --help lists them (each in a child process first): which are broken, before it
    assert code == 0, output
    lines = [line for line in output.splitlines() if line.startswith("warning: plugin ")]
    assert len(lines) == 5, output  # the misspelt hook too: its module is read (not imported) when it registers
    words = {"vpltool-broken-import 0.1.0": "failed (ModuleNotFoundError: No module named 'no_such_package_xyz')",
             "vpltool-clash 0.1.0": "--dense method 'naclip' is vpltool's own; the plugin's is not loaded",
             "vpltool-bad-knob 0.1.0": "its option --overlay is already one of vpltool's; it is left out",
             "vpltool-bad-text 0.1.0": "its configuration bad_text_config:Config cannot be imported",
             "vpltool-misspelt 0.1.0": "--dense method 'misspelt': its module misspelt_method: Hooks.dense_logit is "
                                       "no dense hook; did you mean 'dense_logits'?"}
    for dist, said in words.items():
        (line,) = [x for x in lines if x.startswith(f"warning: plugin {dist}:")]
        assert said in line and f"pip uninstall {dist.split()[0]}" in line, line
    code, output = got["misspelt"]  # left out: no such method, and the line that says why
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in output, output
    assert "--dense 'misspelt'" in errors[0] and "Hooks.dense_logit is no dense hook" in output
    assert got["clash"][0] == 2 and "--dense 'clash'" in got["clash"][1]  # its method is not there: no such name
    assert "misspelt" not in got["methods"] and "example-smooth" in got["methods"] and "badtext" not in got["methods"]
    assert "badknob" in got["methods"]  # its method stays, with its knob at its default
    assert set(BROKEN) >= {d.split()[0] for d in words}
    code, output = got["numpy"]  # its post-process returns numpy arrays: one line naming the hook, nothing written
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in output, output
    assert errors[0].startswith("error: plugin vpltool-numpy-hooks 0.1.0: --dense numpy-hooks: its hook postprocess "
                                "returned a tuple of 2 (a numpy array "), errors[0]
    assert "pip uninstall vpltool-numpy-hooks" in errors[0]
    assert not list((tmp_path / "numpy").glob("*.png"))


def test_a_row_added_in_process_joins_every_list_derived_from_the_table(monkeypatch):
    from dataclasses import dataclass

    from vpltool import list_methods
    from vpltool.config.benchmarks import BENCHMARK_PRESETS
    from vpltool.config.dense import (
        DENSE_CHOICES,
        DENSE_SEGMENTORS,
        DENSE_SPECS,
        KNOB_METHOD,
        KNOBS,
        PLAIN_METHODS,
        DenseMethodSpec,
        MethodKnobs,
        SegmentConfig,
        knob,
    )

    @dataclass(frozen=True)
    class Knobs(MethodKnobs):
        radius: int | None = knob("--radius", "a stand-in knob.")

    monkeypatch.setitem(DENSE_SPECS, "test-row", DenseMethodSpec(DENSE_SEGMENTORS["naclip"], module="test_plugins",
                                                                 knobs_class=Knobs))
    assert DENSE_CHOICES[-1] == "test-row" and "test-row" in PLAIN_METHODS and "test-row" in list_methods()
    assert KNOB_METHOD["radius"] == "test-row" and KNOBS["radius"].option == "--radius"
    assert SegmentConfig.of(dense="test-row", radius=3).knobs == Knobs(radius=3)
    assert DENSE_SPECS.plugin("test-row") == "this process" and "test-row" not in BENCHMARK_PRESETS
    monkeypatch.undo()
    assert "test-row" not in DENSE_CHOICES and "radius" not in KNOBS


@pytest.fixture
def own_problems(monkeypatch):
    """The problem lines this test adds are its own: every later command of this process would warn them."""
    from vpltool.plugins import entry_points

    monkeypatch.setattr(entry_points, "_PROBLEMS", list(entry_points._PROBLEMS))


def test_a_clash_or_a_malformed_row_is_one_problem_line_and_is_left_out(own_problems):
    from vpltool.config.dense import DENSE_CHOICES, DENSE_SEGMENTORS, DENSE_SPECS, DenseMethodSpec
    from vpltool.plugins import entry_points

    naclip = DENSE_SEGMENTORS["naclip"]
    entry_points.add("dense", "naclip", DenseMethodSpec(naclip, module="elsewhere"))
    entry_points.add("dense", "Bad Name", DenseMethodSpec(naclip, module="elsewhere"))
    entry_points.add("dense", "test-nomodule", DenseMethodSpec(naclip))
    entry_points.add("dense", "test-dict", {"settings": naclip})
    assert "test-nomodule" not in DENSE_CHOICES and len(DENSE_SPECS) == len(DENSE_CHOICES)
    said = entry_points.problems()
    for words in ("--dense method 'naclip' is vpltool's own; the plugin's is not loaded: rename it in the plugin",
                  "--dense method 'Bad Name': a --dense name is lower-case letters",
                  "--dense method 'test-nomodule': its spec row names no module",
                  "--dense method 'test-dict': register_dense_method takes a DenseMethodSpec, not a dict"):
        (line,) = [x for x in said if words in x]
        assert line.startswith("plugin this process: ") and "\n" not in line


TEXT_RUN = """
import json, sys
from typer.testing import CliRunner
import vpltool
from vpltool.cli import app
from vpltool.models.text.family import text_family
import text_family_stand_in as toy
world, out = sys.argv[1:]
fam = text_family("toytext")  # its module, named by the plugin's row, registers it
ckpt = fam.save_checkpoint(out + "/toy.safetensors", fam.build_model(fam.model_config(toy.ToyTextTrainConfig(
    crop_size=32)), seed=0))
r = CliRunner().invoke(app, ["segment", world, "--split", "val", "--model", f"toytext:{ckpt}", "-o", out + "/seg",
                             "--classes", "circle,star", "--device", "cpu"])
seg = vpltool.segmenter("toytext", checkpoint=str(ckpt), device="cpu")
photo = sorted(__import__("pathlib").Path(world, "images").glob("val_*"))[0]
print(json.dumps({"exit": r.exit_code, "output": r.output[-800:], "methods": vpltool.list_methods(family="toytext"),
                  "labels": list(seg(str(photo), ["circle", "star"]).labels.shape)}))
"""


def test_a_text_family_from_a_plugin_segments_by_its_checkpoint(world, tmp_path):
    """A distribution whose entry point registers the tests' stand-in family (its row: its module and its
    configuration class): `segment --model toytext:FILE` and ``vpltool.segmenter("toytext", checkpoint=FILE)``."""
    site = tmp_path / "site"
    fake_dist(site, "vpltool-toytext", "toytext_plugin:register", {"toytext_plugin": (
        "from vpltool.plugins import TextFamilyRow, register_text_family\n"
        "def register():\n    register_text_family('toytext', TextFamilyRow('text_family_stand_in_register', "
        "'text_family_stand_in:ToyTextTrainConfig', ('toytext',), 'the toy text family', 'a toytext file'))\n")})
    got = run_with([site], TEXT_RUN, str(world), str(tmp_path))
    assert got["exit"] == 0 and "segment (toytext): 3 masks" in got["output"], got["output"]
    assert got["methods"] == ["toytext"] and got["labels"] == [96, 96]


RUDE_RUN = """
import json, subprocess, sys
from vpltool import list_methods, plugins
methods = list_methods()  # a Python program: the plugin's sys.exit must not end it
said = plugins.problems()
def vpltool(*args):
    done = subprocess.run([sys.executable, "-m", "vpltool", *args], capture_output=True, text=True)
    return [done.returncode, done.stdout, done.stderr]
print(json.dumps({"methods": methods, "problems": said, "version": vpltool("-V"),
                  "help": vpltool("segment", "--help")}))
"""


def test_a_plugin_that_exits_interrupts_parses_argv_or_prints_is_kept_inside_its_line(tmp_path):
    """sys.exit(0) and KeyboardInterrupt in register() are one line each and the plugin is left out (the row it
    added before exiting too), in a Python program and on the command line; a plugin that runs argparse when imported
    sees no command line, and one that prints does not print into `vpltool -V`."""
    from plugin_sites import write_rude

    got = run_with([write_rude(tmp_path / "site")], RUDE_RUN)
    lines = {d: [x for x in got["problems"] if x.startswith(f"plugin {d} 0.1.0:")]
             for d in ("vpltool-exits", "vpltool-interrupts", "vpltool-argparse", "vpltool-prints")}
    (exits,) = lines["vpltool-exits"]
    assert "failed (it called sys.exit(0))" in exits and "pip uninstall vpltool-exits" in exits, exits
    (interrupted,) = lines["vpltool-interrupts"]
    assert "failed (KeyboardInterrupt in it)" in interrupted, interrupted
    assert lines["vpltool-argparse"] == [] and lines["vpltool-prints"] == []
    assert "exits" not in got["methods"] and "argparsed" in got["methods"] and "naclip" in got["methods"]
    code, out, err = got["version"]
    assert code == 0 and out.splitlines() == [f"vpltool {__import__('vpltool').__version__}"], (out, err)
    assert "hello from a plugin" not in out + err and "Traceback" not in err
    code, out, err = got["help"]
    assert code == 0 and out.startswith("Usage: python -m vpltool segment") and "argparse-plugin" not in out + err
    assert "argparsed" in out, out


def test_a_hook_that_returns_another_kind_is_one_line_naming_it():
    """What a class's own hook returns is checked where it returns (DenseHooks' RETURNS): None, a numpy array, a
    tensor of another rank or a list of the wrong count is one ContractError naming the method and the hook."""
    import numpy as np
    import torch

    from vpltool.errors import ContractError
    from vpltool.models.dense import DENSE_PRESETS, DenseHooks

    class Hooks(DenseHooks, method="test-returns", preset=DENSE_PRESETS["naclip"]):
        def dense_logits(self, bb, pixels, text, sizes, settings, extras):
            return self.cfg

        def feature_grid(self, bb, size):
            return np.array(size) // 16

        def postprocess(self, bb, probs, labels, extras, settings):
            return probs, labels.float()

        def probabilities(self, bb, logits, query_class, n_classes, settings):
            return logits.softmax(0), logits.argmax(0)  # a row per query, not per class

    probs, labels = torch.rand(2, 4, 5), torch.zeros(4, 5, dtype=torch.int64)
    text, pixels = torch.zeros(3, 8), torch.zeros(1, 3, 32, 40)
    for hooks, call, said in (
            (Hooks(None), lambda h: h.dense_logits(None, pixels, text, [(4, 5)], None, [{}]), "returned None; it "
             "returns a list of one [Q, H0, W0] float tensor per image, at its size"),
            (Hooks([torch.zeros(3, 4, 6)]), lambda h: h.dense_logits(None, pixels, text, [(4, 5)], None, [{}]),
             "returned a list of 1 (a 3-d torch.float32 tensor [3, 4, 6])"),
            (Hooks(), lambda h: h.feature_grid(None, (32, 48)), "returned a numpy array [2] int64"),
            (Hooks(), lambda h: h.postprocess(None, probs, labels, {}, None), "returned a tuple of 2 (a 3-d "
             "torch.float32 tensor [2, 4, 5], a 2-d torch.float32 tensor [4, 5])"),
            (Hooks(), lambda h: h.probabilities(None, torch.rand(3, 4, 5), torch.tensor([0, 1, 1]), 2, None),
             "returned a tuple of 2 (a 3-d torch.float32 tensor [3, 4, 5]")):
        with pytest.raises(ContractError) as e:
            call(hooks)
        assert str(e.value).startswith("--dense test-returns: its hook ") and said in str(e.value), str(e.value)
    # what keeps its contract passes through unchanged
    assert Hooks().probabilities(None, torch.rand(2, 4, 5), torch.arange(2), 2, None)[1].dtype == torch.int64


def test_a_plugin_knob_that_refuses_a_value_with_value_error_is_one_line(monkeypatch):
    """A plugin's knobs class refusing a value as dataclasses commonly do (ValueError in __post_init__) is one
    VplError naming the method, the plugin and the value, on the command line (exit 2) and in Python."""
    from dataclasses import dataclass

    import vpltool
    from vpltool.config.dense import DENSE_SEGMENTORS, DENSE_SPECS, DenseMethodSpec, MethodKnobs, SegmentConfig, knob
    from vpltool.errors import VplError
    from vpltool.plugins import VplError as PluginsVplError

    @dataclass(frozen=True)
    class Knobs(MethodKnobs):
        spread: int | None = knob("--spread", "a stand-in knob.")

        def __post_init__(self) -> None:
            if self.spread is not None and self.spread < 0:
                raise ValueError("negative spread")

    monkeypatch.setitem(DENSE_SPECS, "test-valueerror", DenseMethodSpec(DENSE_SEGMENTORS["naclip"],
                                                                        module="test_plugins", knobs_class=Knobs))
    with pytest.raises(VplError, match=r"^--dense test-valueerror \(plugin this process\): negative spread \(given "
                                       r"--spread -1\)$"):
        SegmentConfig.of(dense="test-valueerror", spread=-1)
    with pytest.raises(VplError, match="negative spread"):
        vpltool.segmenter("test-valueerror", spread=-1)
    assert SegmentConfig.of(dense="test-valueerror", spread=2).knobs == Knobs(spread=2)
    assert PluginsVplError is VplError  # the type a plugin raises: vpltool's own one-line error


def test_a_knob_s_help_gets_its_methods_prefix_once():
    """`--help` puts `--dense NAME: ` before a knob's text (knob()'s docstring says so); a plugin's text that starts
    with it already is not prefixed twice."""
    from vpltool.cli.dense_options import knob_help

    assert knob_help(("cass",), "the share [default: 0.1].") == "--dense cass: the share [default: 0.1]."
    assert knob_help(("my-method",), "--dense my-method: the share.") == "--dense my-method: the share."


ATTENTION_RUN = """
import json, sys
import torch
import tiny_towers  # registers the tiny SigLIP 2 tower in timm
from typer.testing import CliRunner
import vpltool
from vpltool.cli import app
from vpltool.errors import VplError
from vpltool.models import ModelSpec, load_model
from vpltool_example.attention import vv_attention
world, out, *tiny = sys.argv[1:]
configs = tiny[5]
text = ["--templates", "a photo of a {}.", "--background", "grass,sky"]
run = CliRunner().invoke(app, ["segment", world, "--split", "val", "-o", out, "--classes", "circle,star", *tiny,
                               "--dense", "example-vv", "--short-side", "64", "--device", "cpu", *text])
# its features by hand: blocks 0..L-2, then the last block's q, k, v, its v-v attention, out_proj (no residual, no
# MLP), ln_post and the projection
bb = load_model("clip", ModelSpec("vpl-test-vit", "none", config_dir=configs), "cpu", dense="example-vv")
pixels = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    got = bb.dense_features(pixels)
    enc = bb.encode(pixels, stop=bb.n_blocks - 1)
    attn = bb.model.visual.transformer.resblocks[-1].attn
    h = bb.model.visual.transformer.resblocks[-1].ln_1(enc.tokens)
    b, n, width = h.shape
    v = torch.nn.functional.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1)[2]
    v = v.reshape(b, n, attn.num_heads, -1).transpose(1, 2)
    mixed = attn.out_proj(vv_attention(v).transpose(1, 2).reshape(b, n, width))
    want = bb.dense(mixed)
sl2 = vpltool.segmenter("example-vv", model="vpl-test-sl2", pretrained="none", model_config_dir=configs,
                        short_side=64, templates=text[1], background=text[3], device="cpu")
photo = sorted(__import__("pathlib").Path(world, "images").glob("val_*"))[0]
try:
    vpltool.segmenter("example-smooth", model="vpl-test-sl2", pretrained="none", model_config_dir=configs)
    refused = ""
except VplError as e:
    refused = str(e)
# a plugin's CLIP family by --model FAMILY:SPEC, on the command line and in Python
import numpy as np
from PIL import Image
clip = CliRunner().invoke(app, ["segment", world, "--split", "val", "-o", out + "-clip", "--classes", "circle,star",
                                "--model", "example-clip:vpl-test-vit@3", "--short-side", "64", "--device", "cpu",
                                *text])
seg = vpltool.segmenter("naclip", model="example-clip:vpl-test-vit@3", short_side=64, templates=text[1],
                        background=text[3], device="cpu")
same = bool((np.asarray(Image.open(f"{out}-clip/{photo.stem}.png")) == seg(str(photo), ["circle", "star"]).labels
             ).all()) if clip.exit_code == 0 else False
print(json.dumps({"exit": run.exit_code, "output": run.output[-800:], "apart": float((got - want).abs().max()),
                  "sl2": list(sl2(str(photo), ["circle", "star"]).labels.shape), "refused": refused,
                  "timm": list(vpltool.list_methods()), "shape": list(got.shape),
                  "clip": [clip.exit_code, clip.output[-800:]], "same": same,
                  "model": json.load(open(f"{out}-clip/_stage.json"))["params"]["model"]}))
"""


def test_the_example_attention_method_and_clip_family_run(example_site, world, tmp_path):
    """example-vv, a preset and one attention hook: `segment --dense example-vv` runs; its features are its v-v
    attention on the last block's values by hand; it runs on a SigLIP 2 tower (its row says timm_tower=True), where
    example-smooth, whose row does not, is refused before a model loads with the plugin's own reason. The example's
    backbone family example-clip is named by --model example-clip:ARCH@SEED and segmenter(model=...)."""
    got = run_with([example_site], ATTENTION_RUN, str(world), str(tmp_path / "seg"), *TINY)
    assert got["exit"] == 0 and "segment (example-vv): 3 masks" in got["output"], got["output"]
    assert got["apart"] < 1e-5 and got["shape"][:2] == [2, 20]
    assert got["sl2"] == [96, 96]
    # (the Python door names its keyword: method, not --dense)
    assert got["refused"].startswith("method example-smooth (plugin vpltool-example 0.1.0) does not say it runs on a "
                                     "timm image tower"), got["refused"]
    assert "timm_tower=True" in got["refused"]
    # the example's CLIP family: --model example-clip:ARCH@SEED segments, as vpltool.segmenter does, and is recorded
    assert got["clip"][0] == 0 and "segment (naclip): 3 masks" in got["clip"][1], got["clip"][1]
    assert got["same"] and got["model"]["model"] == "example-clip:vpl-test-vit@3"


# a listing, then the modules and entry points of the plugins loaded in this process (none but vpltool's own)
LOADS = """
import json, sys
sys.argv = {argv!r}
if sys.argv[0] == "vpltool":
    from vpltool.cli import app
    try:
        app()
    except SystemExit:
        pass
else:
    import vpltool
    print(vpltool.list_methods("example*", details=True))
from vpltool.plugins import entry_points
print("LOADED", json.dumps([sorted(m for m in sys.modules if m.startswith("vpltool_example")),
                            sorted(k for k in entry_points._LOADED if not k.startswith("demo ="))]))
"""
ENDING_RUN = f"LOADS = {LOADS!r}\n" + """
import json, os, subprocess, sys
world, out, timeout, *tiny = sys.argv[1:]
os.environ["VPLTOOL_PLUGIN_TIMEOUT"] = timeout
def run(*args):  # the command line, as a user runs it
    done = subprocess.run([sys.executable, "-m", "vpltool", *args], capture_output=True, text=True)
    return [done.returncode, done.stdout + done.stderr]
def python(source):
    done = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True)
    return [done.returncode, done.stdout + done.stderr]
text = ["--templates", "a photo of a {}.", "--background", "grass,sky"]
seg = [world, "--split", "val", "--classes", "circle,star", *tiny, "--short-side", "64", "--device", "cpu", *text]
photo = sorted(__import__("pathlib").Path(world, "images").glob("val_*"))[0]
print(json.dumps({
    "import": python("import vpltool, vpltool.cli; from vpltool import segmenter; print('still here')"),
    "python": python(f"import vpltool; s = vpltool.segmenter('naclip', model={tiny[1]!r}, pretrained='none', "
                     f"model_config_dir={tiny[5]!r}, short_side=64, device='cpu'); "
                     f"print('labels', list(s({str(photo)!r}, ['circle', 'star']).labels.shape))"),
    "segment": run("segment", *seg, "-o", out + "/naclip", "--dense", "naclip"),
    "eval": run("eval", out + "/naclip"),
    "help": run("--help"),
    "named": run("segment", *seg, "-o", out + "/smooth", "--dense", "example-smooth", "--smooth-size", "3"),
    "listed": python("import json, vpltool; from vpltool import plugins; "
                     "print(json.dumps([vpltool.list_methods(), plugins.problems()]))"),
    # a name that no plugin listing cleanly registers: the os._exit plugin's, say; one error line, exit 2
    "needed": run("segment", *seg, "-o", out + "/needed", "--dense", "os-exit-method"),
    # what each listing loaded in vpltool's own process: the `vpltool` command's --help, segment --help and
    # benchmark --presets (as the vpltool script runs them), and a program's list_methods(details=True)
    "loads": {what: python(LOADS.format(argv=argv)) for what, argv in (
        ("--help", ["vpltool", "--help"]), ("segment --help", ["vpltool", "segment", "--help"]),
        ("benchmark --presets", ["vpltool", "benchmark", "--presets"]),
        ("list_methods", ["python", "-c"]))}}))
"""



def test_a_plugin_that_ends_hangs_or_crashes_costs_only_itself(example_site, tmp_path, world):
    """Three plugins whose register() calls os._exit(0), hangs or dies of SIGSEGV, beside the example: importing
    vpltool (and vpltool.cli), a built-in method in Python, `segment --dense naclip` and `eval` run none of their
    code (no line about them); `--help`, list_methods() and problems() list them, each in a child process, as one
    line each, after the plugins' timeout at most; the example's method runs when named, its knob an option."""
    from plugin_sites import ENDING, ENDING_WORDS, SHORT_TIMEOUT, write_ending

    site = write_ending(tmp_path / "site")
    got = run_with([example_site, site], ENDING_RUN, str(world), str(tmp_path), SHORT_TIMEOUT, *TINY)
    assert got["import"] == [0, "still here\n"], got["import"]
    code, output = got["python"]
    assert code == 0 and "labels [96, 96]" in output and "plugin" not in output, output
    for run in ("segment", "eval"):
        code, output = got[run]
        assert code == 0 and "warning: plugin" not in output and "Traceback" not in output, (run, output)
    assert "segment (naclip): 3 masks" in got["segment"][1]
    code, output = got["help"]
    assert code == 0 and "Usage:" in output and "example-smooth" in output.split("Methods:")[1], output
    (listed,) = [x for x in got["listed"][1].splitlines() if x.startswith("[[")]  # its warnings beside it
    methods, problems = json.loads(listed)
    assert "example-smooth" in methods and "naclip" in methods
    for dist, words in ENDING_WORDS.items():
        (line,) = [x for x in output.splitlines() if x.startswith(f"warning: plugin {dist} 0.1.0:")]
        assert words in line and f"pip uninstall {dist}" in line, line
        (line,) = [x for x in problems if x.startswith(f"plugin {dist} 0.1.0:")]
        assert words in line, line
    assert set(ENDING_WORDS) == set(ENDING)
    assert f"within {SHORT_TIMEOUT} s" in [x for x in problems if "vpltool-hangs" in x][0]
    code, output = got["named"]
    assert code == 0 and "segment (example-smooth): 3 masks" in output, output
    code, output = got["needed"]  # needed and broken: one error line, the last, exit 2; no traceback, no mask
    errors = [x for x in output.splitlines() if x.startswith("error:")]
    assert code == 2 and len(errors) == 1 and output.rstrip().endswith(errors[0]) and "Traceback" not in output
    assert "--dense 'os-exit-method'" in errors[0] and not (tmp_path / "needed").exists(), output
    for what, (code, output) in got["loads"].items():  # listed, each in a child: none loaded in this process
        (line,) = [x for x in output.splitlines() if x.startswith("LOADED ")]
        assert code == 0 and json.loads(line[len("LOADED "):]) == [[], []], (what, output)
        assert "example-smooth" in output, (what, output)  # and yet the listing shows the example's method
