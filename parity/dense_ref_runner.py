"""Run a training-free dense CLIP method's OWN segmentor (SCLIP, ClearCLIP, NACLIP, and MaskCLIP through ClearCLIP's
code) from a clone, on the CPU in fp32, without mmseg / mmcv / mmengine: the reference half of `dense_parity.py`.

    python dense_ref_runner.py --clone DIR --module naclip --cls NACLIP --config configs/cfg_voc21.py \\
        --weights W.pt --photos JPG_DIR --out OUT_DIR [--overrides '{"pamr_steps": 0}'] [--threads 1]

It imports nothing from vpltool (a clone's ``clip`` / ``open_clip`` packages must not meet vpltool's): run it as its
own process, with a Python that has torch, ftfy, regex, numpy and OpenCV. The clone's code is never copied or
edited; it is imported with the clone first on ``sys.path`` and the clone as the working directory, and only what a
CPU run without the OpenMMLab packages needs is put around it:

1. stub modules for the four OpenMMLab imports the segmentors make: ``mmseg.models.segmentors.BaseSegmentor`` (an
   ``nn.Module`` that keeps its ``data_preprocessor``), ``mmseg.models.data_preprocessor.SegDataPreProcessor``
   (keeps its keyword arguments: the mean, std and channel swap are read from it), ``mmseg.registry.MODELS``
   (``register_module()`` returns the class) and ``mmengine.structures.PixelData`` (keeps its ``data``); ClearCLIP's
   ``BLIP.models.blip_retrieval`` and ``gem`` (needed only for its BLIP and GEM variants) are stubbed only if their
   import fails (BLIP needs ``transformers``);
2. the model's weights come from ``--weights`` (a state dict in OpenAI's layout): SCLIP's and NACLIP's ``clip.load``
   take the path as they are (on the CPU they build the model and call ``.float()``); ClearCLIP's
   ``create_model('ViT-B/16', pretrained='openai', precision='fp16')`` is called with the local file for
   ``openai`` (its own ``load_openai_model`` reads it) and ``precision='fp32'``, and ``Tensor.half`` is the
   identity while its ``predict`` runs (it casts the input to fp16 for its fp16 model): the parity is in fp32;
3. the segmentor's keyword arguments are the ``model`` dict of ``--config`` (the clone's ``configs/cfg_*.py``, its
   ``_base_`` first, executed as the plain Python files they are), with ``clip_path`` / ``name_path`` made
   absolute, ``device='cpu'``, and ``--overrides`` last (e.g. ClearCLIP's ``model_type``, NACLIP's
   ``pamr_steps``);
4. the input photos go through mmseg's test pipeline of that config, restated here because mmcv is not installed:
   ``LoadImageFromFile`` (``cv2.imdecode``, BGR uint8; ``ori_shape`` = its size), ``Resize(scale, keep_ratio=True)``
   (``mmcv.imrescale``: factor ``min(max(scale) / long side, min(scale) / short side)``, new size
   ``int(side * factor + 0.5)``, ``cv2.resize`` with ``INTER_LINEAR``), ``PackSegInputs`` (CHW) and the segmentor's
   ``SegDataPreProcessor`` (channel swap to RGB, float, ``(x - mean) / std`` with its own mean and std; no padding at
   test time).

Outputs in ``--out`` (torch files of float32 tensors and a JSON):

* ``meta.json``: the keyword arguments used, the query words and their class index, the preprocessor's arguments,
  the resize scale, each photo's ``ori_shape`` and resized shape;
* ``text.pt``: ``query_features`` ``[Q, D]`` (the segmentor's own text rows: 80 ImageNet templates, mean, norm);
* ``patch.pt``: for each ``--patch`` input (the first photo's normalised tensor cropped to 224x224 and whole): the
  input ``[1, 3, H, W]`` and the patch-level cosine logits ``[1, Q, h, w]`` of one ``forward_feature`` (the
  tensor its first bilinear ``interpolate`` receives), and that call's output ``[1, Q, H, W]``;
* ``photo_NNN.pt``: the normalised input ``[1, 3, H, W]``, ``logits`` ``[1, Q, H0, W0]`` (what ``predict`` hands
  ``postprocess_result``: the slide / whole-image cosine logits at the photo's original size, after PAMR where on),
  ``probs`` ``[C, H0, W0]`` and ``pred`` ``[1, H0, W0]`` (what ``postprocess_result`` sets on the data sample).
  CASS's ``patch.pt`` entries and photos also hold ``matchings``: each Hungarian matching of its heads in call order
  (the cost matrix it solved and the columns it chose; :func:`record_matchings`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
import time
from pathlib import Path

from refstubs import in_clone, stub_module, stub_pkg_resources  # noqa: F401 (in_clone: trident_ref_runner.py uses it from here)


# --------------------------------------------------------------------------------------------- OpenMMLab stubs
def install_openmmlab_stubs() -> None:
    """Stub modules for the OpenMMLab names the segmentors import (point 1 of the module docstring)."""
    import torch.nn as nn

    class BaseSegmentor(nn.Module):
        def __init__(self, data_preprocessor=None, init_cfg=None):
            super().__init__()
            self.data_preprocessor = data_preprocessor

    class SegDataPreProcessor:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class Registry:
        def register_module(self, *args, **kwargs):
            return lambda cls: cls

    class PixelData:
        def __init__(self, **kwargs):
            self.__dict__.update(kwargs)

    for name in ("mmseg", "mmseg.models", "mmengine"):
        stub_module(name)
    stub_module("mmseg.models.segmentors", BaseSegmentor=BaseSegmentor)
    stub_module("mmseg.models.data_preprocessor", SegDataPreProcessor=SegDataPreProcessor)
    stub_module("mmseg.registry", MODELS=Registry())
    stub_module("mmengine.structures", PixelData=PixelData)


STUBBED: list[str] = []


def install_pkg_resources_stub() -> None:
    """SC-CLIP's ``clip/clip.py`` reads ``from pkg_resources import packaging`` (for a torch version check);
    setuptools >= 81 no longer ships ``pkg_resources``: where it is missing, a module holding the ``packaging``
    package stands in."""
    if stub_pkg_resources():
        STUBBED.append("pkg_resources")


def stub_if_missing(name: str, **attrs) -> bool:
    """Import ``name`` from the clone; if that fails, put a stub module with ``attrs`` there. True if stubbed."""
    try:
        importlib.import_module(name)
        return False
    except Exception:  # noqa: BLE001 - any failure of an unused optional import (ImportError, a missing file...)
        parts = name.split(".")
        for sub in (".".join(parts[:i]) for i in range(1, len(parts))):
            if sub not in sys.modules:
                stub_module(sub)
        stub_module(name, **attrs)
        STUBBED.append(name)
        return True


class Sample:
    """mmseg's ``SegDataSample`` as the segmentors use it: ``metainfo`` and ``set_data``."""

    def __init__(self, metainfo: dict):
        self.metainfo = metainfo
        self.data: dict = {}

    def set_data(self, data: dict) -> None:
        self.data.update(data)


