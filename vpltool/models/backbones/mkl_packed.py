"""MKL's packed product for fp32 linear layers on the CPU: the weights laid out for MKL's kernel once
(``cblas_sgemm_pack``), each call only ``cblas_sgemm_compute`` (``torch.ops.mkl._mkl_linear``, the op torch's own
compiler emits for a frozen CPU linear), where :mod:`.onednn`'s route takes MKL's product, and where it takes oneDNN's
but a layer packed for its rows ran faster packed (:func:`packed_over_onednn`, measured once a machine).

``F.linear``'s ``sgemm`` packs the weights into its kernel's layout on every call; packed once, a ViT-B's products
of ~900 rows ran faster on an Intel Xeon (Emerald Rapids, no AMX: ``bench/bench_radseg.py`` records both rates,
``linear``'s ``mkl_gflops`` and ``mkl_packed_gflops``), with the same sums in the same order (equal bits there:
``tests/test_mkl_packed.py`` asks them within float rounding). The packed
copy is held beside the weights (as many bytes), and MKL packs for one row count: a caller chooses which layers
(:func:`use_packed_mkl`) and, where it knows the rows of its next forward, packs them first
(:meth:`PackedLinear.prepare`). Reproducible mode, :func:`.onednn.references_library`, gradients, bf16, autocast
and compiled graphs keep :func:`.onednn.f_linear`.
"""

from __future__ import annotations

import torch
from torch import nn

from .onednn import MIN_ROWS, OneDnnLinear, applies, f_linear, pinned

