"""The written extension points of a ``--dense`` method: :class:`DenseHooks`, every hook the backbone and the
segmentor call, each with its default (the shared path).

A method that reads more than the last block's input subclasses it once in its own module and names itself::

    class Hooks(DenseHooks, method="trident", preset=PRESET):
        def dense_logits(self, bb, pixels, text, sizes, settings, extras): ...

Registration is the class statement: a public name that is no hook (:data:`HOOK_NAMES`; a misspelt
``dense_logit``) is refused there, in one line, so a typo never falls back to the default path unnoticed. Helpers
go in the module, or start with ``_``. A pure-mixing preset (``mixing.py``) has no class: the defaults run it.

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
   :meth:`~DenseHooks.feature_grid`) and once per input :meth:`~DenseHooks.input_embedding`;
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

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from ...errors import ContractError

# every hook, in the order it runs; a subclass's public names must be among them
HOOK_NAMES = ("check", "check_items", "record", "older_record", "with_knobs", "backbone", "query_text",
              "extra_inputs", "dense_logits", "input_embedding", "grid_logits", "features", "feature_grid",
              "probabilities", "postprocess")
_REGISTRY: dict[str, type[DenseHooks]] = {}


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


def hooks_class(method: str) -> type[DenseHooks] | None:
    """The registered :class:`DenseHooks` subclass of ``method`` (its module imported already), or None."""
    return _REGISTRY.get(method)


__all__ = ["DenseHooks", "HOOK_NAMES", "hooks_class"]