# --------------------------------------------------------------------------------------------- config, input
def read_config(clone: Path, config: str) -> dict:
    """The ``model`` dict and the test pipeline's ``Resize`` scale of an mmengine config file (``_base_`` first):
    the files are plain Python assignments, executed in order."""
    path = (clone / config).resolve()
    chain = []
    while True:
        chain.append(path)
        ns: dict = {}
        exec(compile(path.read_text(), str(path), "exec"), ns)  # noqa: S102 - the clone's own config file
        base = ns.get("_base_")
        if not base:
            break
        path = (path.parent / base).resolve()
    model, scale = {}, None
    for p in reversed(chain):
        ns = {}
        exec(compile(p.read_text(), str(p), "exec"), ns)  # noqa: S102
        model.update(ns.get("model", {}))
        for step in ns.get("test_pipeline", []):
            if step.get("type") == "Resize":
                scale = tuple(step["scale"])
    return {"model": model, "scale": scale}


def mmseg_input(path: Path, scale: tuple[int, int], pre: dict):
    """One photo through mmseg's test pipeline (point 4 of the module docstring): ``[1, 3, H, W]`` float32 and the
    original ``(H0, W0)``."""
    import cv2
    import numpy as np
    import torch

    img = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)  # BGR
    h0, w0 = img.shape[:2]
    factor = min(max(scale) / max(h0, w0), min(scale) / min(h0, w0))
    w, h = int(w0 * float(factor) + 0.5), int(h0 * float(factor) + 0.5)
    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
    if pre.get("rgb_to_bgr") or pre.get("bgr_to_rgb"):
        x = x[[2, 1, 0], ...]
    x = x.float()
    mean = torch.tensor(pre["mean"]).view(-1, 1, 1)
    std = torch.tensor(pre["std"]).view(-1, 1, 1)
    return ((x - mean) / std)[None], (h0, w0)


