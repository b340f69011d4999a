"""A ``--dense`` name resolved once: :class:`DenseMethod`, the one object `segment`, the Python door and the
benchmarks pass down (its spec row, resolved settings, last-block mixing, hooks, the proxy and SAM models it takes,
its class-file set and its benchmark presets), made and checked by :func:`resolve_method` before any model loads.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from ...config.dense import DENSE_SPECS, DenseMethodSpec, DenseSettings, SegmentConfig
from ...config.dense_knobs import sam_weights_hint
from ...errors import VplError, VplWarning
from . import dense_hooks, dense_mixing
from .hooks import DenseHooks, ModelNeed
from .mixing import DenseMixing


@dataclass(frozen=True)
class DenseMethod:
    """One ``--dense`` method as a run uses it.

    Attributes:
        name: its ``DENSE_SPECS`` name.
        spec: its spec row (defaults, module, proxy model, SAM, knob names, class-file set).
        cfg: the run's :class:`~vpltool.config.SegmentConfig`; ``settings`` its :meth:`~SegmentConfig.resolved`.
        mixing: the last block's :class:`~.mixing.DenseMixing`: the preset with ``--attention`` / ``--residual``
            and the method's knobs applied (its ``with_knobs`` hook).
        changed: ``mixing`` differs from the preset (the stage records it then).
        hooks: its :class:`~.hooks.DenseHooks`, made with ``cfg``.
        proxy, sam: the proxy DINO's :class:`~vpltool.models.backbones.dino.DinoSpec` and SAM's
            :class:`~vpltool.models.backbones.sam.SamSpec`, checked; None when the method takes none.
    """

    name: str
    spec: DenseMethodSpec
    cfg: SegmentConfig
    settings: DenseSettings
    mixing: DenseMixing
    changed: bool
    hooks: DenseHooks
    proxy: Any = None
    sam: Any = None

    @property
    def knobs(self) -> tuple[str, ...]:
        """The names of the knobs only this method reads (its spec row's ``knobs_class``' fields)."""
        return tuple(k.field for k in self.spec.knobs)

    @property
    def class_files(self) -> str | None:
        """Its reference's bundled class-file set (``vpltool/assets/class_files/<set>/``), or None."""
        return self.spec.class_files

    @property
    def presets(self) -> dict:
        """Its per-benchmark presets (:data:`vpltool.config.benchmarks.BENCHMARK_PRESETS`), ``{}`` for none."""
        from ...config.benchmarks import BENCHMARK_PRESETS

        return BENCHMARK_PRESETS.get(self.name, {})

    def check_backbone(self, model) -> None:
        """One line, before any model loads, when the CLIP of ``model`` (a :class:`~vpltool.models.ModelSpec`) cannot
        run this method (a timm tower such as SigLIP 2 takes the last block's mixing alone:
        :func:`vpltool.models.backbones.clip.check_backbone`); nothing for a method that runs on no CLIP."""
        from ..registry import check_model

        if self.hooks.own_backbone:  # a method on no CLIP checks its own model in its check hook
            return
        check_model("clip", model, dense=self.mixing)

    def load(self, model, device, backbone=None, dtype=None):
        """The CLIP of ``model`` (a :class:`~vpltool.models.ModelSpec`; or ``backbone``, already loaded) with this
        method: its mixing, its hooks, and its proxy model and SAM encoder when it takes them. A method whose hooks
        give their own model (:meth:`~.hooks.DenseHooks.backbone`) gets that model instead, ``model`` unread, loaded
        under the run's autocast of ``dtype`` (the run's precision; None: fp32), so that a family holding its weights
        in the run's precision reads them straight into it (SAM 3: :mod:`vpltool.models.backbones.sam3_half`)."""
        import torch

        from ...device import autocast
        from ..registry import load_model

        if self.hooks.own_backbone:  # RADSeg: C-RADIOv3 and its language adaptor, no CLIP; SAM 3's methods
            if backbone is not None and backbone.hooks is self.hooks:
                return backbone
            with autocast(torch.device(device), dtype or torch.float32):
                return self.hooks.backbone(device)
        if backbone is None:
            self.check_backbone(model)
        bb = backbone or load_model("clip", model, device)
        try:  # the proxy's weights are checked again as they load (their values: the registry's rule)
            proxy = None if self.proxy is None else load_model("dino", self.proxy, device)
        except VplError as e:
            raise proxy_error(e, self.name) from None
        return bb.with_dense(self.mixing, proxy=proxy,
                             sam=None if self.sam is None else load_model("sam", self.sam, device), hooks=self.hooks)


def proxy_error(e: VplError, dense: str) -> VplError:
    """The dino family's one line about a ``--dense`` method's proxy, with the options that gave it (the family
    names its own, ``--dino-model`` and ``--dino-weights``)."""
    return VplError(_proxy_words(str(e), dense))


def _proxy_words(text: str, dense: str) -> str:
    return (text.replace("--dino-model", "--proxy-model").replace("--dino-weights", "--proxy-weights")
            .replace("--affinity dino", f"--dense {dense}"))


