"""fp32 linear layers through oneDNN's or MKL's matrix product on the CPU, whichever this CPU runs faster, for a
frozen model's inference.

torch's fp32 ``F.linear`` on the CPU calls MKL's sgemm; the same product through oneDNN (also inside torch:
``torch.ops.mkldnn._linear_pointwise``, the op torch's own compiler emits for a CPU linear) is the other library. Which
one is faster is the CPU's and the libraries' affair, not this project's: on one 2-core AMD EPYC (AVX-512; its
generation not recorded) MKL ran a ViT-B's layers at half oneDNN's rate, while on an Intel Xeon with AMX (Emerald
Rapids) MKL was as fast or faster at every size (``bench/bench_cpu_linear.py``, ``bench/results/cpu_linear*.json``).
Both add fp32 products in fp32 (oneDNN's ``brg_matmul:avx512_core``, its default ``strict`` fpmath: no bf16 inside, on
AMX too); the results differ in the last bits, by the order of the sums.

**The route** (:func:`takes_onednn`): ``VPLTOOL_CPU_LINEAR`` = ``auto`` (the default) measures each product shape once
on this machine, the first time one is run: a product of ``K`` inputs, ``N`` outputs and ``R`` rows is timed at ``R``'s
bucket (:data:`BUCKETS`: the largest at most ``R``) through both libraries, :data:`PAIRS` alternating pairs of
CPU-seconds (:func:`calibrate`), and oneDNN is taken only where it wins beyond the pairs' spread (:func:`decide`): at
most :data:`CLEAR_WIN` of MKL's time at the median, and faster in every pair, the slowest included. Else MKL, torch's
default and the references' library: on a shared CPU, a verdict that one loaded pair could flip is no verdict. The
verdicts are kept in the user's cache
(``~/.cache/vpltool/cpu_linear.json``, :func:`vpltool.io.digests.cache_folder`), one table per machine: the CPU's model
and flags, torch's, MKL's and oneDNN's versions and the thread count (:func:`machine_key`); another machine or a library
upgrade measures again. ``mkl`` and ``onednn`` force either library; another value is refused in one line
(:func:`..runtime.numerics.cpu_linear_asked`). Products of fewer than :data:`MIN_ROWS` rows stay with MKL: oneDNN's call
costs more than such a product (1.1 to 2.1 times MKL's time at 1 and 2 rows on both CPUs above). A stage folder
open while ``auto`` decides records the route of each shape (:func:`route_watching`), and a resume or another shard
that would take the other one for a recorded shape (:func:`route_now`) is refused (:mod:`vpltool.io.folder_routes`).

:func:`use_onednn` turns a module's ``nn.Linear`` layers into :class:`OneDnnLinear` (the same class with another
``forward``: parameters, state dict and ``.to`` unchanged), whose fp32 CPU inference takes the route. Only where that
is the same computation: fp32 input and weights on the CPU, the weights contiguous, and no gradient asked of the
layer; anything else (bf16, CUDA, training, autocast, a graph torch.compile traces) goes through ``F.linear`` as
before. In reproducible mode (:mod:`..runtime.numerics`) MKL's product is always the one: that mode pins MKL's code
path (``MKL_CBWR``), which has no counterpart in oneDNN. Inside :func:`references_library` too: a method whose
arithmetic compares a product's result with a threshold (ProxyCLIP's proxy similarity masked below 0) runs that
product in MKL's, the references' library, so that the comparison sees the reference's bits on every CPU (on the
Intel Xeon above, oneDNN's last bits moved 2 of ProxyCLIP's 6.2 million similarities across its 0 and its logits by
1.2e-4; MKL's DINO tokens equal the reference's bit for bit).

Where a method calls a layer's weights itself (a packed ``in_proj_weight``, a slice of it), :func:`f_linear` is
``F.linear`` with the same route (:func:`.towers.self_attention`: ``nn.MultiheadAttention``'s inference through it,
where the module's own fast path runs MKL's product inside one kernel).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import re
import secrets
import statistics
import time
import warnings
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import VplWarning


def _has_op() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"))
    except (AttributeError, RuntimeError):
        return False


# probed once, at import: torch.compile's tracer cannot step into the probe (a graph break in every linear layer of a
# compiled frozen forward, train-decoder --compile), while it reads a module's constant and torch's flag
HAS_OP = _has_op()


def available() -> bool:
    """Whether this torch has oneDNN's linear op and it is enabled (``torch.backends.mkldnn``)."""
    return HAS_OP and torch.backends.mkldnn.enabled


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, post: str = "none") -> torch.Tensor:
    """``F.linear(x, weight, bias)`` through oneDNN: ``x`` ``[..., K]`` float32 on the CPU, ``weight`` ``[N, K]``
    contiguous float32 (or its oneDNN packing), ``bias`` ``[N]`` or None -> ``[..., N]`` float32; ``post``
    ``"gelu"``: the exact (erf) GELU of it, in the same call (oneDNN's post-op; aten's values)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, post, [], "none" if post == "gelu" else "")


# fewer rows than this stay with MKL's product (module docstring)
MIN_ROWS = 4
# a product of R rows is decided at the largest of these at most R (its calibration runs that many rows)
BUCKETS = (4, 16, 64, 256, 1024)
# oneDNN is taken where its CPU-seconds were at most this share of MKL's (the pairs' median); a smaller win is left to
# MKL, the references' library. 0.9 left three of a ViT-B's four layer shapes with MKL on a Zen 4, where a DINOv2 ViT-B
# forward all through oneDNN took 0.937 of MKL's CPU-seconds (bench/results/dino_forward_amd_zen_4.json)
CLEAR_WIN = 0.95
PAIRS = 7  # alternating pairs of a calibration: its spread (the slowest pair) is known, not one reading
SIDE_S = 0.004  # each side's timed stretch of a pair: at least this many CPU-seconds of calls (one call at most)
CACHE_NAME = "cpu_linear.json"
# 2: verdicts with margin (:func:`decide`); 3: the margin at CLEAR_WIN 0.95 (was 0.9); an older format's, measured again
_FORMAT = 3
MAX_MACHINES = 16  # tables kept in the cache file (the latest)

_DECIDED: dict[tuple[int, int, int, int], bool] = {}  # (in, out, bucket, threads) -> oneDNN taken, this process's
_PINNED = [0]  # depth of references_library() blocks
# the open stage folders' callbacks, told the route of each product shape auto takes (route_watching)
ROUTE_WATCHERS: list = []


def library_versions() -> dict[str, str]:
    """torch's, and the MKL and oneDNN builds inside it (``torch.__config__.show()``)."""
    shown = torch.__config__.show()
    mkl = re.search(r"Math Kernel Library Version ([^\n]*?) for", shown)
    dnn = re.search(r"MKL-DNN v([\d.]+)(?: \(Git Hash (\w+)\))?", shown)
    return {"torch": torch.__version__, "mkl": mkl.group(1) if mkl else "none",
            "onednn": (dnn.group(1) + (f"+{dnn.group(2)[:7]}" if dnn.group(2) else "")) if dnn else "none"}


