"""vpltool's eight benchmarks, class files and per-benchmark presets against each reference's OWN code; prints ONE
JSON object.

    python parity/benchmarks_parity.py --ref DIR

``--ref DIR`` holds clones named ``NACLIP``, ``SCLIP``, ``ClearCLIP``, ``ProxyCLIP``, ``SC-CLIP``, ``CASS``,
``Trident``, ``CorrCLIP`` (its ``CorrCLIPv1/`` read), ``OV-Stitcher`` (the folder of ``ov_stitcher_parity.py``'s
docstring), ``TextRegion`` (its ``configs/cfg_ds/``), ``RADSeg`` (its ``evaluation/2d/`` read; any case; a
``owner+name`` folder works too); a missing one is reported, not compared. Each clone is read in its own process by
``benchmarks_ref_runner.py`` (its docstring says what is stubbed: the OpenMMLab imports of ``custom_datasets.py``;
the configs are executed as the Python files they are, ``_base_`` files under them; ``get_cls_idx`` runs alone).

Compared, per reference:

* ``presets``: the benchmarks it has configs for against those vpltool has presets for (RADSeg: its five
  ``mid_res_configs``, eval.py's default folder); for each, the config file vpltool's preset cites, and every value
  of that preset (:mod:`vpltool.config.benchmarks`) against the clone's: the config's ``model`` dict over the
  segmentor's ``__init__`` defaults (``logit_scale``, ``prob_thd``, ``area_thd``, ``slide_crop``,
  ``slide_stride``, ``pamr_steps``; RADSeg: ``RADSegEncoder``'s defaults, ``prediction_thresh`` its threshold, no
  logit scale setting) and the ``Resize`` short side; and each value the preset records without running it
  (``extra``: ProxyCLIP's ``beta`` / ``gamma``, RADSeg's ``coarse_thresh``) where the config names it;
* ``class_files``: the bundled file's bytes (sha256) against the clone's ``name_path`` file, and vpltool's reading
  of it (:func:`vpltool.data.class_files.read_class_file`, flattened) against the clone's ``get_cls_idx``: the
  same queries (stripped: see ``notes``) with the same class indices;
* ``templates``: a reference whose config names per-class prompt templates (OV-Stitcher's ``template_path``): the
  bundled prompt set its presets name (``--templates``) against that file, byte for byte;
* ``datasets``: for each benchmark the image and label folders (``data_prefix``), the split file (``ann_file``),
  ``reduce_zero_label`` (the pipeline's ``LoadAnnotations``, the dataset's argument, else the class's default) and
  the suffixes and class lists of the clone's own dataset classes (VOC20, Context60/59, COCO-Object) against
  :data:`vpltool.data.benchmarks.BENCHMARKS`. mmseg's own classes (VOC21, COCO-Stuff, Cityscapes, ADE20K) are not in
  the clones and are not compared here.

``coco_object_conversion``: the first clone's ``datasets/cvt_coco_object.py`` run on COCO-Stuff maps (the COCO
miniature's, and one holding every value 0..255) against :func:`vpltool.data.benchmarks.convert_coco_stuff`'s
``*_instanceTrainIds.png``, array for array; ``coco_stuff_conversion``: the same for mmseg's ``coco_stuff164k.py``
as a clone ships it (Trident) and ``*_labelTrainIds.png``.

``mismatches`` lists every difference; the bar is none.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vpltool.config.benchmarks import BENCHMARK_PRESETS  # noqa: E402
from vpltool.config.method_presets import CFG_FILES  # noqa: E402
from vpltool.data.benchmarks import BENCHMARKS  # noqa: E402
from vpltool.data.class_files import class_file_path, read_class_file  # noqa: E402

REFS = {"naclip": ("NACLIP", "naclip.py"), "sclip": ("SCLIP", "clip_segmentor.py"),
        "clearclip": ("ClearCLIP", "clearclip_segmentor.py"), "proxyclip": ("ProxyCLIP", "proxyclip_segmentor.py"),
        "sc-clip": ("SC-CLIP", "scclip_segmentor.py"), "cass": ("CASS", "cass_segmentor.py"),
        "trident": ("Trident", "trident.py"), "corrclip": ("CorrCLIP", "corrclip_segmentor.py"),
        "ov-stitcher": ("OV-Stitcher", "ov_stitcher_segmentor.py"), "textregion": ("TextRegion", "model_semantic.py"),
        "radseg": ("RADSeg", "radseg_segmentor.py")}
# a reference whose code is a folder of its repository (CorrCLIP's v1, beside its v2; RADSeg's evaluation/2d)
SUBFOLDER = {"corrclip": "CorrCLIPv1", "radseg": "evaluation/2d"}
# a reference whose segmentor wraps a model that holds the defaults (the runner's --defaults FILE:CLASS)
DEFAULTS = {"radseg": "../../radseg/radseg.py:RADSegEncoder"}
KEYS = {"logit_scale": "logit_scale", "prob_threshold": "prob_thd", "area_threshold": "area_thd",
        "slide_crop": "slide_crop", "slide_stride": "slide_stride", "pamr_steps": "pamr_steps"}
# a reference that names a setting otherwise, or has none: RADSeg's threshold is prediction_thresh, and its logit
# scale is no setting (compute_cos_sim's softmax(100 sim), which radseg_parity.py's probabilities check)
METHOD_KEYS = {"radseg": {**{k: v for k, v in KEYS.items() if k != "logit_scale"},
                          "prob_threshold": "prediction_thresh"},
               # TextRegion: its region_logit_scale, its SAM 2 grid in sam2_cfg, its views' crop_size; no slide
               # windows (its Cityscapes views are the halves model_semantic.py takes where "city_scape" is in the
               # config's name: checked below)
               "textregion": {**{k: v for k, v in KEYS.items() if k not in ("slide_crop", "slide_stride")},
                              "logit_scale": "region_logit_scale", "points_per_side": "sam2_cfg.points_per_side",
                              "region_crop": "crop_size"}}
# what the references' own evaluation scripts set over the configs: CASS's eval_all.sh runs eval.py --pamr off,
# which sets cfg.model['pamr_steps'] = 0 (its __init__ default is 10)
EVAL_OVERRIDES = {"cass": {"pamr_steps": 0}}
# mmseg 1.x's own dataset classes' reduce_zero_label, where a config leaves it to the class (TextRegion's ADE20K:
# LoadAnnotations() on ADE20KDataset, whose __init__ fixes it True: mmseg/datasets/ade.py)
MMSEG_REDUCE = {"ADE20KDataset": True}
CUSTOM = {"voc20": "PascalVOC20Dataset", "coco-object": "COCOObjectDataset", "context60": "PascalContext60Dataset",
          "context59": "PascalContext59Dataset"}


NOTES: set[str] = set()


def find_clone(ref: Path, name: str) -> Path | None:
    for p in sorted(ref.iterdir()) if ref.is_dir() else []:
        if p.is_dir() and (p.name.lower() == name.lower() or p.name.lower().endswith("+" + name.lower())):
            return p
    return None


def compare_presets(method: str, ref: dict, out: list) -> int:
    n = 0
    p = BENCHMARK_PRESETS[method]
    if set(ref["configs"]) != set(p.names):
        out.append(f"{method}: presets for {list(p.names)}, the clone's configs for {list(ref['configs'])}")
    for bench, c in ref["configs"].items():
        theirs = {**ref["segmentor_defaults"], **c["model"], **EVAL_OVERRIDES.get(method, {})}
        mine = p.settings(bench)
        n += 1
        if c.get("file", f"configs/{CFG_FILES[bench]}") != p.config_file(bench).removeprefix(
                SUBFOLDER.get(method, "") + "/"):
            out.append(f"{method} {bench}: preset from {p.config_file(bench)}, the clone read {c.get('file')}")
        for key, value in p.extra.get(bench, {}).items():  # what vpltool records but does not run, where named
            if key in theirs:
                n += 1
                if value != theirs[key]:
                    out.append(f"{method} {bench} {key} (recorded): vpltool {value}, the clone {theirs[key]}")
        for key, their_key in METHOD_KEYS.get(method, KEYS).items():
            value = theirs.get(their_key, 0 if key == "pamr_steps" else None)
            value = 0.0 if value is None and key == "area_threshold" else value
            n += 1
            if key in mine and float(mine[key]) != float(value):
                out.append(f"{method} {bench} {key}: vpltool {mine[key]}, {their_key} {value}")
        n += 1
        if mine["short_side"] != min(c["resize"]):
            out.append(f"{method} {bench} short_side: vpltool {mine['short_side']}, Resize {c['resize']}")
        if "long_side" in mine:  # a preset that sets the resize's long side (TextRegion's); the others' is 2048
            n += 1
            if mine["long_side"] != max(c["resize"]):
                out.append(f"{method} {bench} long_side: vpltool {mine['long_side']}, Resize {c['resize']}")
        if method == "textregion":
            n += 1
            if bool(mine.get("region_halves")) != (bench == "cityscapes"):  # its cfg_city_scapes.py's name
                out.append(f"{method} {bench} region_halves: vpltool {mine.get('region_halves')}")
    return n


def compare_class_files(method: str, ref: dict, out: list) -> int:
    import hashlib

    p = BENCHMARK_PRESETS[method]
    if p.class_set is None:
        return 0
    n = 0
    for bench, c in ref["class_files"].items():
        path = class_file_path(f"{p.class_set}:{bench}")
        n += 2
        if hashlib.sha256(path.read_bytes()).hexdigest() != c["sha256"]:
            out.append(f"{method} {bench}: bundled {path.name} differs from {c['file']}")
        lines = read_class_file(path)
        words = [q for line in lines for q in line]
        owner = [i for i, line in enumerate(lines) for _ in line]
        # the clones keep a query's surrounding spaces ('wood ' ends Context60's file); CLIP's tokenizer drops
        # whitespace ('a photo of a wood .' and '... wood.' are the same tokens), so they are compared stripped
        if words != [q.strip() for q in c["queries"]] or owner != c["classes"]:
            out.append(f"{method} {bench}: vpltool reads {path.name} into other queries than get_cls_idx")
        spaced = [q for q in c["queries"] if q != q.strip()]
        if spaced:
            NOTES.add(f"{c['file']}: get_cls_idx keeps spaces around {spaced} (the tokenizer drops them)")
    return n


def compare_templates(method: str, ref: dict, clone: Path, out: list) -> int:
    """The prompt set each preset names against the clone's ``template_path`` file, byte for byte (0 compared for a
    reference whose configs name none and whose presets name none)."""
    from vpltool.models.backbones.prompts import CLASS_PROMPT_SETS, PROMPT_ASSETS

    spec = BENCHMARK_PRESETS[method].defaults.get("templates")
    n = 0
    for bench, c in ref["configs"].items():
        path = c["model"].get("template_path")
        if spec is None and path is None:
            continue
        n += 1
        if spec not in CLASS_PROMPT_SETS or path is None:
            out.append(f"{method} {bench} templates: vpltool {spec!r}, template_path {path!r}")
        elif (PROMPT_ASSETS / CLASS_PROMPT_SETS[spec]).read_bytes() != (clone / path).read_bytes():
            out.append(f"{method} {bench} templates: bundled {CLASS_PROMPT_SETS[spec]} differs from {path}")
    return n


def compare_datasets(method: str, ref: dict, out: list) -> int:
    n = 0
    for bench, c in ref["configs"].items():
        b = BENCHMARKS[bench]
        prefix = c["data_prefix"] or {}
        custom = ref["datasets"].get(CUSTOM.get(bench, ""), {})
        init = custom.get("init", {})
        reduce = c["load_annotations"].get("reduce_zero_label", c["dataset_reduce_zero_label"])
        if reduce is None:
            reduce = init.get("reduce_zero_label", MMSEG_REDUCE.get(c.get("dataset_type"), False))
        checks = {"images": (b.images, prefix.get("img_path")), "masks": (b.masks, prefix.get("seg_map_path")),
                  "split_file": (b.split_file, c["ann_file"]), "reduce_zero_label": (b.reduce_zero_label, reduce)}
        if init:
            checks["image_suffix"] = (b.image_suffix, init.get("img_suffix"))
            checks["mask_suffix"] = (b.mask_suffix, init.get("seg_map_suffix"))
        if custom.get("classes"):
            checks["classes"] = (list(b.classes), custom["classes"])
        for key, (mine, theirs) in checks.items():
            n += 1
            if mine != theirs:
                out.append(f"{method} {bench} {key}: vpltool {mine!r}, the clone {theirs!r}")
    return n


def runner_options(method: str) -> list[str]:
    """The runner's ``--configs`` (a method whose presets name their config files: RADSeg's mid_res_configs, paths
    within its subfolder) and ``--defaults``."""
    p, out = BENCHMARK_PRESETS[method], []
    if p.config_files:
        sub = SUBFOLDER.get(method, "") + "/"
        out += ["--configs", json.dumps({b: f.removeprefix(sub) for b, f in p.config_files.items()})]
    return out + (["--defaults", DEFAULTS[method]] if method in DEFAULTS else [])


def compare_coco(clone: Path, seg: str, runner: Path, script: str = "cvt_coco_object") -> dict:
    """A COCO conversion: the clone's ``datasets/<script>.py`` against :func:`convert_coco_stuff` on the COCO
    miniature's stuffthingmaps and on one map holding every value 0..255."""
    suffix = "_instanceTrainIds.png" if script == "cvt_coco_object" else "_labelTrainIds.png"
    import tempfile

    import numpy as np
    from PIL import Image

    from vpltool.data.benchmarks import convert_coco_stuff
    from vpltool.data.miniature import make_miniature

    with tempfile.TemporaryDirectory() as tmp:
        raw = make_miniature("coco-object", Path(tmp) / "mini") / "annotations" / "val2017"
        Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).save(raw / "every_value.png")
        convert_coco_stuff(raw, Path(tmp) / "vpl")
        proc = subprocess.run([sys.executable, str(runner), "--clone", str(clone), "--segmentor", seg, "--coco-raw",
                               str(raw), "--coco-out", str(Path(tmp) / "ref"), "--coco-script", script],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            return {"error": proc.stderr.strip().splitlines()[-1:]}
        ids = json.loads(proc.stdout)["converted"]
        differ = [i for i in ids if not np.array_equal(
            np.asarray(Image.open(Path(tmp) / "vpl" / f"{i}{suffix}")),
            np.asarray(Image.open(Path(tmp) / "ref" / "val2017" / f"{i}{suffix}")))]
        return {"maps": len(ids), "differ": differ}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ref", type=Path, required=True, help="folder of the clones")
    a = ap.parse_args()
    runner = Path(__file__).with_name("benchmarks_ref_runner.py")
    result: dict = {"refs": {}, "mismatches": [], "compared": 0, "missing": []}
    for method, (name, seg) in REFS.items():
        clone = find_clone(a.ref, name)
        if clone is None:
            result["missing"].append(name)
            continue
        commit = subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True)
        if commit.returncode != 0 and (clone / ".commit").is_file():  # an exported tree records its commit there
            commit.stdout = (clone / ".commit").read_text()
        shown = "/".join(filter(None, (clone.name, SUBFOLDER.get(method))))
        clone = clone / SUBFOLDER.get(method, "")
        proc = subprocess.run([sys.executable, str(runner), "--clone", str(clone), "--segmentor", seg,
                               *runner_options(method)], capture_output=True, text=True)
        if proc.returncode != 0:
            result["refs"][method] = {"error": proc.stderr.strip().splitlines()[-1:]}
            continue
        ref = json.loads(proc.stdout)
        before = len(result["mismatches"])
        n = (compare_presets(method, ref, result["mismatches"]) + compare_class_files(method, ref,
             result["mismatches"]) + compare_templates(method, ref, clone, result["mismatches"])
             + compare_datasets(method, ref, result["mismatches"]))
        result["compared"] += n
        result["refs"][method] = {"clone": shown, "commit": commit.stdout.strip() or None, "compared": n,
                                  "mismatches": len(result["mismatches"]) - before}
        for script, key in (("cvt_coco_object", "coco_object_conversion"), ("coco_stuff164k", "coco_stuff_conversion")):
            if (clone / "datasets" / f"{script}.py").is_file() and key not in result:
                conv = compare_coco(clone, seg, runner, script)
                result[key] = {"clone": clone.name, **conv}
                if conv.get("differ") or "error" in conv:
                    result["mismatches"].append(f"{key} differs from {clone.name}'s: {conv}")
    result["notes"] = sorted(NOTES)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