# --------------------------------------------------------------------------------------------- patches
@contextlib.contextmanager
def clearclip_weights(weights: Path):
    """ClearCLIP: ``create_model(..., pretrained='openai', precision=...)`` reads ``weights`` in fp32 (point 2)."""
    import open_clip.factory as factory

    load = factory.load_openai_model
    create = factory.create_model

    def local_openai(name, precision=None, device=None, cache_dir=None):
        return load(str(weights), precision="fp32", device=device, cache_dir=cache_dir)

    def create_fp32(name, pretrained=None, precision="fp32", **kwargs):
        return create(name, pretrained=pretrained, precision="fp32", **kwargs)

    factory.load_openai_model = local_openai
    try:
        yield create_fp32
    finally:
        factory.load_openai_model = load


@contextlib.contextmanager
def proxy_hub(args):
    """ProxyCLIP (``vfm_model='dino'``) calls ``torch.hub.load('facebookresearch/dino:main', 'dino_vitb8')``: here
    the model is built by that entry of ``--proxy-clone`` (a clone of facebookresearch/dino, ``source='local'``,
    ``pretrained=False``) and ``--proxy-weights`` (a state dict in DINO's layout) is loaded into it strictly."""
    import torch

    if not getattr(args, "proxy_clone", None):
        yield
        return
    load = torch.hub.load

    def local(repo, name, *a, **k):
        model = load(str(Path(args.proxy_clone).resolve()), name, source="local", pretrained=False)
        model.load_state_dict(torch.load(args.proxy_weights, map_location="cpu"), strict=True)
        return model

    torch.hub.load = local
    try:
        yield
    finally:
        torch.hub.load = load


@contextlib.contextmanager
def cass_on_cpu(args):
    """CASS: its ``DinoSelfAttention`` (no ``pretrained_weights``) fetches DINO's checkpoint with
    ``torch.hub.load_state_dict_from_url``: here that returns ``--proxy-weights`` (DINO's layout; loaded strictly by
    its own code); its text encoding sends the tokens ``.to('cuda')``: here to the CPU."""
    import torch

    fetch, to = torch.hub.load_state_dict_from_url, torch.Tensor.to

    def local(url, *a, **k):
        return torch.load(args.proxy_weights, map_location="cpu")

    def cpu_to(self, *a, **k):
        a = tuple("cpu" if isinstance(x, str) and x.startswith("cuda") else x for x in a)
        return to(self, *a, **k)

    torch.hub.load_state_dict_from_url, torch.Tensor.to = local, cpu_to
    try:
        yield
    finally:
        torch.hub.load_state_dict_from_url, torch.Tensor.to = fetch, to


def install_sklearn_stub() -> None:
    """CASS imports ``sklearn.metrics.pairwise.cosine_distances`` (its query clustering); where scikit-learn is not
    installed, its arithmetic restated: rows L2-normalised (``normalize``), ``1 - X Xᵀ`` clipped to ``[0, 2]``,
    zero diagonal."""
    import numpy as np

    def cosine_distances(x, y=None):
        x = np.asarray(x)
        xn = x / np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
        s = xn @ xn.T
        s *= -1
        s += 1
        np.clip(s, 0, 2, out=s)
        s[np.diag_indices_from(s)] = 0.0
        return s

    import importlib.machinery

    import torchvision  # noqa: F401 - imported first: torch._dynamo (through torchvision.ops) looks up sklearn's spec

    if stub_if_missing("sklearn.metrics.pairwise", cosine_distances=cosine_distances):
        STUBBED[-1] = "sklearn"
        for name in ("sklearn", "sklearn.metrics", "sklearn.metrics.pairwise"):
            sys.modules[name].__spec__ = importlib.machinery.ModuleSpec(name, None)