def machine_key() -> tuple[str, dict]:
    """``(key, what it names)``: this machine's CPU (its model name and a digest of its feature flags), the library
    versions and torch's thread count; a calibration holds for that key alone."""
    from ...runtime.numerics import cpu_flags

    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        model = platform.processor() or platform.machine()
    flags = hashlib.sha256(" ".join(sorted(cpu_flags())).encode()).hexdigest()[:12]
    what = {"cpu": model, "cpu_flags_sha256": flags, "amx": "amx_bf16" in cpu_flags(), **library_versions(),
            "threads": torch.get_num_threads()}
    return json.dumps(what, sort_keys=True), what


def _cache_path():
    from ...io.digests import cache_folder

    folder = cache_folder()
    return None if folder is None else folder / CACHE_NAME


def _read_cache() -> dict:
    """The cache file's tables, ``{machine key: {"cpu", ..., "products": {"KxN@bucket": {"onednn": bool, ...}}}}``;
    ``{}`` where there is none or it is of an older format (measured again), and ``{}`` with one warning where it
    is no regular file (a FIFO would hang the read, a device never end) or not of that shape: the cache only saves
    a calibration, so it is measured again and :func:`_keep` writes it anew (atomically)."""
    from ...io.files import is_regular_file

    path = _cache_path()
    if path is None or not os.path.lexists(path):
        return {}
    if not is_regular_file(path):
        return _ignored(path, "not a regular file (a link to nothing, a pipe, a device or a folder)")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return _ignored(path, f"not readable JSON ({type(e).__name__})")
    machines = data.get("machines") if isinstance(data, dict) else None
    if isinstance(machines, dict) and data.get("format") != _FORMAT:
        return {}  # an older format's verdicts: measured again, silently (module docstring)
    if not isinstance(machines, dict) or not all(
            isinstance(t, dict) and isinstance(t.get("products"), dict)
            and all(isinstance(v, dict) and isinstance(v.get("onednn"), bool) for v in t["products"].values())
            for t in machines.values()):
        return _ignored(path, f"not the cache's shape ({{'format': {_FORMAT}, 'machines': {{machine: {{..., "
                              "'products': {shape: {'onednn': bool, ...}}}})")
    return machines


