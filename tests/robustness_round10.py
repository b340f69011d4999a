"""The tenth round of bad input, as rows of the table of ``robustness_cases.py`` (which imports this module last, so
the rows follow its own in docs/robustness.md): each row fails with its fix reverted."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import bad_output_method as bom  # tests/ is on sys.path

from robustness_cases import ASSETS, CPU, SEG_TINY, TINY, Workspace, case, cli_ok

SEG_VAL = ["--split", "val", *SEG_TINY, "--classes", "star,circle"]
TOY_DINO = Path(__file__).resolve().parents[1] / "vpltool" / "assets" / "toy-dino" / "model.safetensors"


def _py_case(name: str, lines: str | list[str], *expect: str, exit_code: int = 2) -> None:
    """A row of Python ``lines`` (one statement each: the page shows them joined by ``;``)."""
    @case(f"Python: {name}", *expect, exit_code=exit_code, python=True)
    def _row(ws: Workspace) -> Iterator[list[object]]:
        yield [lines] if isinstance(lines, str) else list(lines)


SEGMENTER = "vpltool.segmenter('maskclip', model='vpl-test-vit', pretrained='none', device='cpu'"


# ---- H: a --dense method's output is checked before a mask is written (vpltool.stages._masks), built-in or plugin
# a damage of shape or dtype is caught a step earlier, where the postprocess hook returns (models/dense/hooks.py)
HOOK_LINE = ("plugin this process: --dense test-bad-output: its hook postprocess returned",
             "of the shapes it was given; fix the plugin")


def _bad_output_case(damage: str, *expect: str, by_hook: bool = False):
    lines = HOOK_LINE if by_hook else ("--dense test-bad-output (plugin this process): its output for "
                                       "world/images/val_00000", *expect, "so it is not used: fix the plugin")

    @case(f"segment --dense by a method (a plugin) whose output is damaged: {damage} (once written and certified)",
          *lines)
    def _row(ws: Workspace) -> Iterator[list[object]]:
        with bom.registered(damage) as method:
            yield ["segment", ws.world, "-o", ws.out("seg_bad_output"), *SEG_VAL, "--dense", method]

    return _row


_bad_output_case("a label past the classes", "holds labels from 0 to 3 (1 pixel outside 0..2 and not 255)")
_bad_output_case("labels past 255", "holds labels from 300 to ", "outside 0..2 and not 255")
_bad_output_case("negative labels", "holds labels from -1 to ")
_bad_output_case("a half-size label map", by_hook=True)
_bad_output_case("float labels", by_hook=True)
_bad_output_case("NaN probabilities", "gives 1 probability that is NaN or inf")
_bad_output_case("probabilities above 1", "probabilities outside [0, 1]")
_bad_output_case("probabilities of another shape", by_hook=True)


@case("predict --classes --dense by a method whose labels pass the classes (the same check as segment's)",
      "--dense test-bad-output (plugin this process): its output for world/images/val_00000",
      "outside 0..2 and not 255")
def _predict_bad_output(ws: Workspace) -> Iterator[list[object]]:
    with bom.registered("a label past the classes") as method:
        yield ["predict", ws.decoder / "decoder.safetensors", "--split", "val", "-o", ws.out("pred_bad_output"),
               "--classes", "star,circle", "--dense", method, *CPU]


@case("cam --dense by a method whose postprocess gives a half-size label map (once a RuntimeError in its maps)",
      *HOOK_LINE)
def _cam_bad_output(ws: Workspace) -> Iterator[list[object]]:
    with bom.registered("a half-size label map") as method:
        yield ["cam", ws.world, "--split", "train", "-p", ws.text, "-o", ws.out("cams_bad_output"), "--dense",
               method, *CPU]


@case("Python: a segmenter whose method gives labels past the classes (once returned as they were)",
      "VplError: method test-bad-output (plugin this process): its output for image (a ndarray)",
      "outside 0..1 and not 255", python=True)
def _py_bad_output(ws: Workspace) -> Iterator[list[object]]:
    with bom.registered("a label past the classes") as method:
        yield [f"s = vpltool.segmenter({method!r}, model='vpl-test-vit', pretrained='none', device='cpu', "
               "templates='a photo of a {}.', background='grass,sky')",
               "s(np.zeros((32, 32, 3), np.uint8), ['star'])"]


# ---- H: the dtype and mode of a folder's items are read from each item's own header, not from _stage.json alone
def _amx_features(ws: Workspace, name: str) -> Path:
    """A copy of the workspace's features as an AMX CPU makes them (bf16: --precision auto there), whatever CPU
    runs the case."""
    made = ws.root / "features_amx_made"
    if not (made / "_stage.json").is_file():
        with mock.patch.dict(os.environ, {"VPLTOOL_ASSUME_AMX": "1"}):
            cli_ok("extract", ws.world, "--split", "train", "-o", made, *TINY, *CPU, "--workers", "1")
    return ws.copy(made, name)


def _edit_record(folder: Path, edit) -> None:
    """``edit`` the folder's record and seal it again (the edit a forger makes: the checks behind the seal)."""
    from vpltool import io

    record = json.loads((folder / "_stage.json").read_text())
    edit(record)
    (folder / "_stage.json").write_text(json.dumps(io.seal(record)))