@contextlib.contextmanager
def half_is_identity():
    import torch

    half = torch.Tensor.half
    torch.Tensor.half = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.Tensor.half = half


@contextlib.contextmanager
def logits_seen(seg):
    """Within the block ``seg.postprocess_result`` keeps a float32 copy of the logits ``predict`` hands it
    (``seen["logits"]`` of the dict yielded), then runs as before; the method's own again afterwards."""
    seen: dict = {}
    post = seg.postprocess_result

    def capture(seg_logits, data_samples, *rest, **kwargs):  # Trident's takes a third, debug_img_path
        seen["logits"] = seg_logits.detach().float().clone()
        return post(seg_logits, data_samples, *rest, **kwargs)

    seg.postprocess_result = capture
    try:
        yield seen
    finally:
        del seg.postprocess_result


@contextlib.contextmanager
def capture_bilinear(record: list):
    """Record the input of every bilinear ``F.interpolate`` call (the patch-level logits of ``forward_feature``)."""
    import torch.nn.functional as F

    interpolate = F.interpolate

    def patched(input, *args, **kwargs):
        if kwargs.get("mode") == "bilinear":
            record.append(input.detach().clone())
        return interpolate(input, *args, **kwargs)

    F.interpolate = patched
    try:
        yield
    finally:
        F.interpolate = interpolate


# --------------------------------------------------------------------------------------------- main
def build(args, cfg: dict):
    """The clone's segmentor with the config's arguments (point 3); returns (segmentor, kwargs, notes)."""
    import torch

    kwargs = {k: v for k, v in cfg["model"].items() if k != "type"}
    kwargs.update(json.loads(args.overrides))
    if "clip_path" in kwargs:
        kwargs["clip_path"] = str(args.weights.resolve())
    kwargs["name_path"] = str((args.clone / kwargs["name_path"]).resolve())
    kwargs["device"] = "cpu"
    if args.module == "cass_segmentor":  # its eval.py: cfg.model['dataset'] = the config's path; --pamr off
        kwargs["dataset"] = args.config
        kwargs.setdefault("pamr_steps", 0)  # eval_all.sh's --pamr off (the __init__ default is 10)
    why = {"sklearn": "stubbed by a restatement of cosine_distances (CASS's query clustering; not installed)",
           "pkg_resources": "stubbed by the packaging package (an import-time version check)",
           "openpyxl": "stubbed (ProxyCLIP's myutils.py spreadsheet logging, not run)",
           "requests": "stubbed (CASS's dino/dino_attention.py example download, not run)"}
    notes = [f"{name} {why.get(name, 'stubbed (its import failed; used only by ClearCLIP BLIP / GEM variants)')}"
             for name in STUBBED]
    mod = importlib.import_module(args.module)
    open_clip_based = args.module in ("clearclip_segmentor", "proxyclip_segmentor")
    ctx = clearclip_weights(args.weights) if open_clip_based else contextlib.nullcontext()
    with ctx as create_fp32:
        if create_fp32 is not None:
            mod.create_model = create_fp32
        # ProxyCLIP casts its proxy model to fp16 as it builds it: the parity is in fp32
        half = half_is_identity() if args.module == "proxyclip_segmentor" else contextlib.nullcontext()
        cass = cass_on_cpu(args) if args.module == "cass_segmentor" else contextlib.nullcontext()
        with torch.no_grad(), proxy_hub(args), half, cass:
            seg = getattr(mod, args.cls)(**kwargs)
    return seg.eval(), kwargs, notes


@contextlib.contextmanager
def text_memo(seg_module: str):
    """The text tower's rows memoised by their tokens for the process (several variants of one clone build the
    same query rows from the same weights: encoded once). A copy is returned each time (the segmentors normalise
    the rows in place)."""
    import torch

    owner = next(sys.modules[m].CLIP for m in ("clip.model", "open_clip.model")
                 if m in sys.modules and hasattr(sys.modules[m], "CLIP"))
    encode = owner.encode_text
    memo: dict = {}

    def memoised(self, text, *args, **kwargs):
        key = (text.cpu().numpy().tobytes(), tuple(text.shape), args, tuple(sorted(kwargs.items())))
        if key not in memo:
            memo[key] = encode(self, text, *args, **kwargs).detach().clone()
        return memo[key].clone()

    owner.encode_text = memoised
    try:
        with torch.no_grad():
            yield
    finally:
        owner.encode_text = encode


