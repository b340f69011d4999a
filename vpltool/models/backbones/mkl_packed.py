"""MKL's packed product for fp32 linear layers on the CPU: the weights laid out for MKL's kernel once
(``cblas_sgemm_pack``), each call only ``cblas_sgemm_compute`` (``torch.ops.mkl._mkl_linear``, the op torch's own
compiler emits for a frozen CPU linear), where :mod:`.onednn`'s route takes MKL's product, and where it takes oneDNN's
but a layer packed for its rows ran faster packed (:func:`packed_over_onednn`, measured once a machine). Where the
route keeps oneDNN's, oneDNN's own packing (``torch.ops.mkldnn._reorder_linear_weight``, as torch's compiler packs a
frozen layer for it) is the contender instead (:func:`onednn_packing`): the same sums (equal bits on a Zen 4), measured
inside the model's own forwards, where alone a product's timing misjudged it. A layer that holds oneDNN's packing only
(:class:`OneDnnPackedLinear`) weighs it against MKL's plain product where the route keeps MKL's (the route times
oneDNN's plain call, which lays its weights out at every call), measured once a machine before the shape's first
product, at the route's own margin (:func:`onednn_packed_over_mkl`).

``F.linear``'s ``sgemm`` packs the weights into its kernel's layout on every call; packed once, a ViT-B's products
of ~900 rows ran faster on an Intel Xeon (Emerald Rapids, no AMX: ``bench/bench_radseg.py`` records both rates,
``linear``'s ``mkl_gflops`` and ``mkl_packed_gflops``), with the same sums in the same order (equal bits there:
``tests/test_mkl_packed.py`` asks them within float rounding). The packed
copy is held beside the weights (as many bytes), and MKL packs for one row count: a caller chooses which layers
(:func:`use_packed_mkl`) and, where it knows the rows of its next forward, packs them first
(:meth:`PackedLinear.prepare`); oneDNN's packing serves products of any rows (the rows only hint its layout: the
plain call's outputs at other rows, ``tests/test_mkl_packed.py``). A layer whose weights a file backs (a
memory-mapped model: Talk2DINO's DINO from its safetensors file) hands the file's pages back once its packing serves
its calls (:func:`.io.pages.page_out`: read again from the file if a product asks them), so the packing takes their
place rather than adding to them.
Reproducible mode, :func:`.onednn.references_library`, gradients, bf16, autocast and compiled graphs keep
:func:`.onednn.f_linear`.
"""

from __future__ import annotations

import re
import time

import torch
import torch.nn.functional as F
from torch import nn

from . import onednn
from .onednn import HAS_OP, MIN_ROWS, PAIRS, OneDnnLinear, applies, cached_verdict, f_linear, pinned

