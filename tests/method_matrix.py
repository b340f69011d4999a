"""The cells of tests/test_method_matrix.py: one method on one stage at one precision, run in this process (the
CLI through typer's runner, the Python segmenter directly), each answering ``"labels"`` (the run wrote its masks,
CAMs or scores) or ``"refused"`` (one ``error:`` line, exit 2), anything else a failure with what was seen.

Everything a cell reads is made once (:func:`make_inputs`) and named by :class:`Inputs`, so that the same cells run
in a second interpreter that sees a plugin (tests/test_method_matrix.py's example row).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

TESTS = Path(__file__).parent
TOY_DINO = str(TESTS.parent / "vpltool" / "assets" / "toy-dino" / "model.safetensors")
TEXT = {"templates": "a photo of a {}.", "background": "grass,sky"}
CLASSES = ("circle", "star")
SIDE = 32  # every method's short side here (its windows as its own settings, cut to the image)
STAGES = ("segment", "cam", "predict", "benchmark", "python")
# what a method needs beyond its spec row to run here: its proxy model and SAM follow from the row (the toy DINO,
# a random test SAM), region masks are CorrCLIP's knob, RADSeg's model is a RADIO checkpoint (a tiny C-RADIOv3 of
# tests/tiny_towers.py) with SigLIP 2's text tower beside it; OV-Stitcher stitches whole windows only, multiples of
# 112 pixels here (its 56 and both patches) no larger than the short side (SIDE otherwise), so it runs at 112; a new
# method that needs more adds its row
NEEDS = {"corrclip": {"region_masks": "{regions}"}, "textregion": {"region_masks": "{soft_regions}"},
         "ov-stitcher": {"region_masks": "{regions}", "short_side": 112, "slide_crop": 112, "slide_stride": 56},
         "radseg": {"proxy_model": "vpl_test_radio_v3", "proxy_weights": "{radio}",
                    "language_model": "{language_model}"},
         # SAM 3's methods: the sam3 family's tiny SAM 3 (112 px: a 56-pixel preview); no WordNet here
         "sam3": {"sam3_weights": "{sam3}"},
         "activesam": {"sam3_weights": "{sam3}", "preview_resolution": 56, "hypernym_tokens": 0}}


@dataclass(frozen=True)
class Inputs:
    """The files the cells read (paths as strings, so that they pass to another interpreter as JSON)."""

    root: str  # a scratch folder: each cell writes under it
    photos: str  # one 40x56 photo, no labels
    regions: str  # <stem>.npz region maps of the photo and of the benchmark's images
    soft_regions: str  # the same regions as TextRegion's soft masks (<stem>.npz, key masks, [R, H, W] in [0, 3])
    world: str  # the demo world (labelled scenes: cam --dense)
    prototypes: str  # its text prototypes (the tiny CLIP's)
    decoder: str  # a decoder over the tiny CLIP (predict --classes --dense)
    voc21: str  # the VOC21 miniature (benchmark)
    model_config_dir: str
    radio: str = ""  # a tiny C-RADIOv3 as NVlabs/RADIO's hub checkpoint ("": transformers missing, not made)
    language_model: str = ""  # a tiny SigLIP 2 text tower's Hugging Face folder beside it
    sam3: str = ""  # the sam3 family's tiny SAM 3 in Hugging Face's layout ("": transformers missing, not made)


def make_inputs(root: Path, world: Path, prototypes: Path, decoder: Path) -> Inputs:
    from vpltool.data.miniature import make_miniature

    photos, regions, soft = root / "photos", root / "regions", root / "soft_regions"
    photos.mkdir(parents=True)
    regions.mkdir()
    soft.mkdir()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (40, 56, 3)).astype(np.uint8)
    image[10:30, 14:42] = (220, 60, 40)
    Image.fromarray(image).save(photos / "photo.png")
    voc21 = make_miniature("voc21", root / "benchmarks")
    sizes = {"photo": (40, 56), **{p.stem: Image.open(p).size[::-1] for p in (voc21 / "JPEGImages").glob("*.jpg")}}
    for stem, (h, w) in sizes.items():  # four regions: DBSCAN merges some (CorrCLIP's path beyond two ids)
        ids = np.zeros((h, w), np.int64)
        ids[h // 4: 3 * h // 4, w // 4: 3 * w // 4], ids[: h // 4], ids[3 * h // 4:, : w // 2] = 1, 2, 3
        np.savez_compressed(regions / f"{stem}.npz", instance_mask=ids)
        # region 3 left out: its pixels take TextRegion's fallback (SCLIP's patch logits)
        masks = np.stack([(ids == i) * 3.0 for i in range(3)]).astype(np.float16)  # [3, h, w] in [0, 3]
        np.savez_compressed(soft / f"{stem}.npz", masks=masks)
    return Inputs(str(root), str(photos), str(regions), str(soft), str(world), str(prototypes), str(decoder),
                  str(voc21), str(TESTS / "assets" / "model_configs"), *_radseg_files(root / "radseg"),
                  _sam3_file(root / "sam3"))


def _sam3_file(folder: Path) -> str:
    """The sam3 family's tiny seeded SAM 3 (``write_tiny``); ``""`` without transformers (its cells are skipped)."""
    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        return ""
    from vpltool.models.backbones.sam3_files import write_tiny

    return str(write_tiny(folder, "hf"))