def run_variant(args, cfg: dict, variant: dict, photos: list[Path], out: Path) -> None:
    """One segmentor (the config's arguments, then the variant's overrides) on the patch inputs and the photos."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    args.overrides = json.dumps(variant.get("overrides", {}))
    seg, kwargs, notes = build(args, cfg)
    pre = seg.data_preprocessor.kwargs
    query_idx = [int(i) for i in seg.query_idx.tolist()]
    words = _query_words(seg, kwargs["name_path"], args.module)
    templates = _templates(args.module)
    torch.save({"query_features": seg.query_features.float().clone()}, out / "text.pt")
    inputs = [mmseg_input(p, cfg["scale"], pre) for p in photos[: variant.get("images", len(photos))]]
    first = mmseg_input(photos[0], cfg["scale"], pre)[0]
    saved = {}
    matchings = record_matchings(args.module)
    for name, x in patch_inputs(first, variant.get("patches")).items():
        record: list = []
        with torch.no_grad(), capture_bilinear(record), half_is_identity():
            seed_cass(args)
            # CASS's forward_feature(img, whole_img): None is its whole-image path (the image's own embedding)
            result = seg.forward_feature(x, None) if args.module == "cass_segmentor" else seg.forward_feature(x)
        # the first bilinear resize of a [1, Q, h, w] tensor (ProxyCLIP resizes CLIP's values bilinearly first)
        logits = next(r for r in record if r.dim() == 4 and r.shape[1] == len(query_idx))
        saved[name] = {"input": x, "patch_logits": logits, "output": result.float()}
        if matchings is not None:
            saved[name]["matchings"] = matchings[:]
            matchings.clear()
    torch.save(saved, out / "patch.pt")
    shapes = []
    for i, ((x, ori), path) in enumerate(zip(inputs, photos)):
        sample = Sample({"ori_shape": ori, "img_shape": tuple(x.shape[-2:]), "pad_shape": tuple(x.shape[-2:]),
                         "padding_size": [0, 0, 0, 0], "img_path": str(path)})
        with torch.no_grad(), half_is_identity(), logits_seen(seg) as seen:
            seed_cass(args)
            seg.predict(x, [sample])
        result = {"input": x, "logits": seen["logits"], "probs": sample.data["seg_logits"].data.float(),
                  "pred": sample.data["pred_sem_seg"].data}
        if matchings is not None:
            result["matchings"] = matchings[:]
            matchings.clear()
        torch.save(result, out / f"photo_{i:03d}.pt")
        shapes.append({"file": path.name, "ori_shape": list(ori), "input_shape": list(x.shape[-2:])})
    meta = {"variant": variant, "module": args.module, "cls": args.cls, "config": args.config, "kwargs": kwargs,
            "effective": _effective(seg),
            "resize_scale": list(cfg["scale"]), "preprocessor": pre, "query_words": words, "query_idx": query_idx,
            "templates": templates, "photos": shapes, "notes": notes,
            "seconds": round(time.perf_counter() - start, 1), "torch": torch.__version__, "threads": args.threads}
    (out / "meta.json").write_text(json.dumps(meta, indent=1, default=str))


def record_matchings(module: str) -> list | None:
    """CASS: every call of its ``linear_sum_assignment`` (the Hungarian matching of DINO's and CLIP's heads, one per
    forward of the spectral block) recorded as tensors ``{"cost": [heads, heads] float32, "cols": [heads] int64}``
    in the list returned (the caller empties it after each input); the call itself is unchanged. None for other
    modules."""
    if module != "cass_segmentor":
        return None
    import numpy as np
    import torch

    model = sys.modules["clip.model"]
    solve = model.linear_sum_assignment
    calls: list = []

    def recorded(cost):
        rows, cols = solve(cost)
        calls.append({"cost": torch.from_numpy(np.array(cost, copy=True)),
                      "cols": torch.from_numpy(np.array(cols, dtype=np.int64))})
        return rows, cols

    model.linear_sum_assignment = recorded
    return calls


def seed_cass(args) -> None:
    """CASS's randomised SVD draws its basis from torch's global generator: seeded before each forward, as vpltool
    seeds each window (its ``SpectralMatching.seed``, 0)."""
    if args.module == "cass_segmentor":
        import torch

        torch.manual_seed(0)


def patch_inputs(first, names: list[str] | None = None) -> dict:
    """The point-a inputs of the first photo's tensor ``[1, 3, H, W]``: ``crop224`` (its top-left 224x224),
    ``whole``, and ``square`` (its top-left ``min(H, W)`` square: SC-CLIP's whole-image forward fails on
    non-square grids). ``names`` None: ``crop224`` and ``whole``."""
    side = min(first.shape[-2:])
    every = {"crop224": lambda: first[..., :224, :224].contiguous(), "whole": lambda: first,
             "square": lambda: first[..., :side, :side].contiguous()}
    return {name: every[name]() for name in (names or ["crop224", "whole"])}


def run(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    install_openmmlab_stubs()
    install_pkg_resources_stub()
    clone = args.clone.resolve()
    photos = sorted(p.resolve() for p in args.photos.glob("*.jpg"))[: args.images]
    variants = json.loads(args.variants) if args.variants else [{"name": "default",
                                                                  "overrides": json.loads(args.overrides)}]
    with in_clone(clone):
        cfg = read_config(clone, args.config)
        if args.module == "clearclip_segmentor":
            for name in ("BLIP.models.blip_retrieval", "gem"):
                stub_if_missing(name, blip_retrieval=None)
        if args.module == "proxyclip_segmentor":
            stub_if_missing("openpyxl")  # myutils.py's spreadsheet logging, not run
        if args.module == "cass_segmentor":
            install_sklearn_stub()
            stub_if_missing("requests")  # dino/dino_attention.py imports it for its example image, not run
        importlib.import_module(args.module)
        with text_memo(args.module):
            for variant in variants:
                run_variant(args, cfg, variant, photos, args.out.resolve() / variant["name"])


def _effective(seg) -> dict:
    """The segmentor's settings as its instance holds them (its class defaults included)."""
    out = {k: getattr(seg, k) for k in ("logit_scale", "prob_thd", "area_thd", "slide_crop", "slide_stride",
                                        "ignore_residual", "model_type") if hasattr(seg, k)}
    pamr = getattr(seg, "pamr", None)
    out["pamr_steps"] = pamr.num_iter if pamr is not None else 0
    out["pamr_dilations"] = list(pamr.aff_x.dilations) if pamr is not None else None
    visual = getattr(getattr(seg, "net", None), "visual", None)
    for k in ("arch", "attn_strategy", "gaussian_std"):
        if hasattr(visual, k):
            out[k] = getattr(visual, k)
    return out