_WARNED: set[str] = set()  # cache files this process has warned of


def _ignored(path, why: str) -> dict:
    """``{}``, with one warning per process for ``path`` (a cache file that is ``why``)."""
    if str(path) not in _WARNED:
        _WARNED.add(str(path))
        warnings.warn(VplWarning(f"{path}: {why}; the CPU linear route's verdicts there are ignored and measured "
                                 "again (the file is written anew; delete it to silence this)"), stacklevel=4)
    return {}


def _keep(shape: str, verdict: dict) -> dict:
    """This machine's verdict for ``shape``: another process's kept first (the cache read again under its lock), else
    ``verdict``, added (written atomically); so two shards, ranks or stages that measured a shape at once take one
    library (each had kept its own, and a folder's resume was refused for a verdict nobody changed)."""
    path = _cache_path()
    if path is None:
        return verdict
    key, what = machine_key()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(f".{path.name}.lock"), "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # held until the file closes
            machines = _read_cache()
            entry = machines.pop(key, None) or {**what, "products": {}}
            if isinstance(first := entry["products"].get(shape), dict):
                return first
            entry["products"][shape] = verdict
            machines = dict([*machines.items(), (key, entry)][-MAX_MACHINES:])  # the latest last, the oldest dropped
            tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
            try:
                tmp.write_text(json.dumps({"format": _FORMAT, "machines": machines}, indent=1))
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
    except OSError:
        pass
    return verdict


def _bucket(rows: int) -> int:
    return max(b for b in BUCKETS if b <= rows)


def calibrate(k: int, n: int, rows: int) -> list[float]:
    """oneDNN's CPU-seconds over MKL's for an fp32 product ``[rows, k] x [k, n]`` plus a bias on this process's threads,
    one ratio per pair of :data:`PAIRS` alternating pairs, each side on random unit-scale inputs for at least
    :data:`SIDE_S` CPU-seconds (above the clock's resolution, below a stage's start-up). :func:`decide` reads them."""
    x, w, b = calibration_inputs(k, n, rows)
    return time_pairs((lambda: F.linear(x, w, b), lambda: linear(x, w, b)))