@case("cam --precision fp32 on bf16 features whose _stage.json was edited to say fp32 (once certified)",
      "features_dtype_edited/train_000000.safetensors: made at bf16 (auto precision on a CPU with AMX), but its "
      "folder's _stage.json says at fp32", "the record was edited or the file is another run's",
      "re-run `vpltool extract` there with --overwrite")
def _cam_on_edited_dtype(ws: Workspace) -> Iterator[list[object]]:
    features = _amx_features(ws, "features_dtype_edited")
    _edit_record(features, lambda r: r["numerics"].update(dtype="fp32"))
    yield ["cam", features, "-p", ws.text, "-o", ws.out("cams_dtype_edited"), "--precision", "fp32", *CPU]


@case("cam --precision fp32 on bf16 features whose _stage.json lost its numerics (once read as an older vpltool's)",
      "features_no_numerics/_stage.json: records no 'numerics'", "the record is damaged",
      "re-run `vpltool extract` there with --overwrite")
def _cam_on_record_without_numerics(ws: Workspace) -> Iterator[list[object]]:
    features = _amx_features(ws, "features_no_numerics")
    _edit_record(features, lambda r: r.pop("numerics"))
    yield ["cam", features, "-p", ws.text, "-o", ws.out("cams_no_numerics"), "--precision", "fp32", *CPU]


@case("crf of bf16 CAMs whose _stage.json was edited to say fp32 (its masks would have recorded fp32)",
      "cams_dtype_edited/train_000000.safetensors: made at bf16", "but its folder's _stage.json says at fp32",
      "re-run `vpltool cam` there with --overwrite")
def _crf_on_edited_dtype(ws: Workspace) -> Iterator[list[object]]:
    made = ws.root / "cams_amx_made"
    if not (made / "_stage.json").is_file():
        with mock.patch.dict(os.environ, {"VPLTOOL_ASSUME_AMX": "1"}):
            cli_ok("cam", _amx_features(ws, "features_amx_for_cams"), "-p", ws.text, "-o", made, *CPU)
    cams = ws.copy(made, "cams_dtype_edited")
    _edit_record(cams, lambda r: r["numerics"].update(dtype="fp32"))
    yield ["crf", cams, "-o", ws.out("pseudo_dtype_edited"), "--workers", "1"]


# ---- M: weights of another open_clip architecture (open_clip's "text pos_embed width changed!" assertion)
def _wide_text_weights(ws: Workspace, base: str) -> Path:
    """The seeded random weights of test config ``base`` with a text tower 48 wide, not 32 (as ViT-S-16's 384 to
    PE-Core-S's 512): another architecture, saved as a file (made once)."""
    import tiny_towers  # noqa: F401  (the SigLIP 2 and PE-Core towers of the test configs, in timm's registry)
    from safetensors.torch import save_file

    from vpltool.models import ModelSpec, load_model

    path = ws.root / f"{base}-wide-text.safetensors"
    if not path.is_file():
        configs = ws.root / "wide_configs"
        configs.mkdir(exist_ok=True)
        config = json.loads((ASSETS / "model_configs" / f"{base}.json").read_text())
        config["text_cfg"]["width"] = 48
        (configs / f"{base}-wide.json").write_text(json.dumps(config))
        bb = load_model("clip", ModelSpec(f"{base}-wide", "none", config_dir=str(configs)), "cpu")
        save_file({k: v.contiguous() for k, v in bb.model.state_dict().items()}, str(path))
    return path


