"""Read one reference clone's benchmark definitions from its OWN code: the reference half of `benchmarks_parity.py`.

    python benchmarks_ref_runner.py --clone DIR --segmentor FILE.py > out.json
    python benchmarks_ref_runner.py --clone DIR --segmentor FILE.py --coco-raw RAW --coco-out OUT

It imports nothing from vpltool. From the clone, without the OpenMMLab packages:

1. ``custom_datasets.py`` (when the clone has one) imported with stub modules for ``mmseg.datasets.BaseSegDataset``
   (a class whose ``__init__`` keeps its keyword arguments; ``fileio.exists`` and ``osp.isfile`` of its asserts
   answered True), ``mmseg.registry.DATASETS`` / ``TRANSFORMS``
   (``register_module()`` returns the class), ``mmengine.fileio`` and ``mmcv`` (the ``LoadAnnotations`` base
   ClearCLIP subclasses); each dataset class's ``METAINFO['classes']`` and the keyword arguments its ``__init__``
   hands ``BaseSegDataset`` (suffixes, ``reduce_zero_label``);
2. each ``configs/cfg_<benchmark>.py`` (TextRegion's ``configs/cfg_ds/``) executed as the plain Python it is (its
   ``_base_`` first, the ``model`` dicts merged as mmengine merges them, nested ones key by key and flattened to
   ``outer.inner``): the ``model`` dict, the ``Resize`` scale, the ``LoadAnnotations`` arguments,
   the dataset's ``data_prefix``, ``ann_file``, ``reduce_zero_label`` and type;
3. the segmentor's ``__init__`` defaults, from its source by ``ast`` (no import: it would load CLIP);
4. each class file read by the clone's own ``get_cls_idx`` (taken out of the segmentor's source by ``ast`` and run
   alone), and the file's bytes' sha256;
5. with ``--coco-raw DIR --coco-out DIR [--coco-script coco_stuff164k]``, instead: the clone's
   ``datasets/cvt_coco_object.py`` (or the ``coco_stuff164k.py`` Trident ships) converts each COCO-Stuff map of DIR
   (``mmcv`` / ``mmengine.utils`` stubbed).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import sys
import types
from pathlib import Path
from unittest import mock

BENCH_CFG = {"voc21": "cfg_voc21.py", "context60": "cfg_context60.py", "coco-object": "cfg_coco_object.py",
             "voc20": "cfg_voc20.py", "context59": "cfg_context59.py", "coco-stuff": "cfg_coco_stuff164k.py",
             "cityscapes": "cfg_city_scapes.py", "ade20k": "cfg_ade20k.py"}


def _stub_openmmlab() -> None:
    class Registry:
        def register_module(self, *a, **k):
            return lambda cls: cls

    class BaseSegDataset:
        METAINFO: dict = {}

        def __init__(self, **kwargs):
            self.init_kwargs = kwargs
            self.data_prefix, self.backend_args = {"img_path": "."}, None  # what VOC20's own assert reads
            self.ann_file = kwargs.get("ann_file")

    class LoadAnnotations:
        def __init__(self, *a, **k):
            pass

    mods = {"mmseg": {}, "mmseg.datasets": {"BaseSegDataset": BaseSegDataset},
            "mmseg.registry": {"DATASETS": Registry(), "TRANSFORMS": Registry(), "MODELS": Registry()},
            "mmengine": {}, "mmengine.fileio": {"exists": lambda *a, **k: True},
            "mmcv": {}, "mmcv.transforms": {"LoadAnnotations": LoadAnnotations}}
    for name, attrs in mods.items():
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules[name] = m
    sys.modules["mmengine"].fileio = sys.modules["mmengine.fileio"]


def datasets(clone: Path) -> dict:
    path = clone / "custom_datasets.py"
    if not path.is_file():
        return {}
    _stub_openmmlab()
    sys.path.insert(0, str(clone))
    import custom_datasets as cd  # noqa: E402  (the clone's own module)

    out = {}
    for name in ("PascalVOC20Dataset", "COCOObjectDataset", "PascalContext60Dataset", "PascalContext59Dataset"):
        cls = getattr(cd, name, None)
        if cls is None:
            continue
        takes_ann = "ann_file" in cls.__init__.__code__.co_varnames
        with mock.patch("os.path.isfile", lambda p: True):
            inst = cls(ann_file="val.txt") if takes_ann else cls()
        out[name] = {"classes": list(cls.METAINFO.get("classes", ())), "init": inst.init_kwargs}
    return out


def _exec(path: Path) -> dict:
    scope: dict = {}
    exec(compile(path.read_text(), str(path), "exec"), scope)  # a config is plain Python (mmengine's format)
    return {k: v for k, v in scope.items() if not k.startswith("__")}


def _merged(base: dict, child: dict) -> dict:
    """``child`` over ``base`` as mmengine merges configs: dicts key by key, anything else replaced."""
    out = dict(base)
    for k, v in child.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_chain(path: Path) -> dict:
    """A config file with its ``_base_`` files under it (RADSeg's ``cfg -> datasets/x.py -> base_config.py``);
    a file whose ``_base_`` is ``base_config.py``'s own folder's is the same as the clones' older reading."""
    cfg = _exec(path)
    base = cfg.pop("_base_", None)
    return _merged(read_chain((path.parent / base).resolve()), cfg) if base else cfg


def config_files(clone: Path, given: str | None) -> dict:
    """Benchmark -> its config file: ``given`` (JSON, paths relative to the clone), else ``configs/cfg_*.py``."""
    names = json.loads(given) if given else {b: f"configs/{n}" for b, n in BENCH_CFG.items()}
    return {b: clone / n for b, n in names.items()}


def configs(clone: Path, files: dict) -> dict:
    out = {}
    for bench, path in files.items():
        cfg = read_chain(path)
        model = cfg.get("model", {})
        steps = cfg.get("test_pipeline", [])
        resize = next((s for s in steps if s.get("type") == "Resize"), {})
        annotations = next((s for s in steps if s.get("type") == "LoadAnnotations"), {})
        ds = cfg.get("test_dataloader", {}).get("dataset", {})
        # nested settings as ``outer.inner`` keys (TextRegion's sam2_cfg.points_per_side), scalars only
        flat = {}
        for k, v in model.items():
            flat.update({f"{k}.{kk}": vv for kk, vv in v.items()} if isinstance(v, dict) else {k: v})
        out[bench] = {"model": {k: v for k, v in flat.items() if isinstance(v, (int, float, str, bool, type(None)))},
                      "resize": list(resize.get("scale", ())), "load_annotations": {k: v for k, v in annotations.items()
                                                                                     if k != "type"},
                      "dataset_type": cfg.get("dataset_type"), "data_prefix": ds.get("data_prefix"),
                      "ann_file": ds.get("ann_file"), "dataset_reduce_zero_label": ds.get("reduce_zero_label"),
                      "file": str(path.relative_to(clone))}
    return out


def init_defaults(path: Path, cls: str | None = None) -> dict:
    """The literal defaults of the first ``__init__`` in ``path`` (or class ``cls``'s), read by ``ast``."""
    tree = ast.parse(path.read_text())
    scope = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls) if cls else tree
    init = next(n for n in ast.walk(scope) if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    args = init.args.args[-len(init.args.defaults):] if init.args.defaults else []
    defaults = {}
    for a, d in zip(args, init.args.defaults):
        try:
            defaults[a.arg] = ast.literal_eval(d)
        except ValueError:
            pass
    return defaults


def segmentor(path: Path) -> tuple[dict, object]:
    tree = ast.parse(path.read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "get_cls_idx")
    scope: dict = {}
    exec(compile(ast.Module([fn], []), str(path), "exec"), scope)
    return init_defaults(path), scope["get_cls_idx"]


def class_files(clone: Path, get_cls_idx, files: dict) -> dict:
    out = {}
    for bench, path in files.items():
        cls = clone / "configs" / read_chain(path)["model"]["name_path"].split("/")[-1]
        words, idx = get_cls_idx(str(cls))
        out[bench] = {"file": cls.name, "sha256": hashlib.sha256(cls.read_bytes()).hexdigest(), "queries": words,
                      "classes": [int(i) for i in idx]}
    return out


def convert_coco(clone: Path, script: str, raw: Path, out: Path) -> list[str]:
    """The clone's ``datasets/<script>.py`` ``convert_to_trainID`` (``cvt_coco_object``: COCO-Object's
    ``*_instanceTrainIds.png``; ``coco_stuff164k``, mmseg's converter as Trident ships it: ``*_labelTrainIds.png``)
    on each stuffthingmap of ``raw``, writing into ``out/val2017/`` (``mmcv`` and ``mmengine.utils`` stubbed: only
    ``main`` uses them); the ids converted."""
    import importlib

    sys.modules.setdefault("mmcv", types.ModuleType("mmcv"))
    utils = types.ModuleType("mmengine.utils")
    utils.mkdir_or_exist = utils.track_parallel_progress = utils.track_progress = lambda *a, **k: None
    sys.modules.setdefault("mmengine", types.ModuleType("mmengine"))
    sys.modules["mmengine.utils"] = utils
    sys.path.insert(0, str(clone / "datasets"))
    cvt = importlib.import_module(script)  # the clone's own script

    (out / "val2017").mkdir(parents=True, exist_ok=True)
    done = []
    for path in sorted(raw.glob("*.png")):
        if "TrainIds" in path.name:
            continue
        cvt.convert_to_trainID(str(path), out_mask_dir=str(out), is_train=False)
        done.append(path.stem)
    return done


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--clone", type=Path, required=True)
    p.add_argument("--segmentor", required=True, help="the segmentor's file in the clone (naclip.py, ...)")
    p.add_argument("--configs", help="JSON: benchmark -> its config file in the clone (default configs/cfg_*.py)")
    p.add_argument("--defaults", help="FILE[:CLASS] whose __init__ defaults are the segmentor's (default: "
                   "--segmentor's first __init__)")
    p.add_argument("--coco-raw", type=Path, help="stuffthingmaps to convert with the clone's cvt_coco_object.py")
    p.add_argument("--coco-out", type=Path, help="where its conversions go")
    p.add_argument("--coco-script", default="cvt_coco_object", help="cvt_coco_object or coco_stuff164k")
    a = p.parse_args()
    a.clone = a.clone.resolve()
    if a.coco_raw is not None:
        json.dump({"converted": convert_coco(a.clone, a.coco_script, a.coco_raw.resolve(), a.coco_out.resolve())},
                  sys.stdout)
        return
    os.chdir(a.clone)
    defaults, get_cls_idx = segmentor(a.clone / a.segmentor)
    if a.defaults:  # the model the segmentor wraps holds the defaults (RADSeg's RADSegEncoder)
        file, _, cls = a.defaults.partition(":")
        defaults = init_defaults((a.clone / file).resolve(), cls or None)
    files = config_files(a.clone, a.configs)
    json.dump({"segmentor_defaults": defaults, "configs": configs(a.clone, files), "datasets": datasets(a.clone),
               "class_files": class_files(a.clone, get_cls_idx, files)}, sys.stdout)


if __name__ == "__main__":
    main()
