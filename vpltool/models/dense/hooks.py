"""The written extension points of a ``--dense`` method: :class:`DenseHooks`, every hook the backbone and the
segmentor call, each with its default (the shared path).

A method that reads more than the last block's input subclasses it once in its own module and names itself::

    class Hooks(DenseHooks, method="trident", preset=PRESET):
        def dense_logits(self, bb, pixels, text, sizes, settings, extras): ...

Registration is the class statement: a public name that is no hook (:data:`HOOK_NAMES`; a misspelt
``dense_logit``) is refused there, in one line, so a typo never falls back to the default path unnoticed. Helpers
go in the module, or start with ``_``. A pure-mixing preset (``mixing.py``) has no class: the defaults run it.
Each hook a class defines is checked where it returns (:data:`RETURNS`: the kind, the rank and the count of what it
gives, as each hook's docstring says): a hook that returns a numpy array, None or a tensor of another rank is one
:class:`~vpltool.errors.ContractError` line naming the method, its plugin and the hook, never a raw error further
on (the values of the labels and probabilities a run writes are checked where the masks are written).

When each hook runs, for one image of ``segment`` (``[B, 3, H, W]`` float32 CLIP-normalised ``pixels`` after the
method's short-side resize; ``text`` ``[Q, D]`` unit query rows; each image's size ``(H0, W0)``):

1. :meth:`~DenseHooks.check` once, before any model loads (a missing input folder is one line there), then
   :meth:`~DenseHooks.check_items` with the items the run will segment (`segment`, `cam --dense`, `predict --dense`;
   a per-image file missing or malformed is one line there), and :meth:`~DenseHooks.record`: what the stage record
   adds (a folder's identity by content; :meth:`~DenseHooks.older_record` reads an earlier vpltool's form of it);
2. :meth:`~DenseHooks.extra_inputs` in a loading worker, per image: the item (its id, its path) and its decoded
   photo -> a dict of per-image inputs by key (SAM's input, region masks, ...), collated beside the pixels;
3. :meth:`~DenseHooks.dense_logits` on the device, per batch: the whole segmentor, by default mmseg's slide
   inference (:func:`vpltool.models.dense.segmentor.dense_logits`), which calls per window
   :meth:`~DenseHooks.grid_logits` (by default the cosine of :meth:`~DenseHooks.features` with the text, on
   :meth:`~DenseHooks.feature_grid`; the default features run the last block with the preset's mixing, which for
   ``attention="hook"`` calls :meth:`~DenseHooks.attention` on its q, k, v) and once per input
   :meth:`~DenseHooks.input_embedding`;
4. PAMR (shared), then :meth:`~DenseHooks.probabilities`: by default the softmax over the queries, the threshold and
   the argmax (shared), then :meth:`~DenseHooks.postprocess` per image, with the image's extras (what step 3 left in
   them too).

A method that runs on no CLIP (RADSeg: C-RADIOv3 and its SigLIP 2 adaptor) gives its own model in
:meth:`~DenseHooks.backbone`: then neither ``--model``'s CLIP nor its check runs.

:meth:`~DenseHooks.with_knobs` applies the method's own settings (``cfg.knobs``, an instance of its spec row's
``knobs_class``) to its preset before the backbone is made. ``self.cfg`` is the run's
:class:`~vpltool.config.SegmentConfig` (None when the backbone was made by name alone, ``bb.with_dense("trident")``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from ...config.dense_plugins import HOOK_NAMES  # every hook, in the order it runs (torch-free there)
from ...errors import ContractError

_REGISTRY: dict[str, type[DenseHooks]] = {}


@dataclass(frozen=True)
class ModelNeed:
    """A model a ``--dense`` method would load: ``family`` (the registry's name), ``spec`` (that family's spec; None
    when ``option``, the option naming its weights, was not given)."""

    family: str
    spec: Any
    option: str


class DenseHooks:
    """The hooks of one ``--dense`` method (module docstring); this base class is the default of each."""

    method: ClassVar[str | None] = None  # the DENSE_SPECS name it serves (set by the class statement)
    preset: ClassVar[Any] = None  # its DenseMixing (mixing.py's dataclass)
    # set by the class statement: whether it replaces the shared segmentor (then every photo is computed whole, never
    # in column bands) and the identity post-process (then the probabilities are always made)
    own_segmentor: ClassVar[bool] = False
    own_postprocess: ClassVar[bool] = False
    own_backbone: ClassVar[bool] = False  # it gives its own model (backbone): no CLIP is checked or loaded

    def __init_subclass__(cls, method: str, preset: Any, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        where = f"{cls.__module__}.{cls.__qualname__}"
        unknown = sorted(n for n in vars(cls) if not n.startswith("_") and n not in HOOK_NAMES)
        if unknown:
            raise ContractError(f"{where}: {unknown[0]!r} is no dense hook; the hooks are {', '.join(HOOK_NAMES)} "
                                "(a helper goes in the module, or starts with '_')")
        if method in _REGISTRY and _REGISTRY[method].__qualname__ != cls.__qualname__:
            raise ContractError(f"{where}: --dense {method!r} already has hooks ({_REGISTRY[method].__module__})")
        from ...config.dense import DENSE_SPECS

        spec = DENSE_SPECS.get(method)  # a method's hooks live in the module its spec row names (a plugin's too)
        if spec is not None and spec.module is not None and not cls.__module__.startswith(("vpltool.", "__main__")) \
                and cls.__module__ != spec.module:
            raise ContractError(f"{where}: --dense {method!r} is {'vpltool' if spec.plugin is None else spec.plugin}"
                                f"'s method (module {spec.module}); name the class's own method")
        cls.method, cls.preset = method, preset
        for name in RETURNS:
            fn = vars(cls).get(name)
            if inspect.isfunction(fn) and not getattr(fn, "_checked", False):
                setattr(cls, name, _checked(fn, name))
        cls.own_segmentor = cls.dense_logits is not DenseHooks.dense_logits
        cls.own_postprocess = cls.postprocess is not DenseHooks.postprocess
        cls.own_backbone = cls.backbone is not DenseHooks.backbone
        _REGISTRY[method] = cls

    def __init__(self, cfg: Any = None):
        self.cfg = cfg  # the run's SegmentConfig, or None

    def __repr__(self) -> str:
        return f"<dense hooks {self.method or 'default'}>"

    # ---- before the model
    def check(self) -> None:
        """Once, before any model loads: the method's own inputs checked (a folder it reads, a file's kind), one
        :class:`~vpltool.errors.VplError` line naming the file and the fix. Default: nothing to check."""

    def models(self) -> list[Any]:
        """The models :meth:`backbone` loads through the registry, each a :class:`ModelNeed` (its family, its spec,
        None when the option that names it was not given, and that option): what `vpltool doctor` lists by file,
        with no model loaded. Default: none (a method on a CLIP: the method's lookup adds the CLIP, its proxy and its
        SAM)."""
        return []

    def check_items(self, items: Sequence[Any]) -> None:
        """Once, before any model loads, with the dataset items the run will segment (each ``id`` and ``image``
        path, :class:`vpltool.data.common.Item`): the method's per-image inputs checked (a file per image it reads:
        present, readable, of the image's size), one :class:`~vpltool.errors.VplError` line naming the file and the
        fix. Runs before :meth:`record`. Default: nothing to check."""

    def record(self) -> dict[str, Any]:
        """Entries the stage record (``_stage.json``'s params) adds for this method, JSON values: the identity by
        content of a file or folder it reads (a file's: :func:`vpltool.io.file_identity`), so that a resume over
        other bytes is refused as another run. Default: ``{}``."""
        return {}

    def older_record(self, old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        """A resume's view of an earlier vpltool's record: ``old`` (the params of a folder's ``_run.json`` or
        ``_stage.json``) with what this method recorded in another form then written as :meth:`record` writes it
        now, so that the same settings and the same bytes compare equal and a real difference still shows; ``new``
        is this run's params. Default: ``old`` unchanged."""
        return old

    def with_knobs(self, mixing: Any, knobs: dict[str, Any]) -> Any:
        """``mixing`` (the method's ``DenseMixing``) with the given knobs (``{field: value}`` of the run's
        ``cfg.knobs``, its spec row's ``knobs_class``, None left out) applied. Default: unchanged (knobs read by
        other hooks, as ``self.cfg.knobs.<field>``)."""
        return mixing

    def backbone(self, device: torch.device) -> Any:
        """The model the segmentor runs (``bb`` in the hooks below), made from ``self.cfg``, for a method that runs
        on no CLIP: it gives what the segmentor reads of a backbone (``hooks``, ``device``, ``preprocessor``,
        ``pixels(loaded, size)``, ``encode_text(prompts)``, ``embed_dim``, ``model``, ``to(device)``). Defining
        it also skips ``--model``'s check. Default (never called): the CLIP of ``--model`` with the method's
        mixing, proxy and SAM (:meth:`vpltool.models.dense.method.DenseMethod.load`)."""
        raise NotImplementedError

    def query_text(self, bb, names: Sequence[str], templates: Sequence[str]) -> Any:
        """The segmentor's queries, once per run: ``names`` (each class's names, then the background words, in
        query order) -> what :meth:`dense_logits` gets as ``text`` (its ``to(device)`` is called, its ``len`` is the
        query count). Default: ``[Q, D]`` float32 unit rows, each name's mean normalised embedding over
        ``templates`` (:func:`vpltool.models.backbones.prompts.encode_names`); a method prompting a model with the
        words themselves (SAM 3's concept prompts) returns them in its own form."""
        from ..backbones.prompts import encode_names

        return encode_names(bb, names, templates)

    # ---- per image, in a loading worker
    def extra_inputs(self, item: Any, image: np.ndarray) -> dict[str, Any]:
        """What the method needs per image beside the pixels, by key.

        Args:
            item: the dataset item (:class:`vpltool.data.common.Item`: ``id`` the file stem, ``image`` its path;
                for a photo given to :class:`vpltool.api.Segmenter` as an array, ``image`` is None), so that a
                method can read ``<folder>/<id>.npz``.
            image: the decoded photo ``[H0, W0, 3]`` uint8 RGB.

        Returns:
            ``{key: value}``: tensors (collated into a batch, or a :class:`~vpltool.runtime.batches.Ragged` when their
            sizes differ) or any picklable value (a list of B). Default: ``{}``.
        """
        return {}

    # ---- on the device
    def image_side(self, bb, extras: dict[str, Any]) -> list[tuple[Any, str, tuple, Any]] | None:
        """One photo's image side for ``seg.embed(photo)`` (:mod:`vpltool.api.embed`), for a method with its own
        segmentor: the calls whose output depends on the photo alone, never on the class names, made once
        (``extras``: the photo's :meth:`extra_inputs`), each as ``(owner, name, args, output)`` of
        ``owner.name(*args)``; a later call of the photo making one of them with equal arguments is answered with
        its kept output. Default: None, the shared segmentor's image side (``bb.dense_features``), which `embed`
        runs itself where the method has one."""
        return None

    def dense_logits(self, bb, pixels: torch.Tensor, text: torch.Tensor, sizes: Sequence[tuple[int, int]],
                     settings: Any, extras: list[dict[str, Any]]) -> list[torch.Tensor]:
        """The whole segmentor of a batch: per image ``[Q, H0, W0]`` float32 cosine logits at its size ``sizes[i]``.

        ``settings``: the run's :class:`~vpltool.config.DenseSettings`; ``extras[i]``: image i's
        :meth:`extra_inputs`, a dict this hook may add to (what :meth:`postprocess` needs from the same pass).
        Default: mmseg's slide inference (:func:`vpltool.models.dense.segmentor.dense_logits`)."""
        from .segmentor import dense_logits

        return dense_logits(bb, pixels, text, sizes, settings.slide_crop, settings.slide_stride,
                            pad=settings.crop_mode == "pad", whole=settings.whole, pad_multiple=settings.pad_multiple)

    def input_embedding(self, bb, pixels: torch.Tensor) -> torch.Tensor | None:
        """The whole input's embedding ``[B, D]`` that :meth:`grid_logits` gives each of its windows, or None
        (default: the windows need none)."""
        return None

    def grid_logits(self, bb, pixels: torch.Tensor, text: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor:
        """``[B, 3, H, W]`` windows -> ``[B, hw, Q]`` logits on
        :meth:`feature_grid`'s grid, ``image`` ``[B, D]`` (:meth:`input_embedding`) or None. Default: the cosine of
        each unit patch feature (:meth:`features`) with each unit row of ``text``, the remainder of a side that is
        no patch multiple dropped (as the patch convolution does)."""
        p = bb.patch_size
        h, w = pixels.shape[-2] // p, pixels.shape[-1] // p
        feats = bb.dense_features(pixels[..., : h * p, : w * p]).float()
        feats = feats / feats.norm(dim=-1, keepdim=True)
        return feats @ text.to(feats.device, feats.dtype).T

    def features(self, bb, pixels: torch.Tensor, fp16_pos: bool = False) -> torch.Tensor:
        """``[B, 3, H, W]`` float32 CLIP-normalised pixels (sides multiples of the patch) -> ``[B, hw, D]``
        joint-space patch features, not normalised. Default: blocks ``0..L-2``, the preset's last block
        (:meth:`~vpltool.models.ClipBackbone.last_block`), ``ln_post`` and ``proj``."""
        encoded = bb.encode(pixels, stop=bb.n_blocks - 1, fp16_pos=fp16_pos)
        return bb.dense(bb.last_block(encoded.tokens, encoded.grid))

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: tuple[int, int], lead: int
                  ) -> torch.Tensor:
        """The last block's attention, for a preset whose ``attention`` is ``"hook"`` (how most training-free
        methods differ: NACLIP's, ClearCLIP's, SCLIP's are this one function). ``q``, ``k``, ``v``: ``[B, heads, L,
        hd]`` as the model computes them (open_clip's packed projection; a timm tower's after its norms and RoPE),
        ``L = lead + h * w`` tokens (``lead``: the class token, or none on SigLIP 2; ``grid`` ``(h, w)``) -> ``[B,
        heads, L, hd]``, the heads' outputs before ``out_proj``. The block then adds its input and runs its MLP as
        the preset's ``residual`` and ``ffn`` say, and :meth:`features` goes on (``ln_post``, ``proj``). Default:
        CLIP's own, ``softmax(q kᵀ / sqrt(hd)) v``."""
        weights = torch.softmax((q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5, dim=-1)
        return weights @ v

    def feature_grid(self, bb, size: tuple[int, int]) -> tuple[int, int]:
        """The ``(h, w)`` grid of :meth:`features` for an input of ``size`` ``(H, W)`` pixels. Default: CLIP's
        patch grid."""
        return int(size[0]) // bb.patch_size, int(size[1]) // bb.patch_size

    # ---- after the logits
    def probabilities(self, bb, logits: torch.Tensor, query_class: torch.Tensor, n_classes: int, settings: Any
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """One image's ``[Q, H0, W0]`` float32 scores (what :meth:`dense_logits` gave, after PAMR) -> (``[C, H0,
        W0]`` float32 class probabilities in [0, 1], ``[H0, W0]`` int64 labels, 0 = background), ``query_class``
        ``[Q]`` int64 each query's class. Default: ``softmax(logit_scale * cos)`` over the queries, each class the
        max over its queries, SCLIP's area filter, the argmax and the threshold
        (:func:`vpltool.models.dense.segmentor.dense_probabilities`)."""
        from .segmentor import dense_probabilities

        return dense_probabilities(logits, query_class, n_classes, settings.logit_scale, settings.prob_threshold,
                                   settings.area_threshold)

    def postprocess(self, bb, probs: torch.Tensor, labels: torch.Tensor, extras: dict[str, Any], settings: Any
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One image after the shared post-processing: ``[C, H0, W0]`` float32 class probabilities in [0, 1] and
        ``[H0, W0]`` int64 labels (0 = background) -> the method's (a SAM refinement, a region vote, ...), with the
        image's ``extras``. Default: unchanged."""
        return probs, labels


def _is_tensor(x: Any, ndim: int, floating: bool | None = None) -> bool:
    """``x`` is a torch tensor of rank ``ndim`` (floating-point, or integer, when ``floating`` says which)."""
    if not isinstance(x, torch.Tensor) or x.ndim != ndim:
        return False
    return floating is None or (x.dtype.is_floating_point if floating else
                                not x.dtype.is_floating_point and not x.dtype.is_complex and x.dtype != torch.bool)


def _probs_labels(out: Any, shape: tuple[int, ...] | None) -> bool:
    """``(probs [C, H, W] float, labels [H, W] integer)``, of ``shape`` ``(C, H, W)`` when known."""
    if not (isinstance(out, tuple) and len(out) == 2 and _is_tensor(out[0], 3, True) and _is_tensor(out[1], 2, False)):
        return False
    return shape is None or (tuple(out[0].shape) == shape and tuple(out[1].shape) == shape[1:])


def _logits_list(out: Any, a: dict[str, Any]) -> bool:
    """One ``[Q, H0, W0]`` float tensor per image, at its size (``Q`` the text's rows where the text is a tensor; a
    method's own text, its ``query_text`` hook's, says nothing of its rows)."""
    sizes, text = list(a["sizes"]), a["text"]
    q = int(text.shape[0]) if isinstance(text, torch.Tensor) else None
    return (isinstance(out, (list, tuple)) and len(out) == len(sizes)
            and all(_is_tensor(x, 3, True) and tuple(x.shape[1:]) == tuple(map(int, size))
                    and (q is None or x.shape[0] == q) for x, size in zip(out, sizes)))


def _is_mixing(out: Any) -> bool:
    from .mixing import DenseMixing

    return isinstance(out, DenseMixing)


def _grid(out: Any) -> bool:
    return (isinstance(out, (tuple, list)) and len(out) == 2
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in out))


# what each hook returns (``args``: its arguments by the base class's names), as its docstring says: checked where
# a class's own hook returns, so that a plugin's numpy array or None is one line naming the hook
RETURNS: dict[str, tuple[str, Any]] = {
    "models": ("a list of ModelNeed", lambda out, a: isinstance(out, list) and all(isinstance(m, ModelNeed)
                                                                                  for m in out)),
    "record": ("a dict of JSON values", lambda out, a: isinstance(out, dict)),
    "older_record": ("a dict (the params, as record() writes them now)", lambda out, a: isinstance(out, dict)),
    "with_knobs": ("the method's DenseMixing", lambda out, a: _is_mixing(out)),
    "backbone": ("the model the segmentor runs", lambda out, a: out is not None),
    "extra_inputs": ("a dict of per-image inputs by key", lambda out, a: isinstance(out, dict)),
    "dense_logits": ("a list of one [Q, H0, W0] float tensor per image, at its size",
                     lambda out, a: _logits_list(out, a)),
    "input_embedding": ("a [B, D] float tensor, or None", lambda out, a: out is None or _is_tensor(out, 2, True)),
    "grid_logits": ("a [B, hw, Q] float tensor", lambda out, a: _is_tensor(out, 3, True)),
    "features": ("a [B, hw, D] float tensor", lambda out, a: _is_tensor(out, 3, True)),
    "attention": ("a [B, heads, L, hd] float tensor, v's shape",
                  lambda out, a: _is_tensor(out, 4, True) and out.shape == a["v"].shape),
    "feature_grid": ("a tuple (h, w) of two ints", lambda out, a: _grid(out)),
    "probabilities": ("a tuple (probabilities [C, H0, W0] float tensor, labels [H0, W0] integer tensor)",
                      lambda out, a: _probs_labels(out, (int(a["n_classes"]), *a["logits"].shape[-2:]))),
    "postprocess": ("a tuple (probabilities [C, H0, W0] float tensor, labels [H0, W0] integer tensor) of the "
                    "shapes it was given", lambda out, a: _probs_labels(out, tuple(a["probs"].shape))),
}


def described(value: Any) -> str:
    """What a hook returned, in a few words: ``None``, ``a numpy array [2, 3] float32``, ``a 2-d torch.int64
    tensor [4, 4]``, ``a tuple of 3``."""
    if value is None:
        return "None"
    if isinstance(value, torch.Tensor):
        return f"a {value.ndim}-d {value.dtype} tensor {list(value.shape)}"
    if isinstance(value, np.ndarray):
        return f"a numpy array {list(value.shape)} {value.dtype}"
    if isinstance(value, (tuple, list)):
        inner = ", ".join(described(v) for v in value[:3]) + (", ..." if len(value) > 3 else "")
        return f"a {type(value).__name__} of {len(value)} ({inner})"
    return f"a {type(value).__module__}.{type(value).__qualname__}".replace("builtins.", "")


def _checked(fn: Any, name: str) -> Any:
    """Hook ``fn`` (a class's own ``name``) checked where it returns: :data:`RETURNS`' rule, else one line."""
    want, ok = RETURNS[name]
    base = inspect.signature(getattr(DenseHooks, name))

    @functools.wraps(fn)
    def hook(self, *args: Any, **kwargs: Any) -> Any:
        out = fn(self, *args, **kwargs)
        try:
            given = base.bind(self, *args, **kwargs).arguments
        except TypeError:  # called with a subclass's own keyword: its arguments unread, its result unchecked
            return out
        if not ok(out, given):
            raise ContractError(_broken_hook(type(self).method, name, f"returned {described(out)}; it returns {want}"))
        return out

    hook._checked = True
    return hook


def _broken_hook(method: str | None, name: str, what: str) -> str:
    """The one line of a hook that broke its contract: the method, its plugin's distribution and the fix."""
    from ...config.dense import DENSE_SPECS
    from ...plugins.entry_points import uninstall_hint

    spec = DENSE_SPECS.get(method)
    dist = spec.plugin if spec is not None else None
    who = f"plugin {dist}: --dense {method}" if dist else f"--dense {method}"
    fix = f"fix the plugin{uninstall_hint(dist)}" if dist else "a vpltool bug: please report it"
    return f"{who}: its hook {name} {what}; {fix}"


def hooks_class(method: str) -> type[DenseHooks] | None:
    """The registered :class:`DenseHooks` subclass of ``method`` (its module imported already), or None."""
    return _REGISTRY.get(method)


__all__ = ["DenseHooks", "ModelNeed", "HOOK_NAMES", "RETURNS", "described", "hooks_class"]