HAS_MKL_PACK = bool(torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear"))


def packs_mkl(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :class:`PackedLinear` may take MKL's packed product for ``x`` (where :func:`.onednn.applies` does not
    take oneDNN's, or :func:`packed_over_onednn` found the packed product faster): fp32 inference on the CPU as
    there, torch built with MKL's packed op, outside reproducible mode and :func:`.onednn.references_library`
    (MKL's plain ``sgemm`` there, as the references call it), at least :data:`.onednn.MIN_ROWS` rows, not in a
    graph torch.compile traces."""
    from ...runtime.numerics import reproducible_asked

    if x.dtype != torch.float32 or weight.dtype != torch.float32 or x.device.type != "cpu" or x.dim() < 2:
        return False
    if not HAS_MKL_PACK or pinned() or reproducible_asked() or torch.compiler.is_compiling():
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return False
    return x.numel() // max(x.shape[-1], 1) >= MIN_ROWS and not torch.is_autocast_enabled("cpu")


class PackedLinear(OneDnnLinear):
    """:class:`OneDnnLinear` whose MKL product, where the route takes MKL's (:func:`packs_mkl`), is MKL's packed
    ``sgemm`` (``cblas_sgemm_pack`` once, ``cblas_sgemm_compute`` per call: ``torch.ops.mkl._mkl_linear``, the op
    torch's own compiler emits for a frozen CPU linear): the weights are laid out for MKL's kernel once, not on
    every call (module docstring). MKL packs for one row count: the layer keeps one packing beside its weights
    (its bytes held as long as the layer: :func:`use_packed_mkl`'s caller chooses the layers), made for the first
    forward's rows or as :meth:`prepare` decides; products of other rows are MKL's plain ones."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not packs_mkl(x, self.weight):
            return f_linear(x, self.weight, self.bias)
        rows = x.numel() // x.shape[-1]
        if applies(x, self.weight) and self.__dict__.get("_mkl_over_onednn") != rows:  # the route's oneDNN
            return f_linear(x, self.weight, self.bias)
        packed, kept = self.packed(rows), self.__dict__.get("_mkl_packed")
        if packed is None:
            if kept is not None and kept[0][0] != rows:  # packed for another row count: MKL's plain product
                return f_linear(x, self.weight, self.bias)
            packed = self.pack(rows)  # the first forward's rows, or the same rows of weights loaded in place
        bias = None if self.bias is None else self.bias.detach()
        return torch.ops.mkl._mkl_linear(x.contiguous(), packed, self.weight.detach(), bias, rows)

    def prepare(self, rows: int) -> None:
        """Before a forward of ``rows`` fp32 CPU rows: packed for them now where :meth:`forward` will take the
        packed product and either nothing is packed yet or the last forward prepared had the same rows (packing
        costs about as much as a ViT-B photo gains from it: photos of sizes in turn keep one packing, and the
        others' products are MKL's plain ones)."""
        probe = self.weight.new_empty(1).expand(rows, self.in_features)  # no memory: only its shape is read
        if self.weight.device.type == "cpu" and packs_mkl(probe, self.weight) and (
                not applies(probe, self.weight) or self._over_onednn(rows)):
            if self.packed(rows) is None and ("_mkl_packed" not in self.__dict__ or self.__dict__.get("_mkl_seen")
                                              == rows):
                self.pack(rows)
        self.__dict__["_mkl_seen"] = rows

    def _over_onednn(self, rows: int) -> bool:
        """Where the route takes oneDNN's product for this layer's shape: whether MKL's packed product for ``rows``
        rows is taken instead (:func:`packed_over_onednn`), noted on the layer for its forward."""
        self.__dict__.pop("_mkl_over_onednn", None)
        if packed_over_onednn(self.in_features, self.out_features, rows):
            self.__dict__["_mkl_over_onednn"] = rows
        return self.__dict__.get("_mkl_over_onednn") == rows

    def packed(self, rows: int) -> torch.Tensor | None:
        """The packing for ``rows`` rows of the current weights, None where there is none."""
        packed = self.__dict__.get("_mkl_packed")
        return packed[1] if packed is not None and packed[0] == (rows, id(self.weight), self.weight._version) \
            else None

    def pack(self, rows: int) -> torch.Tensor:
        """The weights packed for products of ``rows`` rows, kept (the previous packing freed first). A caller that
        knows the rows of its next forward packs its layers first (:meth:`prepare`): packed among a forward's
        activations, the copies would leave the heap's freed pages scattered and resident (in RADSeg's worker,
        about twice the copies' own bytes more resident memory)."""
        self.__dict__.pop("_mkl_packed", None)
        key = (rows, id(self.weight), self.weight._version)
        self.__dict__["_mkl_packed"] = (key, torch.ops.mkl._mkl_reorder_linear_weight(self.weight.detach(), rows))
        return self.__dict__["_mkl_packed"][1]

    def __getstate__(self) -> dict:
        """Pickled and deep-copied without the packing (made again at the copy's first call)."""
        state = super().__getstate__()
        state.pop("_mkl_packed", None)
        state.pop("_mkl_seen", None)
        state.pop("_mkl_over_onednn", None)
        return state


_OVER_ONEDNN: dict[tuple[int, int, int, int], bool] = {}  # (in, out, rows, threads) -> packed taken, this process's


def packed_over_onednn(k: int, n: int, rows: int) -> bool:
    """Whether a layer of ``k`` inputs and ``n`` outputs packed for ``rows`` rows takes MKL's packed product where
    the route (``auto``) takes oneDNN's. The route weighs oneDNN against MKL's plain product at the rows' bucket
    (:func:`.onednn.takes_onednn`: 256 rows for a ViT-B's two 336-pixel windows, 898); the packed product is
    another contender, at the rows it was packed for. Measured once a machine as the route is (oneDNN's
    CPU-seconds over the packed product's, :func:`.onednn.time_pairs`, :func:`.onednn.decide`'s rule: oneDNN only
    where it wins beyond the pairs' spread), kept in the route's cache as ``KxN@rows/packed``. False where the
    route is forced (``VPLTOOL_CPU_LINEAR`` ``onednn``) or not ``auto``."""
    from ...runtime.numerics import cpu_linear_asked
    from . import onednn

    if cpu_linear_asked() != "auto":
        return False
    def ratios() -> list[float]:
        gen = torch.Generator().manual_seed(0)
        x, w, b = torch.randn(rows, k, generator=gen), torch.randn(n, k, generator=gen) * k ** -0.5, torch.zeros(n)
        packed = torch.ops.mkl._mkl_reorder_linear_weight(w, rows)
        return onednn.time_pairs((lambda: torch.ops.mkl._mkl_linear(x, packed, w, b, rows),
                                  lambda: onednn.linear(x, w, b)))

    key = (k, n, rows, torch.get_num_threads())
    if key not in _OVER_ONEDNN:
        _OVER_ONEDNN[key] = not onednn.cached_verdict(f"{k}x{n}@{rows}/packed", ratios)
    return _OVER_ONEDNN[key]


def use_packed_mkl(*layers: nn.Module) -> int:
    """Each :class:`OneDnnLinear` or plain ``nn.Linear`` of ``layers`` (the modules themselves) made a
    :class:`PackedLinear`, in place (idempotent); returns how many (0 where this torch has no MKL packed op or in
    reproducible mode)."""
    from ...runtime.numerics import reproducible_asked

    if not HAS_MKL_PACK or reproducible_asked():
        return 0
    n = 0
    for m in layers:
        if type(m) in (nn.Linear, OneDnnLinear, PackedLinear):
            m.__class__ = PackedLinear
            n += 1
    return n


__all__ = ["HAS_MKL_PACK", "PackedLinear", "packed_over_onednn", "packs_mkl", "use_packed_mkl"]