@case("segment --model vpl-test-pe (PE-Core's tower) --pretrained a CLIP's weights of another text width (as "
      "ViT-S-16's for PE-Core; once a 188-line AssertionError)", "vpl-test-vit-wide-text.safetensors: does not hold "
      "vpl-test-pe weights (text pos_embed width changed!); check --model")
def _pe_given_other_clip(ws: Workspace) -> Iterator[list[object]]:
    import tiny_towers  # noqa: F401

    yield ["segment", ws.world, "-o", ws.out("seg_pe_wide"), "--split", "val", "--model", "vpl-test-pe",
           "--pretrained", _wide_text_weights(ws, "vpl-test-vit"), *CPU, "--classes", "star"]


@case("segment --model vpl-test-sl2 (SigLIP 2's tower) --pretrained PE-Core's weights of another text width (once "
      "an AssertionError)", "vpl-test-pe-wide-text.safetensors: does not hold vpl-test-sl2 weights",
      "check --model")
def _siglip2_given_pe(ws: Workspace) -> Iterator[list[object]]:
    import tiny_towers  # noqa: F401

    yield ["segment", ws.world, "-o", ws.out("seg_sl2_wide"), "--split", "val", "--model", "vpl-test-sl2",
           "--pretrained", _wide_text_weights(ws, "vpl-test-pe"), *CPU, "--classes", "star"]


@case("segment --model local-dir: a folder whose open_clip_config.json says another text width than its weights "
      "(once an AssertionError)", "clip_wide_config: its weights do not load as the model its open_clip_config.json "
      "describes", "re-download or re-train that model")
def _local_dir_other_config(ws: Workspace) -> Iterator[list[object]]:
    from robustness_cases import _local_clip

    clip = _local_clip(ws, "clip_wide_config")
    config = json.loads((clip / "open_clip_config.json").read_text())
    config["model_cfg"]["text_cfg"]["width"] = 96
    (clip / "open_clip_config.json").write_text(json.dumps(config))
    yield ["segment", ws.world, "--split", "val", "-o", ws.out("seg_wide_config"), "--model", f"local-dir:{clip}",
           *CPU, "--classes", "star"]


# ---- M: the Talk2DINO feature cache (train-text's OUT/cache) as a link, a file, a forged entry; --overwrite keeps
# the last result until the new run has a checkpoint of its own
def _t2d_run(ws: Workspace, name: str) -> tuple[Path, list[object]]:
    from robustness_cases import _talk2dino_cached_run

    _, out, again = _talk2dino_cached_run(ws, name)
    return out, again


@case("train-text --overwrite over a run whose OUT/cache is a link to another run's cache of another crop size "
      "(once OSError: Cannot call rmtree on a symbolic link)", "t2d_link/cache: a feature cache made crop_size 48 "
      "there, 32 here", "(through the link to ", "not used: it is cleared and made again", exit_code=0,
      leaves=("t2d_link/*", "t2d_link/checkpoints/*", "t2d_link_other/cache/*", "-t2d_link_other/cache/*"))
def _t2d_cache_link(ws: Workspace) -> Iterator[list[object]]:
    import shutil

    from robustness_cases import _pairs_folder

    out, again = _t2d_run(ws, "t2d_link")
    other = ws.out("t2d_link_other")
    cli_ok("train-text", _pairs_folder(ws, "pairs_t2d"), "--family", "talk2dino", "--recipe", "demo", "-o", other,
           "--batch-size", "2", "--crop-size", "48", "--workers", "1", *CPU)
    shutil.rmtree(out / "cache")
    (out / "cache").symlink_to(other / "cache")
    yield again