HAS_MKL_PACK = bool(torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear"))
HAS_ONEDNN_PACK = bool(HAS_OP and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))
# oneDNN's packing is taken where packed calls took at most this share of the plain calls' CPU-seconds at the median
# and less in every pair: one library's same sums either way (no reference's bits at stake, as with MKL against
# oneDNN, onednn.CLEAR_WIN), so the margin is the pairs' spread. Inside RADSeg's forwards on a Zen 4 the packed
# calls took 0.94-0.96 of the plain ones' time (the contests' medians, bench/results/radseg_amd_zen_4_onednn_packed
# .json), while timed alone, or in a chain of a ViT-B's products, they were the slower (the plain call lays its
# weights out at every call; what that costs depends on what ran before it)
ONEDNN_PACK_WIN = 0.98
CONTEST_CALLS = 12  # a contest pair: this many calls of a shape each side (a ViT-B forward's), alternated call by call
CONTEST_WARM = 1  # calls a side left untimed first (oneDNN makes its kernel for the packed layout at its first call)


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
    every call (module docstring); where the route takes oneDNN's, oneDNN's own packing if :func:`onednn_packing`
    takes it. Each packs for one row count: the layer keeps one packing beside its weights (its bytes held as long
    as the layer: :func:`use_packed_mkl`'s caller chooses the layers), made for the first forward's rows or as
    :meth:`prepare` decides; products of other rows are the plain ones (oneDNN's packing serves them all).
    :class:`OneDnnPackedLinear` never takes MKL's packing."""

    mkl_packing = True  # MKL's packing where the route takes MKL's product (or it beats oneDNN's at the rows)

    def forward(self, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
        """``[..., K]`` -> ``[..., N]``; ``gelu``: its exact GELU (:func:`linear_gelu`)."""
        if not packs_mkl(x, self.weight):
            return gelu_after(f_linear(x, self.weight, self.bias), gelu)
        rows = x.numel() // x.shape[-1]
        if applies(x, self.weight) and self.__dict__.get("_mkl_over_onednn") != rows:  # the route's oneDNN
            return self._onednn(x, rows, "gelu" if gelu else "none")
        if not self.mkl_packing:  # the route keeps MKL's: oneDNN's packing where it beat MKL's plain product
            if self._over_mkl(rows):
                packed = self.packed(rows, "onednn")
                packed = self.pack(rows, "onednn", over_mkl=True) if packed is None else packed
                return onednn.linear(x, packed, self.bias, "gelu" if gelu else "none")
            return gelu_after(f_linear(x, self.weight, self.bias), gelu)
        packed, kept = self.packed(rows), self.__dict__.get("_packing")
        if packed is None:
            if kept is not None and kept[0][0] != rows:  # packed for another row count: MKL's plain product
                return gelu_after(f_linear(x, self.weight, self.bias), gelu)
            packed = self.pack(rows)  # the first forward's rows, or the same rows of weights loaded in place
        bias = None if self.bias is None else self.bias.detach()
        return gelu_after(torch.ops.mkl._mkl_linear(x.contiguous(), packed, self.weight.detach(), bias, rows), gelu)

    def _onednn(self, x: torch.Tensor, rows: int, post: str = "none") -> torch.Tensor:
        """The route's oneDNN product (``post`` as :func:`.onednn.linear`'s): with the weights in oneDNN's packing
        where :func:`onednn_packing` takes it (one packing, made for the first rows that ask it, serves every row
        count; none where MKL's, made for other rows, is held), both ways in turn while its contest is open (each
        call timed for it), the plain call where it is refused."""
        taken = onednn_packing(self.in_features, self.out_features, rows)
        kept, packed = self.__dict__.get("_packing"), self.packed(rows, "onednn")
        if taken is False or (packed is None and kept is not None and kept[0][3] == "mkl" and kept[0][0] != rows):
            if taken is False and packed is not None and kept[0][0] == rows:
                self.__dict__.pop("_packing")  # refused at the rows it was made for (kept where others took it)
            return onednn.linear(x, self.weight, self.bias, post)
        if packed is None:
            packed = self.pack(rows, "onednn")
        if taken:
            out = onednn.linear(x, packed, self.bias, post)
            self._hand_back()  # a packing made while its contest was open: handed back at its first call after
            return out
        side = _CONTESTS.setdefault(_key(self.in_features, self.out_features, rows), _contest())["next"]
        start = time.process_time()
        out = onednn.linear(x, packed if side else self.weight, self.bias, post)
        contest_call(self.in_features, self.out_features, rows, side, time.process_time() - start)
        return out

    def prepare(self, rows: int) -> None:
        """Before a forward of ``rows`` fp32 CPU rows: packed for them now where :meth:`forward` will take a packed
        product (MKL's, or oneDNN's where the route takes oneDNN's and :func:`onednn_packing` does not refuse it)
        and either nothing is packed yet or the last forward prepared had the same rows (packing costs about as much
        as a ViT-B photo gains from it: photos of sizes in turn keep one packing, and the others' products are the
        plain ones, or oneDNN's packing, which serves any rows)."""
        probe = self.weight.new_empty(1).expand(rows, self.in_features)  # no memory: only its shape is read
        kind, over_mkl = None, False
        if self.weight.device.type == "cpu" and packs_mkl(probe, self.weight):
            if applies(probe, self.weight) and not (self.mkl_packing and self._over_onednn(rows)):
                kind = "onednn" if onednn_packing(self.in_features, self.out_features, rows) is not False else None
            elif self.mkl_packing:
                kind = "mkl"
            elif self._over_mkl(rows):  # the route keeps MKL's, oneDNN's packing beat it (forward's rule)
                kind, over_mkl = "onednn", True
        if kind is not None and self.packed(rows, kind) is None and (
                "_packing" not in self.__dict__ or self.__dict__.get("_mkl_seen") == rows):
            self.pack(rows, kind, over_mkl)
        self.__dict__["_mkl_seen"] = rows

    def _over_mkl(self, rows: int) -> bool:
        """Where the route keeps MKL's plain product for this oneDNN-packing layer's shape: whether oneDNN's packing
        for ``rows`` rows is taken instead (:func:`onednn_packed_over_mkl`)."""
        return not self.mkl_packing and self.weight.is_contiguous() and onednn_packed_over_mkl(
            self.in_features, self.out_features, rows)

    def _over_onednn(self, rows: int) -> bool:
        """Where the route takes oneDNN's product for this layer's shape: whether MKL's packed product for ``rows``
        rows is taken instead (:func:`packed_over_onednn`), noted on the layer for its forward."""
        self.__dict__.pop("_mkl_over_onednn", None)
        if packed_over_onednn(self.in_features, self.out_features, rows):
            self.__dict__["_mkl_over_onednn"] = rows
        return self.__dict__.get("_mkl_over_onednn") == rows

    def packed(self, rows: int, kind: str = "mkl") -> torch.Tensor | None:
        """The ``kind`` packing (``"mkl"`` or ``"onednn"``) for ``rows`` rows of the current weights (oneDNN's: for
        any rows), None where there is none."""
        packed = self.__dict__.get("_packing")
        if packed is None or packed[0][1:] != (id(self.weight), self.weight._version, kind):
            return None
        return packed[1] if packed[0][0] == rows or kind == "onednn" else None

    def _hand_back(self) -> None:
        """Once a packing serves this layer's calls: the pages of a file that backs its weights handed back to it
        (module docstring; nothing where none does), once a packing."""
        from ...io.pages import page_out_tensors

        kept = self.__dict__["_packing"][0]
        if self.__dict__.get("_handed_back") != kept:
            self.__dict__["_handed_back"] = kept
            page_out_tensors([self.weight.detach()])

    def pack(self, rows: int, kind: str = "mkl", over_mkl: bool = False) -> torch.Tensor:
        """The weights packed for products of ``rows`` rows by MKL (``kind`` ``"mkl"``) or oneDNN (``"onednn"``),
        kept (the previous packing freed first). A caller that knows the rows of its next forward packs its layers
        first (:meth:`prepare`): packed among a forward's activations, the copies would leave the heap's freed pages
        scattered and resident (in RADSeg's worker, about twice the copies' own bytes more resident memory).
        ``over_mkl``: a oneDNN packing taken where the route keeps MKL's (:meth:`_over_mkl`), serving from now on."""
        self.__dict__.pop("_packing", None)
        weight = self.weight.detach()
        packed = (torch.ops.mkl._mkl_reorder_linear_weight(weight, rows) if kind == "mkl"
                  else torch.ops.mkldnn._reorder_linear_weight(weight, rows))
        self.__dict__["_packing"] = ((rows, id(self.weight), self.weight._version, kind), packed)
        if kind == "mkl" or over_mkl or onednn_packing(self.in_features, self.out_features, rows):
            self._hand_back()  # it serves the calls from now on: a file's pages given back now (MKL's always)
        return packed

    def __getstate__(self) -> dict:
        """Pickled and deep-copied without the packing (made again at the copy's first call)."""
        state = super().__getstate__()
        for name in ("_packing", "_mkl_seen", "_mkl_over_onednn", "_handed_back"):
            state.pop(name, None)
        return state


class OneDnnPackedLinear(PackedLinear):
    """:class:`PackedLinear` with oneDNN's packing only: MKL's plain product where the route takes MKL's (a model
    whose forwards' rows vary, as a DINO's batch in groups of images does: MKL packs for one row count)."""

    mkl_packing = False


def gelu_after(out: torch.Tensor, gelu: bool = True) -> torch.Tensor:
    """``out`` (a product's fresh output), its exact GELU where ``gelu``: in place where no gradient is recorded
    (``aten.gelu_``, ``nn.GELU``'s values), else ``F.gelu``."""
    if not gelu:
        return out
    return F.gelu(out) if torch.is_grad_enabled() and out.requires_grad else torch.ops.aten.gelu_(out)


def linear_gelu(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``F.gelu(layer(x))`` (the exact GELU, timm's ``Mlp`` after its ``fc1``) of a linear ``layer``: in the same
    oneDNN call where the layer's product is oneDNN's (its GELU post-op: aten's values, one pass fewer over
    the ``[..., N]`` output, 0.39 of a DINOv2 ViT-B forward's 14.3 CPU-seconds went to that GELU at 6 photos
    there: ``bench/results/dino_forward_amd_zen_4_onednn_packed.json``), else after it (:func:`gelu_after`)."""
    if isinstance(layer, PackedLinear):
        return layer(x, gelu=True)
    if isinstance(layer, OneDnnLinear) and applies(x, layer.weight, layer.bias):
        return onednn.linear(x, layer.weight, layer.bias, "gelu")
    return gelu_after(layer(x))


_OVER_ONEDNN: dict[tuple[int, int, int, int], bool] = {}  # (in, out, rows, threads) -> packed taken, this process's


def packed_over_onednn(k: int, n: int, rows: int) -> bool:
    """Whether a layer of ``k`` inputs and ``n`` outputs packed for ``rows`` rows takes MKL's packed product where
    the route (``auto``) takes oneDNN's. The route weighs oneDNN against MKL's plain product at the rows' bucket
    (:func:`.onednn.takes_onednn`: 256 rows for a ViT-B's two 336-pixel windows, 898); the packed product is
    another contender, at the rows it was packed for. Measured once a machine as the route is (the packed
    product's CPU-seconds over oneDNN's, :func:`.onednn.time_pairs`) and by the route's rule for leaving the library
    it chose: the packed product only where it wins beyond the pairs' spread (:func:`.onednn.decide`), oneDNN
    otherwise; kept in the route's cache as ``KxN@rows/mkl-packed``. (The older rule, kept as ``KxN@rows/packed``
    and no longer read, took the packed product unless oneDNN won beyond the spread: on a Zen 4 it gave two of
    RADSeg's four layers to the packed product where oneDNN's win fell inside the pairs' spread, while the bench's
    probes ran the packed product at 68-88 GFLOP/s and oneDNN's at 97-101.) False where the route is forced
    (``VPLTOOL_CPU_LINEAR`` ``onednn``) or not ``auto``."""
    from ...runtime.numerics import cpu_linear_asked

    if cpu_linear_asked() != "auto":
        return False
    def ratios() -> list[float]:
        x, w, b = onednn.calibration_inputs(k, n, rows)
        packed = torch.ops.mkl._mkl_reorder_linear_weight(w, rows)
        return onednn.time_pairs((lambda: onednn.linear(x, w, b),
                                  lambda: torch.ops.mkl._mkl_linear(x, packed, w, b, rows)))

    key = _key(k, n, rows)
    if key not in _OVER_ONEDNN:
        _OVER_ONEDNN[key] = bool(onednn.cached_verdict(verdict_name(k, n, rows, MKL_PACKED), ratios))
    _tell(MKL_PACKED, key, onednn_computes=not _OVER_ONEDNN[key])
    return _OVER_ONEDNN[key]


# the verdicts that give a layer shape's products to the other library than the route's, by their names in the
# route's cache: a stage folder records each as its library (:func:`_tell`), as it records the route's own; and
# oneDNN's packing over its own plain call (one library's same sums: not recorded)
MKL_PACKED, PACKED_OVER_MKL, ONEDNN_PACKED = "mkl-packed", "onednn-packed-over-mkl", "onednn-packed"


def verdict_name(k: int, n: int, rows: int, kind: str) -> str:
    """A packing verdict's name in the route's cache and a folder's record: ``KxN@rows/kind``."""
    return f"{k}x{n}@{rows}/{kind}"


def _tell(kind: str, key: tuple[int, int, int, int], onednn_computes: bool) -> None:
    """The open stage folders told (:func:`.onednn.tell`) which library computes the products of ``key``'s layer
    shape and rows by the ``kind`` verdict: ``KxN@rows/kind``, oneDNN or not, so that a resume or another shard whose
    cache gives them to the other library is refused (:func:`library_now`), as for a route (oneDNN's packing against
    its plain call is one library's same sums: not recorded)."""
    onednn.tell((kind, *key), verdict_name(*key[:3], kind), onednn_computes)


def library_now(shape: str) -> bool | None:
    """For a verdict a stage folder recorded (``"KxN@rows/mkl-packed"`` or ``"KxN@rows/onednn-packed-over-mkl"``):
    whether oneDNN computes those products in this process, by this machine's verdict (measured now where there is
    none, before a model loads); None for a name of no such verdict."""
    found = re.fullmatch(rf"(\d+)x(\d+)@(\d+)/({MKL_PACKED}|{PACKED_OVER_MKL})", shape)
    if found is None:
        return None
    k, n, rows = (int(g) for g in found.groups()[:3])
    if found.group(4) == MKL_PACKED:
        return not packed_over_onednn(k, n, rows)
    return onednn_packed_over_mkl(k, n, rows)


_ONEDNN_PACKED: dict[tuple[int, int, int, int], bool] = {}  # (in, out, rows, threads) -> packing taken, this process's
_CONTESTS: dict[tuple[int, int, int, int], dict] = {}  # the open contests of oneDNN's packing (onednn_packing)


def _key(k: int, n: int, rows: int) -> tuple[int, int, int, int]:
    return k, n, rows, torch.get_num_threads()


def _contest() -> dict:
    return {"next": 0, "warm": 2 * CONTEST_WARM, "spent": [0.0, 0.0], "calls": [0, 0], "ratios": []}


def onednn_packing(k: int, n: int, rows: int) -> bool | None:
    """Whether a layer of ``k`` inputs and ``n`` outputs whose ``rows``-row product the route takes to oneDNN holds
    its weights in oneDNN's packing (``torch.ops.mkldnn._reorder_linear_weight``): this process's verdict, else this
    machine's (the route's cache, ``KxN@rows/onednn-packed``), else None while the contest runs in the model's own
    forwards (:func:`contest_call`; alone, a product's timing misjudged it: :data:`ONEDNN_PACK_WIN`). False where
    this torch has no such packing or the route is not ``auto``."""
    from ...runtime.numerics import cpu_linear_asked

    if not HAS_ONEDNN_PACK or cpu_linear_asked() != "auto":
        return False
    key = _key(k, n, rows)
    if key not in _ONEDNN_PACKED:
        if key in _CONTESTS:  # open in this process: the cache was read once, when it opened (not at every call)
            return None
        verdict = cached_verdict(verdict_name(k, n, rows, ONEDNN_PACKED), lambda: None)
        if verdict is None:
            _CONTESTS[key] = _contest()
            return None
        _ONEDNN_PACKED[key] = verdict
    return _ONEDNN_PACKED[key]


def contest_call(k: int, n: int, rows: int, side: int, seconds: float) -> None:
    """One call of the open contest for a ``k``-by-``n`` product of ``rows`` rows: ``side`` 0 the plain oneDNN
    call, 1 the packed one, ``seconds`` its CPU-seconds. The sides alternate call by call; after
    :data:`CONTEST_WARM` untimed calls a side, every :data:`CONTEST_CALLS` calls a side make a pair (the packed
    calls' time over the plain ones'), and after :data:`.onednn.PAIRS` pairs the verdict is
    :func:`.onednn.decide`'s at :data:`ONEDNN_PACK_WIN`, kept."""
    key = _key(k, n, rows)
    contest = _CONTESTS.setdefault(key, _contest())
    if contest["warm"] > 0:
        contest["warm"] -= 1
        contest["next"] = 1 - side
        return
    contest["spent"][side] += seconds
    contest["calls"][side] += 1
    contest["next"] = 1 - side
    if min(contest["calls"]) < CONTEST_CALLS:
        return
    contest["ratios"].append(contest["spent"][1] / max(contest["spent"][0], 1e-9))
    contest["spent"], contest["calls"] = [0.0, 0.0], [0, 0]
    if len(contest["ratios"]) >= PAIRS:
        _CONTESTS.pop(key)
        ratios = contest["ratios"]
        _ONEDNN_PACKED[key] = bool(cached_verdict(verdict_name(k, n, rows, ONEDNN_PACKED), lambda: ratios,
                                                      ONEDNN_PACK_WIN))


_PACKED_OVER_MKL: dict[tuple[int, int, int, int], bool] = {}  # (in, out, rows, threads) -> taken, this process's


def onednn_packed_over_mkl(k: int, n: int, rows: int) -> bool:
    """Whether a :class:`OneDnnPackedLinear` of ``k`` inputs and ``n`` outputs whose shape the route (``auto``)
    keeps with MKL's plain product takes oneDNN's packing (made for ``rows`` rows) instead. The route timed
    oneDNN's plain call, which lays the weights out at every call; the packed call is the contender here. Measured
    once a machine as the route is, before the shape's first product (oneDNN's packed call's CPU-seconds over MKL's
    plain one, :func:`.onednn.time_pairs`), and taken by the route's rule for leaving MKL (:func:`.onednn.decide` at
    :data:`.onednn.CLEAR_WIN`: the references' library and its bits are at stake); kept in the route's cache as
    ``KxN@rows/onednn-packed-over-mkl``. Not a contest inside the forwards: its sides are two libraries, whose last
    bits differ, and the library is chosen before any output, so that a run, its resume and its ranks take one.
    False where this torch has no such packing or the route is not ``auto``."""
    from ...runtime.numerics import cpu_linear_asked

    if not (HAS_ONEDNN_PACK and onednn.available()) or cpu_linear_asked() != "auto":
        return False

    def ratios() -> list[float]:
        x, w, b = onednn.calibration_inputs(k, n, rows)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, rows)
        return onednn.time_pairs((lambda: F.linear(x, w, b), lambda: onednn.linear(x, packed, b)))

    key = _key(k, n, rows)
    if key not in _PACKED_OVER_MKL:
        _PACKED_OVER_MKL[key] = bool(cached_verdict(verdict_name(k, n, rows, PACKED_OVER_MKL), ratios))
    _tell(PACKED_OVER_MKL, key, onednn_computes=_PACKED_OVER_MKL[key])
    return _PACKED_OVER_MKL[key]


def use_packed_mkl(*layers: nn.Module, mkl: bool = True) -> int:
    """Each :class:`OneDnnLinear` or plain ``nn.Linear`` of ``layers`` (the modules themselves) made a
    :class:`PackedLinear` (``mkl`` False: a :class:`OneDnnPackedLinear`), in place (idempotent); returns how many
    (0 where this torch has no MKL packed op or in reproducible mode)."""
    from ...runtime.numerics import reproducible_asked

    if not HAS_MKL_PACK or reproducible_asked():
        return 0
    n = 0
    for m in layers:
        if type(m) in (nn.Linear, OneDnnLinear, PackedLinear, OneDnnPackedLinear):
            m.__class__ = PackedLinear if mkl else OneDnnPackedLinear
            n += 1
    return n


BLOCK_LAYERS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")  # a ViT block's linear layers, by their timm names


def block_linears(model) -> list[nn.Linear]:
    """The linear layers :data:`BLOCK_LAYERS` names in each of ``model``'s blocks (an attention that wraps another
    as its ``inner``, RADSeg's SCRA: the inner one's); a block without one (a gated MLP has no ``fc1``) adds none."""
    out = []
    for block in model.blocks:
        for name in BLOCK_LAYERS:
            owner, attr = name.split(".")
            module = getattr(block, owner, None)
            layer = getattr(getattr(module, "inner", module), attr, None)
            if isinstance(layer, nn.Linear):
                out.append(layer)
    return out


def pack_blocks(model, mkl: bool = True) -> list[nn.Module]:
    """``model``'s :func:`block_linears` made packed layers (:func:`use_packed_mkl`, ``mkl`` as there), for a
    caller to :meth:`~PackedLinear.prepare` before each forward; ``[]`` where none can be."""
    layers = block_linears(model)
    return layers if use_packed_mkl(*layers, mkl=mkl) else []


__all__ = ["BLOCK_LAYERS", "CONTEST_CALLS", "CONTEST_WARM", "HAS_MKL_PACK", "HAS_ONEDNN_PACK", "MKL_PACKED",
           "ONEDNN_PACK_WIN", "ONEDNN_PACKED", "PACKED_OVER_MKL", "OneDnnPackedLinear", "PackedLinear",
           "block_linears", "contest_call", "gelu_after", "library_now", "linear_gelu", "onednn_packed_over_mkl",
           "onednn_packing", "pack_blocks", "packed_over_onednn", "packs_mkl", "use_packed_mkl", "verdict_name"]