@contextlib.contextmanager
def proxy_words(dense: str) -> Iterator[None]:
    """The dino family's warnings while it checks a ``--dense`` method's proxy, said with the options that gave it
    (a checkpoint's stripped ``model.`` prefix was said under ``--dino-weights``, an option `segment` lacks)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        except VplError as e:
            raise proxy_error(e, dense) from None
    for w in caught:
        message = w.message if not isinstance(w.message, VplWarning) else VplWarning(_proxy_words(str(w.message),
                                                                                                   dense))
        warnings.warn_explicit(message, w.category, w.filename, w.lineno)


def method_mixing(cfg: SegmentConfig, hooks: DenseHooks) -> tuple[DenseMixing, bool]:
    """The last block's mixing: ``cfg.dense``'s preset with the method's own knobs given (``cfg.knobs``, through
    its ``with_knobs`` hook) and ``--attention`` / ``--residual`` in place of its own
    (``--no-residual`` drops the residual and the FFN, as ClearCLIP's ``ignore_residual``); and whether anything
    was given that changes it (the hook returned another object, or an attention switch was given)."""
    base = dense_mixing(cfg.dense)
    knobs = cfg.knobs.given()  # the method's own settings (its MethodKnobs), those given
    out = hooks.with_knobs(base, knobs) if knobs else base
    if cfg.attention is None and cfg.residual is None:
        return out, out is not base  # knobs of its post-processing alone change no mixing
    keep = base.residual if cfg.residual is None else cfg.residual
    return replace(out, attention=cfg.attention or base.attention, residual=keep, ffn=keep), True


def proxy_spec(cfg: SegmentConfig):
    """The proxy vision model of a method that takes one (its spec row's ``proxy_model``), its weights checked now
    (one line for a missing file or another architecture, before any model loads); None for the others."""
    from ..backbones.dino import DinoSpec
    from ..registry import check_model

    if not DENSE_SPECS[cfg.dense].proxy_model:
        return None
    spec = DinoSpec(cfg.proxy_model, cfg.proxy_weights)
    with proxy_words(cfg.dense):  # the dino family names its own options
        check_model("dino", spec)
    return spec


def sam_spec(cfg: SegmentConfig):
    """SAM's image encoder of a method that takes one (its spec row's ``sam``), its weights checked now (one line
    for none given, a missing file or another architecture, before any model loads); None for the others."""
    from ..backbones.sam import SamSpec
    from ..registry import check_model

    if not DENSE_SPECS[cfg.dense].sam:
        return None
    if cfg.sam_weights is None:
        raise VplError(f"--dense {cfg.dense} needs SAM's image encoder: pass {sam_weights_hint(cfg.sam_model)}; "
                       "none: random weights, for tests only")
    # --sam-refine prompts SAM's mask decoder: the file must hold it (one line for an encoder-only file)
    spec = SamSpec(cfg.sam_model, cfg.sam_weights, prompt=cfg.resolved().sam_refine)
    check_model("sam", spec)
    return spec


def method_models(cfg: SegmentConfig, model=None) -> list[ModelNeed]:
    """Every model ``cfg.dense`` would load (by the registry's family names), with nothing checked or loaded, for
    `vpltool doctor`: the CLIP of ``model`` (a :class:`~vpltool.models.ModelSpec`; None: the default) unless the
    method gives its own model, its proxy DINO, its SAM encoder, the SAM or SAM 3 a knob value reads
    (``--region-masks sam|sam3``; SAM 2 is no registry family), then its hooks' own
    (:meth:`~.hooks.DenseHooks.models`); each once."""
    from ..backbones.dino import DinoSpec
    from ..backbones.loading import ModelSpec
    from ..backbones.sam import SamSpec
    from ..backbones.sam3 import Sam3Spec

    hooks, row = dense_hooks(cfg.dense, cfg), DENSE_SPECS[cfg.dense]
    needs = [] if hooks.own_backbone else [ModelNeed("clip", model or ModelSpec(), "--model")]
    if row.proxy_model:
        needs.append(ModelNeed("dino", DinoSpec(cfg.proxy_model, cfg.proxy_weights), "--proxy-weights"))
    regions = [str(getattr(cfg.knobs, k.field) or "") for k in row.knobs if k.uses]
    if row.sam or any(v == "sam" or v.startswith("sam:") for v in regions):
        needs.append(ModelNeed("sam", SamSpec(cfg.sam_model, cfg.sam_weights) if cfg.sam_weights else None,
                               "--sam-weights"))
    if any(v == "sam3" or v.startswith("sam3:") for v in regions):
        needs.append(ModelNeed("sam3", Sam3Spec(cfg.sam_weights) if cfg.sam_weights else None, "--sam-weights"))
    return list(dict.fromkeys([*needs, *hooks.models()]))


def resolve_method(cfg: SegmentConfig, model=None) -> DenseMethod:
    """``cfg.dense`` resolved once into a :class:`DenseMethod` and checked before any model loads: its settings,
    mixing and hooks, the CLIP of ``model`` (a :class:`~vpltool.models.ModelSpec`, when given: its tower takes the
    method, :meth:`DenseMethod.check_backbone`), its hooks' own ``check`` (one line for a missing or foreign file),
    then its proxy and SAM files (:func:`proxy_spec`, :func:`sam_spec`)."""
    hooks = dense_hooks(cfg.dense, cfg)
    mixing, changed = method_mixing(cfg, hooks)
    if model is not None:
        DenseMethod(cfg.dense, DENSE_SPECS[cfg.dense], cfg, cfg.resolved(), mixing, changed, hooks).check_backbone(
            model)
    hooks.check()  # its own files first: what it needs is said in its words (RADSeg: RADIO's checkpoint)
    return DenseMethod(cfg.dense, DENSE_SPECS[cfg.dense], cfg, cfg.resolved(), mixing, changed, hooks,
                       proxy_spec(cfg), sam_spec(cfg))


__all__ = ["DenseMethod", "resolve_method", "method_models", "method_mixing", "proxy_spec", "sam_spec"]
