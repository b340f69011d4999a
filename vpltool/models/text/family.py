"""The one interface of a text-supervised model family (PGSeg / GroupViT, Talk2DINO, ...), written down once.

A text-supervised family learns from image–text pairs alone and segments by class names from its checkpoint. The
stages never name one: `segment --model NAME:FILE`, `cam --model NAME:FILE` (seeds), `benchmark --model
NAME:FILE`, :func:`vpltool.segmenter` and the shared trainer (`train-text --family NAME`) ask
:func:`text_family` for the family and call the hooks of :class:`TextSegFamily` on what it returns.

A family is:

1. its package under ``vpltool/models/``, one module of which builds an object with every hook of
   :class:`TextSegFamily` (and nothing else public) and calls :func:`register_text_family` on it once;
2. its row in :data:`vpltool.models.registry.TEXT_FAMILIES`: that module, its configuration class (a torch-free
   :class:`~vpltool.config.text.TextTrainConfig` subclass: training fields, recipes, zero-shot defaults, file
   names and kinds) and the names it segments under (``--model NAME:FILE``).

A family that subclasses :class:`vpltool.models.text.base.TextFamilyBase` writes five hooks and takes the others'
defaults (its docstring lists them).

Registration refuses (``TypeError``, one line) a family that lacks a hook or defines a public name that is not one
(a misspelt hook would otherwise never be called), whose ``name`` has no registry row, or whose ``TrainConfig`` is
not the class its row names. Shapes: ``B`` images, ``N`` class names, ``T`` templates, ``L`` the text context,
``D`` the joint embedding width, ``H x W`` an image's size after :meth:`TextSegFamily.image_tensor`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ...errors import VplError

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor, nn

    from ...config.text import TextTrainConfig

Tokenize = Callable[[Sequence[str]], "Tensor"]  # texts -> [len(texts), L] int64 token ids


class TextSegFamily(Protocol):
    """The hooks of a text-supervised family. ``model``: what :meth:`load_model` / :meth:`build_model` return (a
    ``torch.nn.Module`` with ``cfg``, its model config); ``cfg``: that model config (anything with ``to_dict()``
    -> a JSON-able dict, recorded with every checkpoint)."""

    name: str  # the family's name, its row in the registry (``pgseg``)
    TrainConfig: type[TextTrainConfig]  # its configuration class (torch-free): the class its registry row names
    TEMPLATES: Mapping[str, tuple[str, ...]]  # prompt sets by key (``{"simple": ("a photo of a {}.",)}``)

    # ------------------------------------------------------------------ text
    def tokenizer(self, cfg: Any, vocabulary: Sequence[str] | None = None) -> Tokenize:
        """The model's tokenizer: texts -> ``[n, L]`` int64 ids (``L`` = its context), zero-padded.
        ``vocabulary``: the words of a word tokenizer (the demo's), None for a BPE."""

    def caption_length(self, cfg: Any) -> tuple[Callable[[str], int], int]:
        """``(length(text) -> its token count with start and end, before any cut; the context L)``: the trainer
        refuses a caption longer than ``L`` unless ``--truncate``."""

    def class_tokens(self, names: Sequence[str], tokenize: Tokenize, templates: Sequence[str]) -> Tensor:
        """``[N, T, L]`` int64: every class name in every template (``"a photo of a {}."``)."""

    def class_text_embeddings(self, model: nn.Module, tokens: Tensor) -> Tensor:
        """``[N, T, L]`` int64 -> ``[N, D]`` float32, L2-normalised rows: one embedding per class (its
        templates' embeddings combined as the family's reference does), on the model's device, no gradients."""

    # ------------------------------------------------------------------ images and zero-shot maps
    def image_tensor(self, image: np.ndarray, short_side: int) -> Tensor:
        """``[H0, W0, 3]`` uint8 RGB -> ``[1, 3, H, W]`` float32: resized so that the short side is ``short_side``
        and normalised, exactly as the family's reference reads an image for evaluation (CPU)."""

    def zero_shot_logits(self, model: nn.Module, images: Tensor, text: Tensor, bg_thresh: float = 0.5,
                         with_bg: bool = True, mode: str = "whole", crop: int = 448,
                         stride: int = 224) -> Tensor:
        """``images`` ``[B, 3, H, W]`` float32 (:meth:`image_tensor`), ``text`` ``[N, D]`` float32
        (:meth:`class_text_embeddings`) -> ``[B, N (+1), H, W]`` float32 scores at the input's size. With
        ``with_bg``, channel 0 is background (a pixel whose best class score is below ``bg_thresh``), classes
        from 1; without it, the N class channels alone (`cam`'s seeds). ``mode``: ``whole`` (one pass) or
        ``slide`` (``crop``-pixel windows every ``stride`` pixels, averaged where they overlap). The argmax over
        channels is the family's label map; higher is more likely."""

    # ------------------------------------------------------------------ checkpoints
    def check_checkpoint(self, path: str | Path) -> Any:
        """Read checkpoint ``path`` and return its model config without building the model; one-line
        :class:`~vpltool.errors.VplError` for a missing file or one of another model (before any output)."""

    def load_checkpoint(self, path: str | Path) -> tuple[Any, dict[str, Tensor]]:
        """``(model config, state dict)`` of checkpoint ``path`` (the family's own file or a release it reads);
        one line for a missing or foreign file."""

    def load_model(self, path: str | Path, device: Any = "cpu") -> nn.Module:
        """The frozen model of checkpoint ``path`` on ``device`` (eval mode, no gradients)."""

    def save_checkpoint(self, path: str | Path, model: nn.Module, extra: dict[str, Any] | None = None,
                        **meta: Any) -> Path:
        """Write ``model`` (weights and config; ``extra``: JSON-able facts for the header) to ``path``
        atomically, as a file :meth:`load_checkpoint` reads: the trainer's final ``TrainConfig.FINAL``. ``meta``:
        more ``vpltool.<key>`` header entries for :func:`vpltool.io.write_tensors` (the trainer passes
        ``numerics``, the run's dtype and mode, which later stages compare)."""

    # ------------------------------------------------------------------ training (the shared trainer)
    def model_config(self, cfg: TextTrainConfig, init: Any | None = None) -> Any:
        """The model config a run of ``cfg`` builds: its preset and knobs, or ``init``'s (the ``--init``
        checkpoint's config, whose architecture it keeps). One line for a combination that cannot train."""

    def build_model(self, cfg: Any, seed: int = 0) -> nn.Module:
        """A freshly initialised trainable model of ``cfg``, seeded (the same in every process; the global RNG
        untouched). Frozen parts have ``requires_grad`` False: the optimiser takes only what trains."""

    def forward_train(self, model: nn.Module, images: Tensor, tokens: Tensor,
                      gather: Callable[[Tensor], Tensor] | None = None,
                      keys: Tensor | None = None) -> dict[str, Tensor]:
        """One training forward: ``images`` ``[b, 3, S, S]`` float32 (ImageNet-normalised crops), ``tokens``
        ``[b, L]`` int64 captions (``[b, 1 + K, L]`` with ``K`` noun prompts: ``TrainConfig.noun_prompts``),
        ``keys`` ``[b, L]`` int64 or None (same-caption keys) -> the losses: ``"loss"`` (0-d, differentiable, what
        is minimised) and any other 0-d terms to log. ``gather``: every rank's rows of a tensor (the cross-rank
        all-gather, gradients flowing back) or None on one process."""

    def for_ranks(self, model: nn.Module) -> nn.Module:
        """``model`` prepared for a multi-GPU run before DDP wraps it (PGSeg: its projectors' BatchNorm
        synchronised across ranks); ``model`` itself when nothing changes."""


class FrozenSide(Protocol):
    """The optional hooks of a family whose image and text sides are frozen and read unaugmented views (Talk2DINO:
    its DINO and CLIP): their outputs for a pair are the same at every epoch, so the trainer computes them once and
    keeps them in the run folder (:mod:`vpltool.stages.train_text.cache`, ``--feature-cache``). A family defines
    all four or none (PGSeg, which trains its image side, none). ``b`` pairs, ``S`` the crop side."""

    def frozen_identity(self, model: nn.Module) -> dict[str, Any]:
        """What the frozen features depend on besides the pair, JSON-able: the backbones' names and the digests of
        their bytes (or of their weights' values when no file names them), the view's side, the dtype. A cache
        made under another identity is never read."""

    def frozen_image_features(self, model: nn.Module, images: Tensor) -> dict[str, Tensor]:
        """``images`` ``[b, 3, S, S]`` float32 -> the frozen image side's named features, each ``[b, ...]`` float32
        on the model's device, no gradients (kept per image, by its bytes)."""

    def frozen_text_features(self, model: nn.Module, tokens: Tensor) -> dict[str, Tensor]:
        """``tokens`` ``[b, L]`` int64 -> the frozen text side's named features, each ``[b, ...]`` float32, no
        gradients (kept per caption, by its tokens); names other than the image side's."""

    def forward_train_from(self, model: nn.Module, features: dict[str, Tensor],
                           gather: Callable[[Tensor], Tensor] | None = None,
                           keys: Tensor | None = None) -> dict[str, Tensor]:
        """:meth:`TextSegFamily.forward_train` from both sides' features in one dict (computed now or read back):
        the same losses bit for bit (``forward_train(m, x, t) == forward_train_from(m, {**frozen_image_features(m,
        x), **frozen_text_features(m, t)})``)."""


def _names(proto: type) -> set[str]:
    return ({n for n in proto.__annotations__ if not n.startswith("_")}
            | {n for n, v in vars(proto).items() if callable(v) and not n.startswith("_")})


# every hook's name, read from the Protocol (its annotations and its methods): the one list registration checks
HOOKS: tuple[str, ...] = tuple(sorted(_names(TextSegFamily)))
FROZEN_HOOKS: tuple[str, ...] = tuple(sorted(_names(FrozenSide)))  # all or none of them


def caches_frozen_side(impl: Any) -> bool:
    """Whether family ``impl`` defines :class:`FrozenSide`'s hooks (registration saw all or none)."""
    return all(callable(getattr(impl, n, None)) for n in FROZEN_HOOKS)

_REGISTERED: dict[str, TextSegFamily] = {}


def register_text_family(impl: TextSegFamily) -> TextSegFamily:
    """Register ``impl`` as the family ``impl.name`` (called once, by the module its registry row names); it is
    also registered as a model family (``load_model(name, FILE)``, ``check_model(name, FILE)``).

    Raises:
        TypeError: a hook missing, a public name that is not a hook, no registry row for ``impl.name``, or a
            ``TrainConfig`` other than the one its row names.
    """
    from ..registry import TEXT_FAMILIES, register_family, text_config
    from .base import EXTRAS, TextFamilyBase

    public = {n for n in dir(impl) if not n.startswith("_")}
    based = isinstance(impl, TextFamilyBase)  # the base's defaults, and its own names (ModelConfig, class_scores)
    missing = impl.missing() if based else sorted(set(HOOKS) - public)
    unknown = sorted(public - set(HOOKS) - set(FROZEN_HOOKS) - (set(EXTRAS) | {"missing"} if based else set()))
    frozen = sorted(public & set(FROZEN_HOOKS))
    where = f"text-supervised family {getattr(impl, 'name', type(impl).__name__)!r}"
    if missing:
        what = ("TextFamilyBase's subclass writes tokenizer, model_config, build_model, forward_train and "
                "class_scores (or zero_shot_logits)" if based else f"TextSegFamily: {', '.join(HOOKS)}; or subclass "
                "vpltool.models.text.base.TextFamilyBase, whose defaults leave five")
        raise TypeError(f"{where}: hook(s) {', '.join(missing)} missing ({what})")
    if unknown:
        raise TypeError(f"{where}: {', '.join(unknown)} is not a hook of TextSegFamily (its hooks: "
                        f"{', '.join(HOOKS)}; FrozenSide's, optional: {', '.join(FROZEN_HOOKS)}); make a helper "
                        "private (_name) or fix its spelling")
    if frozen and len(frozen) < len(FROZEN_HOOKS):
        raise TypeError(f"{where}: defines {', '.join(frozen)} but not {', '.join(sorted(set(FROZEN_HOOKS) - public))}"
                        f" (FrozenSide's hooks go together: {', '.join(FROZEN_HOOKS)})")
    if impl.name not in TEXT_FAMILIES:
        raise TypeError(f"{where}: no row in vpltool.models.registry.TEXT_FAMILIES; add one")
    if impl.TrainConfig is not text_config(impl.name):
        raise TypeError(f"{where}: TrainConfig {impl.TrainConfig.__name__} is not the class its registry row names "
                        f"({TEXT_FAMILIES[impl.name].config})")
    if _REGISTERED.get(impl.name, impl) is not impl:
        raise TypeError(f"{where}: registered twice")
    _REGISTERED[impl.name] = impl
    register_family(impl.name, lambda spec, device="cpu", **_: impl.load_model(spec, device),
                    lambda spec, **_: impl.check_checkpoint(spec), summary=TEXT_FAMILIES[impl.name].title,
                    module=TEXT_FAMILIES[impl.name].module, fix=f"pass {TEXT_FAMILIES[impl.name].files}",
                    licence=TEXT_FAMILIES[impl.name].licence)
    return impl


def text_family(name: str) -> TextSegFamily:
    """The registered text-supervised family ``name`` (its module imported on first use); one line naming the
    known ones."""
    from ..registry import TEXT_FAMILIES, _import_family

    if name not in _REGISTERED and name in TEXT_FAMILIES:
        _import_family(name, TEXT_FAMILIES[name].module)  # a plugin's that fails: one line naming it
    if name not in _REGISTERED:
        raise VplError(f"unknown text-supervised family {name!r}; known: {', '.join(TEXT_FAMILIES)}")
    return _REGISTERED[name]


def class_embeddings(fam: TextSegFamily, model: Any, names: Sequence[str], templates: Sequence[str],
                     device: Any) -> Tensor:
    """``[N, D]`` float32: the names' text embeddings through the model's own text tower (each in ``templates``)."""
    tokens = fam.class_tokens(list(names), fam.tokenizer(model.cfg), list(templates)).to(device)
    return fam.class_text_embeddings(model, tokens)


__all__ = ["TextSegFamily", "FrozenSide", "HOOKS", "FROZEN_HOOKS", "caches_frozen_side", "register_text_family",
           "text_family", "class_embeddings"]