def _radseg_files(folder: Path) -> tuple[str, str]:
    """RADSeg's two inputs, tiny and seeded (``parity/radseg_files.py``'s :func:`tiny_files`); ``("", "")`` without
    transformers (its cells are then skipped)."""
    import importlib.util
    import sys

    if importlib.util.find_spec("transformers") is None:
        return "", ""
    import tiny_towers

    sys.path.insert(0, str(TESTS.parent / "parity"))
    import radseg_files as rf

    return tuple(map(str, rf.tiny_files(folder, tiny_towers.RADIO, CLASSES)))


def missing_inputs(method: str, inputs: Inputs) -> list[str]:
    """The :class:`Inputs` fields ``method``'s :data:`NEEDS` row reads that were not made here."""
    fields = [f for v in NEEDS.get(method, {}).values() for f in re.findall(r"{(\w+)}", str(v))]
    return [f for f in fields if not getattr(inputs, f)]


def method_options(method: str, inputs: Inputs) -> dict:
    """The options ``method`` takes here, by field name: its proxy model and SAM (from its spec row) and
    :data:`NEEDS`."""
    from vpltool.config.dense import DENSE_SPECS

    spec = DENSE_SPECS[method]
    out = {}
    if spec.proxy_model:
        out.update(proxy_model="test_vit", proxy_weights=TOY_DINO)
    if spec.sam:
        out.update(sam_model="test", sam_weights="none")
    out.update({k: v.format(**asdict(inputs)) if isinstance(v, str) else v for k, v in NEEDS.get(method, {}).items()})
    return out


def _flags(options: dict) -> list[str]:
    return [x for k, v in options.items() for x in (f"--{k.replace('_', '-')}", str(v))]


def expected(method: str, stage: str) -> str:
    """``labels`` or ``refused``: `cam --dense` and `predict --dense` load no side model and take no per-image
    input, so a method that takes a proxy or SAM, or needs region masks (:data:`NEEDS`), is refused there in one
    line; `benchmark` runs a method with presets."""
    from vpltool.config.benchmarks import BENCHMARK_PRESETS
    from vpltool.config.dense import PLAIN_METHODS

    if stage in ("cam", "predict") and (method not in PLAIN_METHODS or "region_masks" in NEEDS.get(method, {})):
        return "refused"
    if stage == "benchmark" and method not in BENCHMARK_PRESETS:
        return "refused"
    return "labels"


def _cli(args: list[str], out: Path, written: str) -> tuple[str, str]:
    from cli_once import invoke

    r = invoke(args)
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    if r.exit_code == 2 and len(errors) == 1 and "Traceback" not in r.output:
        return "refused", errors[0]
    if r.exit_code == 0 and any(out.rglob(written)):
        return "labels", ""
    detail = r.output[-1500:]
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        import traceback

        detail += "".join(traceback.format_exception(r.exception))[-2500:]
    return "failed", f"exit {r.exit_code}: {detail}"