@case("train-text --overwrite over a finished run whose OUT/cache is a file (once refused only after --overwrite "
      "had deleted its model, checkpoint and _stage.json)", "t2d_cache_file/cache: a file, where train-text keeps "
      "its feature cache (a folder); move it away or delete it", "or pass --no-feature-cache")
def _t2d_cache_file(ws: Workspace) -> Iterator[list[object]]:
    import shutil

    out, again = _t2d_run(ws, "t2d_cache_file")
    shutil.rmtree(out / "cache")
    (out / "cache").write_text("not a folder\n")
    yield again


@case("train-text --overwrite over a finished run whose OUT/cache is a link to nothing", "t2d_cache_gone/cache: a "
      "link to ", "which is not there, where train-text keeps its feature cache")
def _t2d_cache_dangling(ws: Workspace) -> Iterator[list[object]]:
    import shutil

    out, again = _t2d_run(ws, "t2d_cache_gone")
    shutil.rmtree(out / "cache")
    (out / "cache").symlink_to(ws.root / "no_such_cache")
    yield again


@case("train-text over a run folder whose feature-cache entry was forged with tensors of another shape and a "
      "valid checksum (once RuntimeError: stack expects each tensor to be equal size, after --overwrite had deleted "
      "the model)", "a damaged feature-cache entry (its tensors are heads float32 (2, 63), the cache's heads float32 "
      "(2, 64)); not used: its pair's features are computed again", exit_code=0, leaves=("t2d_forged/*",
                                                                                         "t2d_forged/cache/*"))
def _t2d_cache_forged(ws: Workspace) -> Iterator[list[object]]:
    from safetensors import safe_open
    from safetensors.torch import save_file

    from vpltool.stages.train_text.cache import _tensors_digest

    out, again = _t2d_run(ws, "t2d_forged")
    entry = sorted((out / "cache" / "image").glob("*/*.safetensors"))[0]
    with safe_open(str(entry), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k)[..., :-1].contiguous() for k in f.keys()}
    save_file(tensors, str(entry), metadata={**meta, "crc32": _tensors_digest(tensors)})  # a forger's checksum
    yield again


@case("train-text over a run folder whose feature cache's _cache.json is a folder (once a warning listing 'None "
      "there' for every key)", "t2d_record_dir/cache: a feature cache whose record _cache.json is a folder, not a "
      "file; not used: it is cleared and made again", exit_code=0,
      leaves=("t2d_record_dir/*", "t2d_record_dir/cache/*", "-t2d_record_dir/cache/*"))
def _t2d_cache_record_folder(ws: Workspace) -> Iterator[list[object]]:
    out, again = _t2d_run(ws, "t2d_record_dir")
    (out / "cache" / "_cache.json").unlink()
    (out / "cache" / "_cache.json").mkdir()
    yield again


# ---- M: vpltool app with Gradio installed but broken
@case("app with Gradio installed but broken (it does not import; once a traceback)", "vpltool app: Gradio is "
      "installed (broken_gradio/gradio/__init__.py) but does not import (ImportError: cannot import name 'HfFolder' "
      "from 'huggingface_hub'); reinstall it: pip install --force-reinstall gradio")
def _app_gradio_broken(ws: Workspace) -> Iterator[list[object]]:
    import sys

    package = ws.root / "broken_gradio" / "gradio"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(  # what a Gradio older than its huggingface_hub raises
        "raise ImportError(\"cannot import name 'HfFolder' from 'huggingface_hub'\")\n")
    gone = [name for name in sys.modules if name == "gradio" or name.startswith("gradio.")]
    with mock.patch.dict(sys.modules), mock.patch.object(sys, "path", [str(package.parent), *sys.path]):
        for name in gone:
            del sys.modules[name]
        yield ["app", "--port", "0"]


# ---- M, L: the environment's switches take the usual true and false words, and refuse any other value (that
# VPLTOOL_REPRODUCIBLE=yes runs reproducible is tests/test_numerics.py's: the mode is set before torch loads)
@case("VPLTOOL_REPRODUCIBLE=2 (once ignored silently: fast mode)", "VPLTOOL_REPRODUCIBLE='2': not a switch; set it "
      "to 1 (or true, yes, on) for reproducible mode, or 0 (false, no, off) (or unset it) for fast mode")