def calibration_inputs(k: int, n: int, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What every calibration of a ``k``-by-``n`` product of ``rows`` rows times, the route's and the packings'
    alike: a seeded random ``[rows, k]`` input, ``[n, k]`` weights of unit-scale outputs and a zero bias."""
    gen = torch.Generator().manual_seed(0)
    return torch.randn(rows, k, generator=gen), torch.randn(n, k, generator=gen) * k ** -0.5, torch.zeros(n)


def time_pairs(sides) -> list[float]:
    """:func:`calibrate`'s timing of two functions of no argument (MKL's side, oneDNN's): the second's CPU-seconds
    over the first's, one ratio per pair of :data:`PAIRS` alternating pairs."""
    with torch.no_grad():
        for run in sides:  # each library's first call of a shape (its kernel chosen, its buffers made)
            run()
        start = time.process_time()
        sides[0]()
        calls = max(1, int(SIDE_S / max(time.process_time() - start, 1e-6)))
        ratios = []
        for p in range(PAIRS):
            spent = [0.0, 0.0]
            for i in ((0, 1) if p % 2 == 0 else (1, 0)):
                start = time.process_time()
                for _ in range(calls):
                    sides[i]()
                spent[i] = time.process_time() - start
            ratios.append(spent[1] / max(spent[0], 1e-9))
    return ratios


def decide(ratios: list[float], win: float = CLEAR_WIN) -> dict:
    """The verdict of a calibration's pair ratios (oneDNN's time over MKL's, :func:`calibrate`, or a contender's over
    its rival's): oneDNN (the contender) only where it wins beyond their spread, at most ``win`` at the median and
    below 1 in every pair; MKL (the rival) otherwise. ``{"onednn", "ratio" (the median), "slowest", "pairs"}``."""
    median, slowest = statistics.median(ratios), max(ratios)
    return {"onednn": bool(median <= win and slowest < 1.0), "ratio": round(median, 3),
            "slowest": round(slowest, 3), "pairs": len(ratios)}


def takes_onednn(rows: int, k: int, n: int, measure: bool = True) -> bool:
    """Whether an fp32 CPU product of ``rows`` rows, ``k`` inputs and ``n`` outputs goes through oneDNN
    (:func:`linear`) rather than MKL's ``F.linear``, by the route (module docstring): reproducible mode and
    :func:`references_library` MKL; ``VPLTOOL_CPU_LINEAR=mkl`` / ``onednn`` as forced; ``auto`` this machine's
    calibration of the shape's bucket, measured now when there is none (``measure`` False: MKL's then)."""
    from ...runtime.numerics import cpu_linear_asked, reproducible_asked

    if rows < MIN_ROWS or _PINNED[0] or reproducible_asked():
        return False
    route = cpu_linear_asked()
    if route != "auto":
        return route == "onednn"
    key = (k, n, _bucket(rows), torch.get_num_threads())
    decided = _DECIDED.get(key)
    if decided is None:
        if not measure:
            return False
        decided = _DECIDED[key] = _verdict(k, n, key[2])
    if measure:  # (not in a trace: no file written there)
        tell(key, f"{k}x{n}@{key[2]}", decided)
    return decided


_TOLD: set[tuple] = set()  # the products the open folders were told of (route_watching), by their keys


def tell(told: tuple, shape: str, onednn: bool) -> None:
    """Each open stage folder told once (:func:`route_watching`; ``told``: the products' key in this process) that
    the products ``shape`` names take oneDNN (``onednn``) or MKL: the route's own (``"KxN@bucket"``), or a packing's
    verdict that hands them to the other library (:func:`.mkl_packed.library_now`)."""
    if ROUTE_WATCHERS and told not in _TOLD:
        _TOLD.add(told)
        for watcher in list(ROUTE_WATCHERS):
            watcher(shape, onednn)


@contextlib.contextmanager
def route_watching(on_route) -> Iterator[None]:
    """While a stage folder is open: ``on_route(shape, onednn)`` once for every product shape (``"KxN@bucket"``)
    whose route ``auto`` took (decided now or earlier in this process), as its first product runs, so that the
    folder records the route each product took (:mod:`vpltool.io.folder_routes`)."""
    ROUTE_WATCHERS.append(on_route)
    _TOLD.clear()
    try:
        yield
    finally:
        ROUTE_WATCHERS.remove(on_route)
        _TOLD.clear()


def route_now(shape: str) -> bool | None:
    """The route ``auto`` takes in this process for a product shape a record names (``"KxN@bucket"``) at this
    process's threads: as decided earlier in it, else this machine's cached verdict, else measured now (before a
    model loads: a few ms). None for a name of no such shape."""
    found = re.fullmatch(r"(\d+)x(\d+)@(\d+)", shape)
    if found is None or int(found.group(3)) not in BUCKETS:
        return None
    if not available():
        return False
    k, n, bucket = (int(g) for g in found.groups())
    key = (k, n, bucket, torch.get_num_threads())
    if key not in _DECIDED:
        _DECIDED[key] = _verdict(k, n, bucket)
    return _DECIDED[key]


def _verdict(k: int, n: int, bucket: int) -> bool:
    """The cache's verdict for this machine, else a calibration now (kept in the cache)."""
    return cached_verdict(f"{k}x{n}@{bucket}", lambda: calibrate(k, n, bucket))


def cached_verdict(shape: str, ratios: Callable[[], list[float] | None], win: float = CLEAR_WIN) -> bool | None:
    """Whether oneDNN (or another contender) is taken for ``shape`` (its name in the cache: ``"KxN@bucket"``, or
    another contest's, as :func:`.mkl_packed.packed_over_onednn`'s ``"KxN@rows/mkl-packed"``): this machine's cached
    verdict, else :func:`decide` at ``win`` of ``ratios()`` (the contender's time over its rival's,
    :func:`time_pairs`) measured now and kept (another process's where it kept one first, :func:`_keep`); None where
    ``ratios()`` gives None (a contest still open)."""
    kept = _read_cache().get(machine_key()[0], {}).get("products", {}).get(shape)
    if isinstance(kept, dict) and isinstance(kept.get("onednn"), bool):
        return kept["onednn"]
    if (measured := ratios()) is None:
        return None
    return _keep(shape, {**decide(measured, win), "measured": time.strftime("%Y-%m-%d %H:%M:%S")})["onednn"]


def kept_verdicts(threads: int = 1) -> dict:
    """This machine's table in the cache file at ``threads`` threads (what a bench's worker decided, read by its
    driver): ``{"cpu", ..., "products": {"KxN@bucket": {"onednn", "ratio", "slowest", "pairs", "measured"}}}``,
    or ``{}``."""
    own = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _read_cache().get(machine_key()[0], {})
    finally:
        torch.set_num_threads(own)


def verdicts() -> dict[str, bool]:
    """The route of every product shape this process has decided, ``{"KxN@bucket": oneDNN taken}`` (benches
    record it)."""
    return {f"{k}x{n}@{b}" + (f"/{t} threads" if t != 1 else ""): v for (k, n, b, t), v in sorted(_DECIDED.items())}


@contextlib.contextmanager
def references_library() -> Iterator[None]:
    """Inside the block, every product takes MKL's, torch's default and the references' library, whatever the
    route (module docstring): for products whose results a method compares with a threshold."""
    _PINNED[0] += 1
    try:
        yield
    finally:
        _PINNED[0] -= 1


def pinned() -> bool:
    """Whether a :func:`references_library` block is open (MKL's plain product, whatever the route)."""
    return _PINNED[0] > 0


def applies(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """Whether :func:`f_linear` takes oneDNN's product for ``x``, ``weight`` (and ``bias``): fp32 all, on the CPU, the
    weight contiguous, no gradient asked for, no autocast, and the route (:func:`takes_onednn`) says oneDNN for this
    shape (in a graph torch.compile traces, without measuring one)."""
    if x.dtype != torch.float32 or weight.dtype != torch.float32 or x.device.type != "cpu":
        return False
    if bias is not None and bias.dtype != torch.float32:
        return False
    if weight.device.type != "cpu" or not weight.is_contiguous() or x.dim() < 2 or weight.dim() != 2:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return False  # oneDNN's op has no backward
    if torch.is_autocast_enabled("cpu"):
        return False  # autocast would have run F.linear in its own dtype
    if not available():
        return False
    k = x.shape[-1]
    # inside a graph torch.compile traces, the route as the eager forward took it (a verdict measured, or forced),
    # so that a compiled run is the eager one bit for bit; a shape never measured takes MKL's (no timing in a trace)
    return takes_onednn(x.numel() // max(k, 1), k, weight.shape[0], measure=not torch.compiler.is_compiling())


def f_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``: ``[..., K]`` -> ``[..., N]``, through oneDNN (:func:`linear`) where
    :func:`applies`, else ``F.linear`` itself."""
    if applies(x, weight, bias):
        return linear(x, weight, bias)
    return F.linear(x, weight, bias)


class OneDnnLinear(nn.Linear):
    """``nn.Linear`` whose fp32 CPU inference goes through oneDNN (module docstring); made by :func:`use_onednn`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return f_linear(x, self.weight, self.bias)


class OneDnnOutProj(nn.modules.linear.NonDynamicallyQuantizableLinear):
    """``nn.MultiheadAttention``'s ``out_proj`` (its own class kept as the base) through :func:`f_linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return f_linear(x, self.weight, self.bias)


def use_onednn(*modules: nn.Module, out_proj: bool = False) -> int:
    """Every plain ``nn.Linear`` inside ``modules`` made an :class:`OneDnnLinear`, in place (idempotent); with
    ``out_proj`` also each ``nn.MultiheadAttention``'s ``out_proj`` an :class:`OneDnnOutProj` (a ``--dense``
    method calls it on its own); returns how many (0 in reproducible mode, or where this torch has no oneDNN).
    The classes are module-level: a converted model pickles (a worker process) and deep-copies as before."""
    from ...runtime.numerics import reproducible_asked

    if reproducible_asked() or not available():
        return 0
    kinds = {nn.Linear: OneDnnLinear}
    if out_proj:
        kinds[nn.modules.linear.NonDynamicallyQuantizableLinear] = OneDnnOutProj
    n = 0
    for module in modules:
        for m in module.modules():
            if type(m) in kinds:
                m.__class__ = kinds[type(m)]
                n += 1
    return n


__all__ = ["BUCKETS", "CLEAR_WIN", "MIN_ROWS", "available", "applies", "calibrate", "time_pairs", "decide",
           "cached_verdict", "f_linear", "library_versions", "linear", "machine_key", "OneDnnLinear", "OneDnnOutProj",
           "pinned", "references_library", "route_now", "route_watching", "kept_verdicts",
           "takes_onednn", "tell", "calibration_inputs", "use_onednn", "verdicts"]