def run_cell(method: str, stage: str, precision: str, inputs: Inputs, device: str = "cpu") -> tuple[str, str]:
    """``(outcome, detail)`` of ``method`` on ``stage`` at ``precision``: ``labels``, ``refused`` (detail: its one
    line) or ``failed`` (detail: what was seen)."""
    out = Path(inputs.root) / f"{stage}_{method}_{precision}_{device}"
    shutil.rmtree(out, ignore_errors=True)
    tiny = ["--model", "vpl-test-vit", "--pretrained", "none", "--model-config-dir", inputs.model_config_dir]
    run = ["--device", device, "--precision", precision]
    own = method_options(method, inputs)
    side = own.pop("short_side", SIDE)
    if stage == "segment":
        return _cli(["segment", inputs.photos, "-o", out, "--classes", ",".join(CLASSES), *tiny, "--dense", method,
                     "--short-side", side, *_flags(TEXT), *_flags(own), *run], out, "*.png")
    if stage == "cam":
        return _cli(["cam", inputs.world, "--split", "val", "-p", inputs.prototypes, "-o", out, "--dense", method,
                     "--dense-side", side, *run], out, "*.safetensors")
    if stage == "predict":
        return _cli(["predict", inputs.decoder, "--split", "val", "-o", out, "--classes", ",".join(CLASSES),
                     "--dense", method, "--dense-side", side, *run], out, "*.png")
    if stage == "benchmark":
        return _cli(["benchmark", method, "--root", f"{_voc(method)}={inputs.voc21}", "-o", out, *tiny,
                     "--short-side", side, *_flags(own), *run], out, "table.json")
    return _python(method, precision, inputs, own, device, side)


def _voc(method: str) -> str:
    """The VOC miniature's benchmark for ``method``: voc21, or voc20 (the same root) where its presets have no voc21
    (RADSeg's reference runs no benchmark with a background class)."""
    from vpltool.config.benchmarks import BENCHMARK_PRESETS

    p = BENCHMARK_PRESETS.get(method)
    return "voc20" if p is not None and "voc21" not in p.names else "voc21"


def _python(method: str, precision: str, inputs: Inputs, own: dict, device: str, side=SIDE) -> tuple[str, str]:
    import vpltool
    from vpltool.errors import VplError

    try:
        seg = vpltool.segmenter(method, model="vpl-test-vit", pretrained="none",
                                model_config_dir=inputs.model_config_dir, device=device, precision=precision,
                                short_side=side, **TEXT, **own)
        result = seg(str(Path(inputs.photos) / "photo.png"), list(CLASSES))
    except VplError as e:
        return ("refused", str(e)) if "\n" not in str(e) else ("failed", str(e))
    ok = result.labels.shape == (40, 56) and int(result.labels.max()) <= len(CLASSES)
    return ("labels", "") if ok else ("failed", f"labels {result.labels.shape}")


# ---- the text-supervised families: a checkpoint each (tests/test_method_matrix.py makes them)
def run_text_cell(family: str, name: str, checkpoint: str, stage: str, precision: str, inputs: Inputs,
                  device: str = "cpu") -> tuple[str, str]:
    """A text-supervised family's checkpoint (``--model NAME:FILE``) on a stage that takes it: `segment`, `cam`
    (its seeds), `benchmark`, the Python segmenter; `predict --dense` takes none (``refused`` is not asked)."""
    out = Path(inputs.root) / f"{stage}_{name}_{precision}_{device}"
    shutil.rmtree(out, ignore_errors=True)
    model, run = ["--model", f"{name}:{checkpoint}"], ["--device", device, "--precision", precision]
    if stage == "segment":
        return _cli(["segment", inputs.photos, "-o", out, "--classes", ",".join(CLASSES), *model, "--short-side", 48,
                     "--slide-crop", 0, *run], out, "*.png")
    if stage == "cam":
        return _cli(["cam", inputs.world, "--split", "val", *model, "--pgseg-side", 48, "-o", out, *run], out,
                     "*.safetensors")
    if stage == "benchmark":
        return _cli(["benchmark", name, *model, "--root", f"voc21={inputs.voc21}", "-o", out, "--short-side", 48,
                     "--slide-crop", 0, *run], out, "table.json")
    import vpltool
    from vpltool.errors import VplError

    try:
        seg = vpltool.segmenter(name, checkpoint=checkpoint, device=device, precision=precision, short_side=48,
                                slide_crop=0)
        result = seg(str(Path(inputs.photos) / "photo.png"), list(CLASSES))
    except VplError as e:
        return "refused", str(e)
    return ("labels", "") if result.labels.shape == (40, 56) else ("failed", f"labels {result.labels.shape}")


def main(argv: list[str]) -> None:
    """In a second interpreter: ``python -c "import method_matrix; method_matrix.main(sys.argv[1:])" INPUTS_JSON
    METHOD PRECISION...``: every stage of METHOD at each precision, one JSON object of outcomes."""
    inputs = Inputs(**json.loads(argv[0]))
    method, precisions = argv[1], argv[2:]
    print(json.dumps({f"{stage}/{p}": [*run_cell(method, stage, p, inputs), expected(method, stage)]
                      for stage in STAGES for p in precisions}))