def _reproducible_two(ws: Workspace) -> Iterator[list[object]]:
    with mock.patch.dict(os.environ, {"VPLTOOL_REPRODUCIBLE": "2"}):
        yield ["cam", ws.features, "-p", ws.text, "-o", ws.out("cams_repro_2"), *CPU]


@case("VPLTOOL_REPRODUCIBLE=garbage (once ignored silently)", "VPLTOOL_REPRODUCIBLE='garbage': not a switch")
def _reproducible_garbage(ws: Workspace) -> Iterator[list[object]]:
    with mock.patch.dict(os.environ, {"VPLTOOL_REPRODUCIBLE": "garbage"}):
        yield ["cam", ws.features, "-p", ws.text, "-o", ws.out("cams_repro_garbage"), *CPU]


@case("VPLTOOL_ASSUME_AMX=maybe (once read as this CPU's, silently)", "VPLTOOL_ASSUME_AMX='maybe': not a switch; set "
      "it to 1 (or true, yes, on) to resolve --precision auto as on a CPU with AMX, or 0 (false, no, off) as on a CPU "
      "without (unset it: as this CPU)")
def _assume_amx_maybe(ws: Workspace) -> Iterator[list[object]]:
    with mock.patch.dict(os.environ, {"VPLTOOL_ASSUME_AMX": "maybe"}):
        yield ["cam", ws.features, "-p", ws.text, "-o", ws.out("cams_amx_maybe"), *CPU]


_py_case("VPLTOOL_ASSUME_AMX=yes and =off (once read as this CPU's, silently)",
         ["from unittest import mock", "from vpltool.device import cpu_has_amx",
          "print([mock.patch.dict('os.environ', {'VPLTOOL_ASSUME_AMX': w})(cpu_has_amx)() for w in ('yes', 'off')])"],
         "[True, False]", exit_code=0)


@case("--precision float32 (torch's name; once no 'did you mean')", "--precision 'float32': did you mean 'fp32'? "
      "choose auto, fp32, bf16 or fp16")
def _precision_float32(ws: Workspace) -> Iterator[list[object]]:
    yield ["cam", ws.features, "-p", ws.text, "-o", ws.out("cams_float32"), "--precision", "float32", *CPU]


# ---- M: a photo 100,000 pixels wide and 16 tall (the least side taken): mmseg's resize once gave a side of 0 pixels
@case("segment a photo 100,000 pixels wide and 16 tall (once ValueError: height and width must be > 0)",
      "✓ segment (maskclip): 1 masks", exit_code=0, leaves=("seg_strip/", "seg_strip/*"))
def _segment_strip(ws: Workspace) -> Iterator[list[object]]:
    yield ["segment", _strip(ws), "-o", ws.out("seg_strip"), *TINY, *CPU, "--dense", "maskclip", "--classes", "star",
           "--templates", "a photo of a {}.", "--background", "grass,sky"]