def _templates(module: str) -> list[str]:
    """The segmentor's prompt templates (its ``openai_imagenet_template`` lambdas) written with ``{}``."""
    mod = sys.modules[module]
    return [t("{}") for t in mod.openai_imagenet_template]


def _query_words(seg, name_path: str, module: str) -> list[str]:
    """The query words as the segmentor's module reads them (its own ``get_cls_idx``)."""
    mod = sys.modules[module]
    return list(mod.get_cls_idx(name_path)[0])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clone", type=Path, required=True)
    ap.add_argument("--module", required=True, help="the segmentor's module: clip_segmentor | clearclip_segmentor | "
                                                    "naclip")
    ap.add_argument("--cls", required=True, help="CLIPForSegmentation | ClearCLIPSegmentation | NACLIP")
    ap.add_argument("--config", default="configs/cfg_voc21.py")
    ap.add_argument("--weights", type=Path, required=True, help="a state dict in OpenAI's layout (.pt)")
    ap.add_argument("--photos", type=Path, required=True, help="a folder of .jpg photos")
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--overrides", default="{}", help="JSON: segmentor keyword arguments over the config's")
    ap.add_argument("--variants", default="", help='JSON list of {"name", "overrides", "images"}: one output folder '
                                                   "each, the text rows encoded once")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--proxy-clone", type=Path, help="ProxyCLIP: a clone of facebookresearch/dino (its hubconf.py)")
    ap.add_argument("--proxy-weights", type=Path, help="ProxyCLIP: the DINO state dict (.pth) its hub model loads")
    run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