def _strip(ws: Workspace) -> Path:
    import numpy as np
    from PIL import Image

    folder = ws.root / "photos_strip"
    if not folder.is_dir():
        folder.mkdir()
        pixels = np.random.default_rng(0).integers(0, 256, (16, 100_000, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "strip.png", compress_level=1)
    return folder


@case("Python: a photo 100,000 pixels wide and 16 tall (once ValueError: height and width must be > 0)",
      "(16, 100000)", exit_code=0, python=True)
def _py_strip(ws: Workspace) -> Iterator[list[object]]:
    yield ["print(seg(np.zeros((16, 100_000, 3), np.uint8), ['star']).labels.shape)"]


# ---- M: the Python door's raw AttributeError and TypeError, each one line now
_py_case("templates= as a list (once AttributeError: 'list' object has no attribute 'strip')",
         f"{SEGMENTER}, templates=['a photo of a {{}}.'])", "VplError: templates=['a photo of a {}.']: a list; give "
         "a string: one template with '{}'")
_py_case("background=5 (once a raw error at the first call)", f"{SEGMENTER}, background=5)",
         "VplError: background=5: an int; give a string or a list of words")
_py_case("background= as a list of words (the command line's 'grass,sky')",
         f"print({SEGMENTER}, templates='a photo of a {{}}.', background=['grass', 'sky'])(np.zeros((32, 32, 3), "
         "np.uint8), ['star']).labels.shape)", "(32, 32)", exit_code=0)
_py_case("model=None (once AttributeError: 'NoneType' object has no attribute 'partition')",
         "vpltool.segmenter('maskclip', model=None)", "VplError: model=None: give the model by name as a string")
_py_case("model=Path(...) (once AttributeError)", "from pathlib import Path; vpltool.segmenter('maskclip', "
         "model=Path('clip_folder'))", "VplError: model=PosixPath('clip_folder'): give the model by name as a string",
         "'local-dir:clip_folder' for a model folder")
_py_case("batch_size='2' (once TypeError: '>=' not supported between 'str' and 'int')",
         f"{SEGMENTER}, batch_size='2')", "VplError: batch_size='2': a str; give a whole number")
_py_case("batch_size=1.5 (once taken)", f"{SEGMENTER}, batch_size=1.5)", "VplError: batch_size=1.5: a float; give a "
         "whole number")
_py_case("batch_size=True (once taken as 1)", f"{SEGMENTER}, batch_size=True)", "VplError: batch_size=True: a bool; "
         "give a whole number")
_py_case("batch_size=1.5 in a call (once taken)", "seg(np.zeros((32, 32, 3), np.uint8), ['star'], batch_size=1.5)",
         "VplError: batch_size 1.5: not a whole number (a float)")
_py_case("list_methods(123) (once TypeError: 'int' object is not iterable)", "vpltool.list_methods(123)",
         "VplError: list_methods(123): the filter is a pattern ('*clip*') or a list of them, not an int")


# ---- L: photos and class names as a user gives them
_py_case("a float numpy photo in [0, 1] (scikit-image's; once refused where a float tensor was taken)",
         "print(seg(np.full((32, 48, 3), 0.5), ['star']).labels.shape)", "(32, 48)", exit_code=0)
_py_case("a file:// URL (once 'file:/...: image not found', the URL mangled)",
         "print(seg('file://' + str(__import__('pathlib').Path('world/images/val_000000.png').resolve()), "
         "['star']).labels.shape)", "(96, 96)", exit_code=0)
_py_case("a class name with a line break (once one class 'star\\ncircle')",
         "seg(np.zeros((32, 32, 3), np.uint8), ['star\\ncircle'])", "VplError: classes: 'star\\ncircle' holds a line "
         "break or a tab, so it would be one class; give one class an entry")


@case("segment --classes with a line break in a name (a pasted list; once one class)", "--classes: 'star\\ncircle' "
      "holds a line break or a tab, so it would be one class")
def _classes_newline(ws: Workspace) -> Iterator[list[object]]:
    yield ["segment", ws.world, "--split", "val", "-o", ws.out("seg_newline"), *SEG_TINY, "--classes",
           "star\ncircle"]


@case("segment file:///.../val_000000.png (once 'file:/...: not found', the URL mangled)", "DATA file://",
      "a file:// URL; the command line takes the path itself: world/images/val_000000.png")
def _segment_file_url(ws: Workspace) -> Iterator[list[object]]:
    yield ["segment", f"file://{(ws.world / 'images' / 'val_000000.png').resolve()}", "-o", ws.out("seg_url"),
           *TINY, *CPU, "--classes", "star"]


# ---- found by the output check: ProxyCLIP's attention on a blank photo (every token alike: each one's similarity
# masked, a softmax of -inf alone) was NaN everywhere, its masks certified (the check refuses NaN probabilities now)
_py_case("--dense proxyclip on a blank photo (uniform grey; once NaN probabilities, its labels returned and its masks "
         "certified)", ["s = vpltool.segmenter('proxyclip', model='vpl-test-vit', pretrained='none', device='cpu', "
                        "templates='a photo of a {}.', background='grass,sky', proxy_model='test_vit', "
                        f"proxy_weights={str(TOY_DINO)!r})",
                        "print(np.isnan(s(np.full((96, 96, 3), 128, np.uint8), ['star', 'circle']).scores).any())"],
         "False", exit_code=0)


# ---- L: weights files: all zeros, a checkpoint's prefix said under the option given, a folder given for a file
def _proxy_args(ws: Workspace, out: str, model: str, weights: object) -> list[object]:
    return ["segment", ws.world, "-o", ws.out(out), *SEG_VAL, "--dense", "proxyclip", "--proxy-model", model,
            "--proxy-weights", weights, "--short-side", "64", "--slide-crop", "0"]


@case("segment --dense proxyclip --proxy-weights a DINOv3 file whose every weight is 0 (once accepted)",
      "zero_dinov3.safetensors: every weight is 0 (its ", "floating-point tensors): a placeholder or a save that "
      "wrote no values")
def _zero_dinov3(ws: Workspace) -> Iterator[list[object]]:
    import timm
    import tiny_towers  # noqa: F401  (a tiny DINOv3 under timm's name vpl_test_dinov3)
    from safetensors.torch import save_file

    path = ws.root / "zero_dinov3.safetensors"
    model = timm.create_model(tiny_towers.DINOV3, pretrained=False, num_classes=0)
    save_file({k: v.zero_().contiguous() if v.is_floating_point() else v.contiguous()
               for k, v in model.state_dict().items()}, str(path))
    yield _proxy_args(ws, "seg_zero_dinov3", tiny_towers.DINOV3, path)


@case("segment --dense proxyclip --proxy-weights a training checkpoint's 'model.'-prefixed tensors (once said under "
      "--dino-weights, an option segment lacks)", "warning: --proxy-weights dino_model_prefixed.safetensors: tensor "
      "names prefixed 'model.' (a training checkpoint); the prefix was stripped", exit_code=0,
      leaves=("seg_prefixed/", "seg_prefixed/*"))
def _proxy_prefixed(ws: Workspace) -> Iterator[list[object]]:
    from safetensors.torch import load_file, save_file

    path = ws.root / "dino_model_prefixed.safetensors"  # the toy DINO (timm's test_vit) as a training checkpoint
    save_file({f"model.{k}": v for k, v in load_file(TOY_DINO).items()}, str(path))
    yield _proxy_args(ws, "seg_prefixed", "test_vit", path)


@case("segment --proxy-weights a folder (once 'DINO weights file not found')", "dino_folder: a folder, not a DINO "
      "weights file (it holds model.safetensors); give the file itself: pass an existing file to --proxy-weights")
def _proxy_weights_folder(ws: Workspace) -> Iterator[list[object]]:
    from robustness_cases import DINO_MODEL

    folder = ws.root / "dino_folder"
    folder.mkdir(exist_ok=True)
    ws.dino_weights("dino_folder/model.safetensors")
    yield _proxy_args(ws, "seg_dino_folder", DINO_MODEL, folder)


@case("segment --pretrained a folder (once 'weights file not found')", "clip_weights_folder: a folder, not a "
      "weights file (it holds open_clip_model.safetensors); give the file itself")
def _pretrained_folder(ws: Workspace) -> Iterator[list[object]]:
    from robustness_cases import _local_clip

    folder = _local_clip(ws, "clip_weights_folder")
    yield ["segment", ws.world, "--split", "val", "-o", ws.out("seg_pretrained_folder"), "--model", "vpl-test-vit",
           "--pretrained", folder, *CPU, "--classes", "star"]


# ---- L: an entry named like an image that is no regular file (once skipped silently: one image fewer)
def _photos_with(ws: Workspace, name: str, make) -> Path:
    import shutil

    folder = ws.root / name
    if not folder.is_dir():
        folder.mkdir()
        shutil.copy(ws.world / "images" / "val_000000.png", folder / "photo.png")
        make(folder)
    return folder


@case("segment a folder of photos where one .png is a FIFO (once skipped silently)", "photos_fifo/pipe.png: a pipe "
      "(FIFO), not an image file; remove it, or put the image itself there")
def _photo_fifo(ws: Workspace) -> Iterator[list[object]]:
    folder = _photos_with(ws, "photos_fifo", lambda f: os.mkfifo(f / "pipe.png"))
    yield ["segment", folder, "-o", ws.out("seg_fifo"), *SEG_TINY, "--classes", "star"]


@case("segment a folder of photos where one .png is a link to /dev/zero (once skipped silently)", "photos_zero/"
      "zero.png: a link to /dev/zero, a device, not an image file")
def _photo_dev_zero(ws: Workspace) -> Iterator[list[object]]:
    folder = _photos_with(ws, "photos_zero", lambda f: (f / "zero.png").symlink_to("/dev/zero"))
    yield ["segment", folder, "-o", ws.out("seg_zero"), *SEG_TINY, "--classes", "star"]


# ---- L: eval of a folder another run is writing
@case("eval of a pseudo-mask folder another run is writing (once 'no _stage.json naming its dataset; pass --data')",
      "seg_writing: another vpltool run is writing it now; wait for it to finish, then score it")
def _eval_while_written(ws: Workspace) -> Iterator[list[object]]:
    from vpltool import io

    from robustness_cases import interrupted_copy

    folder = interrupted_copy(ws, ws.pseudo, "seg_writing")  # a run under way: _run.json, items, no _stage.json
    with io.output_lock(folder):
        yield ["eval", folder]


# ---- L: --precision auto in a later stage follows the dtype its inputs record
@case("cam --precision fp32 on features made at bf16 (an explicit dtype is never changed: refused as before)",
      "features_amx_fp32: made at bf16 (auto precision on a CPU with AMX); this run is at fp32: pass --precision "
      "bf16 to this command")
def _cam_explicit_fp32_on_bf16(ws: Workspace) -> Iterator[list[object]]:
    yield ["cam", _amx_features(ws, "features_amx_fp32"), "-p", ws.text, "-o", ws.out("cams_fp32_of_amx"),
           "--precision", "fp32", *CPU]


@case("cam, crf, train-decoder at --precision auto after extract --precision fp32 on a CPU with AMX (once cam was "
      "refused: 'made at fp32; this run is at bf16')", "✓ train-decoder", exit_code=0,
      leaves=("auto_follows/decoder/", "auto_follows/decoder/*", "auto_follows/decoder/checkpoints/*"))
def _auto_follows(ws: Workspace) -> Iterator[list[object]]:
    from robustness_cases import DECODER_ARGS

    root = ws.out("auto_follows")
    with mock.patch.dict(os.environ, {"VPLTOOL_ASSUME_AMX": "1"}):  # auto: bf16 here, but for its inputs' dtype
        cli_ok("extract", ws.world, "--split", "train", "-o", root / "features", *TINY, *CPU, "--workers", "1",
               "--precision", "fp32")
        cli_ok("cam", root / "features", "-p", ws.text, "-o", root / "cams", *CPU)
        cli_ok("crf", root / "cams", "-o", root / "pseudo", "--workers", "1")
        yield ["train-decoder", root / "pseudo", "-p", ws.text, "-o", root / "decoder", *DECODER_ARGS]


@case("segment --model pgseg:FILE on a photo 100,000 pixels wide and 16 tall (once OpenCV's resize assertion: a "
      "side of 0 pixels)", "✓ segment (pgseg): 1 masks", exit_code=0, leaves=("seg_strip_pgseg/", "seg_strip_pgseg/*"))
def _segment_strip_pgseg(ws: Workspace) -> Iterator[list[object]]:
    import model_kinds as mk

    release = mk.KINDS["pgseg"].clean(ws)
    with mock.patch.dict(os.environ):  # the test configs' folder is no PGSeg's (it would be said to have no effect)
        os.environ.pop("VPLTOOL_MODEL_CONFIGS", None)
        yield ["segment", _strip(ws), "-o", ws.out("seg_strip_pgseg"), "--model", f"pgseg:{release}", "--classes",
               "star", *CPU]
