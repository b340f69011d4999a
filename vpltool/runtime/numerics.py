"""The numeric mode of a run, fast or reproducible, and the record of it that every file a run writes carries.

* **fast** (the default, today's behaviour): each library runs the widest instructions the CPU has (AVX-512, AMX),
  torch a thread per core, and ``--precision auto`` is bf16 on CUDA and on CPUs with AMX. The same command gives other
  float bits on another CPU: fp32 features moved 2e-3 between AVX2 and AVX-512 kernels, CAMs 1e-4, and bf16 (AMX)
  features 0.066 from fp32; a decoder trained on them moves by points of mIoU.
* **reproducible** (``VPLTOOL_REPRODUCIBLE=1``, or ``true``, ``yes``, ``on``: another value than those and ``0``,
  ``false``, ``no``, ``off`` is refused, :func:`switch`; or ``vpltool --reproducible COMMAND``, which sets it for the
  command and the processes it starts): the same bits on every x86-64 CPU with AVX2 (Haswell and later, AMD Zen,
  AVX-512 and AMX machines alike), with the same package versions. It pins, before torch, numpy and OpenCV load
  (:func:`ask_reproducible`; the library reads each setting once, when it loads):

  - the dtype: ``--precision auto`` is fp32 (:func:`vpltool.device.resolve_precision`);
  - the instructions, each library capped at AVX2 by its documented setting (:data:`ISA_PINS`): ATen's kernels,
    oneDNN's convolutions and matrix products, MKL's BLAS (and its conditional numerical reproducibility, which
    also fixes its code path), the OpenBLAS of numpy and scipy, numpy's own SIMD loops (it has AVX-512 exp, log and
    sums), OpenCV's dispatched kernels. Pillow, pydensecrf and scikit-image's compiled code choose no instructions
    at run time (their wheels are built for one baseline);
  - the threads: one per library (:data:`THREAD_PINS`): a reduction split over threads adds in another order.

  A process that loaded torch, numpy or OpenCV before the mode was asked (a Python user who imported torch first)
  cannot pin them any more: :func:`run_numerics` says so in one warning line and records the run as fast, never as
  reproducible.

Every stage record (``_stage.json``, ``_run.json``) and every safetensors file a run writes carries
:func:`run_numerics`: ``dtype`` (the ``--precision`` the frozen blocks ran in; null where no ``--precision`` took
part), ``precision`` (as asked), ``mode``, and the instructions and threads (pinned, or, fast, those that ran, and
``linear``: the fp32 CPU products' library as asked, ``VPLTOOL_CPU_LINEAR``; a resume or another shard of a folder
made with another refuses, :func:`linear_mismatch`; under ``auto`` a stage folder records the library each product
shape took as well, :mod:`vpltool.io.folder_routes`). A
stage that reads a file made in another dtype or mode refuses (:func:`mismatch`, raised by
:func:`vpltool.io.check_numerics`).
"""

from __future__ import annotations

import os
import platform
import sys
import warnings
from collections.abc import Mapping
from typing import Any

MODE_ENV = "VPLTOOL_REPRODUCIBLE"  # "1": reproducible mode
# "1" / "0": --precision auto resolves as on a CPU with / without AMX, whatever this CPU has (a machine without AMX
# proves what one with it computes: the suite's numeric tests run both ways); reproducible mode ignores it
ASSUME_AMX_ENV = "VPLTOOL_ASSUME_AMX"
MODES = ("fast", "reproducible")
# which library multiplies the frozen towers' fp32 linear layers on the CPU (vpltool.models.backbones.onednn): "auto"
# (the default: each product measured once on this CPU and kept in the user's cache), "mkl" or "onednn"
CPU_LINEAR_ENV = "VPLTOOL_CPU_LINEAR"
CPU_LINEAR_ROUTES = ("auto", "mkl", "onednn")
# the library of reproducible mode's CPU matrix products (runtime.products: numpy's OpenBLAS at its Haswell kernels),
# recorded as a fast run's route is (linear_mismatch: a folder made by one never joined by the other)
REPRODUCIBLE_LINEAR = "openblas-haswell"
PINNED_ISA = "AVX2"  # the widest level every x86-64 CPU of the last decade has
THREADS = 1

# each library's documented cap (read once, when the library loads)
ISA_PINS = {
    "ATEN_CPU_CAPABILITY": "avx2",  # PyTorch's ATen kernels (torch.backends.cpu.get_cpu_capability() says AVX2)
    "DNNL_MAX_CPU_ISA": "AVX2",  # oneDNN, inside torch: convolutions (CLIP's patch embedding), some matmuls
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",  # MKL, inside torch: what torch's C++ multiplies itself (SDPA's fused kernel)
    # MKL's conditional numerical reproducibility: one code path for every CPU. Its ISA branches (AVX2, AVX512) are
    # Intel's: on an AMD CPU MKL takes its AUTO branch in their place (oneMKL's CNR guide), which moved one cell of
    # the README's reproducible table (CASS, 35.2 on an AMD EPYC, 35.0 on an Intel Xeon). COMPATIBLE (SSE2 without
    # rcpps/rsqrtps) is the branch every x86-64 CPU runs alike; its fp32 products run at a third of AVX2's, so
    # torch's matrix operators take numpy's OpenBLAS in this mode instead (runtime.products)
    "MKL_CBWR": "COMPATIBLE",
    "OPENBLAS_CORETYPE": "Haswell",  # the OpenBLAS of numpy and scipy (and the mode's torch products): AVX2 kernels
    # numpy's dispatched SIMD loops above AVX2 (numpy >= 2.4 names; a name this CPU lacks is skipped silently)
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
}
THREAD_PINS = {"OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS),
               "OPENBLAS_NUM_THREADS": str(THREADS)}
# OpenCV's AVX-512 features, each with the CPU flags it needs: OpenCV prints a line for every name it is asked to
# disable that the CPU lacks, so only those this CPU has are named (an AVX2 machine names none)
_OPENCV_AVX512 = (("AVX512F", ("avx512f",)), ("AVX512-COMMON", ("avx512f", "avx512cd")),
                  ("AVX512-SKX", ("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl")))
# the libraries that read a pin when they load: loaded before the pins, they run unpinned
PINNED_LIBRARIES = ("torch", "numpy", "cv2", "scipy", "sklearn")
_DTYPE_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
DTYPES = tuple(_DTYPE_NAMES.values())

_state: dict[str, Any] = {"late": None, "warned": False}


# the words an on/off environment variable takes, any case (what shells, CI systems and dotenv files write);
# unset or empty is off too
ON_WORDS = ("1", "true", "yes", "on")
OFF_WORDS = ("0", "false", "no", "off")
# what each switch does on and off, for the line that refuses another value
_SWITCHES = {MODE_ENV: ("for reproducible mode", "(or unset it) for fast mode"),
             ASSUME_AMX_ENV: ("to resolve --precision auto as on a CPU with AMX",
                              "as on a CPU without (unset it: as this CPU)")}


def switch(name: str) -> bool | None:
    """An on/off environment variable: True for :data:`ON_WORDS`, False for :data:`OFF_WORDS`, None when unset or
    empty; any other value (``2``, ``garbage``) is one line (:class:`~vpltool.errors.VplError`), never read as off."""
    raw = os.environ.get(name, "")
    word = raw.strip().lower()
    if not word:
        return None
    if word in ON_WORDS or word in OFF_WORDS:
        return word in ON_WORDS
    from ..errors import VplError

    on, off = _SWITCHES.get(name, ("to turn it on", "to turn it off"))
    raise VplError(f"{name}={raw!r}: not a switch; set it to 1 (or true, yes, on) {on}, or 0 (false, no, off) {off}")


def check_switches() -> None:
    """Every switch of vpltool's environment read once: one line for a value that is no switch."""
    for name in _SWITCHES:
        switch(name)
    cpu_linear_asked()  # VPLTOOL_CPU_LINEAR of no library, refused here too


def reproducible_asked() -> bool:
    """Whether this process was asked for reproducible mode (``VPLTOOL_REPRODUCIBLE=1``, ``true``, ``yes``, ``on``);
    another value that is no switch is one line (:func:`switch`)."""
    return bool(switch(MODE_ENV))


def reproducible_in_effect() -> bool:
    """Whether this process runs reproducible mode as asked: asked, and every library that loaded took its pins
    (:func:`_not_pinned` finds nothing)."""
    return reproducible_asked() and not _not_pinned()


def pin_products() -> bool:
    """Reproducible mode's matrix products (:mod:`.products`: torch's ``mm``, ``addmm``, ``bmm``, ``baddbmm`` through
    numpy's OpenBLAS, pinned to its Haswell kernels) installed in this process where they apply: an x86 CPU (the
    mode's promise, and the core ``OPENBLAS_CORETYPE`` names) and a numpy built on OpenBLAS (the wheels'
    ``scipy-openblas``; a numpy on MKL or Accelerate keeps torch's own products, on MKL's pinned branch); whether they
    are installed. Its callers call it where :func:`reproducible_in_effect` alone; loads torch."""
    from . import products

    if not products.pinned() and x86() and _numpy_on_openblas():
        products.pin()
    return products.pinned()


def _numpy_on_openblas() -> bool:
    import numpy as np

    try:
        blas = np.__config__.CONFIG["Build Dependencies"]["blas"]["name"]
    except (AttributeError, KeyError, TypeError):  # a numpy without its build record
        return False
    return "openblas" in str(blas).lower()


def cpu_linear_asked() -> str:
    """The library asked for the frozen towers' fp32 linear layers on the CPU (``VPLTOOL_CPU_LINEAR``): ``auto``
    (unset or empty), ``mkl`` or ``onednn``; one line for another value. Reproducible mode takes MKL's whatever this
    says (:mod:`vpltool.models.backbones.onednn`)."""
    raw = os.environ.get(CPU_LINEAR_ENV, "")
    value = raw.strip().lower() or "auto"
    if value not in CPU_LINEAR_ROUTES:
        from ..errors import VplError

        raise VplError(f"{CPU_LINEAR_ENV}={raw!r}: choose auto (each product measured once on this CPU), mkl or "
                       f"onednn, or unset it")
    return value


def cpu_flags() -> set[str]:
    """The CPU's feature flags (``/proc/cpuinfo``); empty where there is none (macOS, Windows)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")


def pinned_environment(flags: set[str] | None = None) -> dict[str, str]:
    """The environment reproducible mode sets: the threads everywhere, the instruction caps on x86 (OpenCV's for the
    AVX-512 features of ``flags``, this CPU's by default)."""
    pins = {MODE_ENV: "1", **THREAD_PINS}
    if x86():
        flags = cpu_flags() if flags is None else flags
        opencv = [name for name, needs in _OPENCV_AVX512 if all(f in flags for f in needs)]
        pins.update(ISA_PINS)
        if opencv:
            pins["OPENCV_CPU_DISABLE"] = ",".join(opencv)
    return pins


def ask_reproducible() -> None:
    """Turn reproducible mode on for this process and the ones it starts: set :func:`pinned_environment`, noting
    the libraries that loaded before it (they cannot be pinned any more; :func:`run_numerics` says so). Called by
    ``import vpltool`` when ``VPLTOOL_REPRODUCIBLE=1`` and by ``vpltool --reproducible``; idempotent."""
    if _state["late"] is None:
        _state["late"] = [name for name in PINNED_LIBRARIES if name in sys.modules]
    os.environ.update(pinned_environment())


def dtype_name(dtype: Any) -> str | None:
    """``torch.float32`` -> ``"fp32"`` (bf16, fp16); None for None."""
    if dtype is None:
        return None
    return _DTYPE_NAMES.get(str(dtype).removeprefix("torch."), str(dtype))


# oneMKL's named CNR branches (mkl_cbwr_get's values)
_MKL_BRANCHES = {1: "OFF", 2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 6: "SSSE3", 7: "SSE4_1", 8: "SSE4_2", 9: "AVX",
                 10: "AVX2", 11: "AVX512_MIC", 12: "AVX512", 13: "AVX512_MIC_E1", 14: "AVX512_E1"}


def mkl_branch() -> str | None:
    """The code branch torch's MKL runs (``COMPATIBLE``, ``AVX2``, ``AUTO``, ...), read from MKL itself; None where
    torch has no MKL with that service (another BLAS, another platform)."""
    import ctypes

    import torch

    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        get = lib.mkl_serv_cbwr_get
    except (OSError, AttributeError):
        return None
    get.restype, get.argtypes = ctypes.c_int, [ctypes.c_int]
    value = get(1)  # MKL_CBWR_BRANCH
    return _MKL_BRANCHES.get(value, str(value))


def _not_pinned() -> list[str]:
    """Why this process does not run as reproducible mode pins it (empty: it does), from what each library reports
    where it can (ATen's capability, torch's threads, numpy's and OpenCV's features) and from the load order."""
    if _state["late"] is None:  # asked through the environment after vpltool was imported: pin now, noting the late
        ask_reproducible()
    why = [f"{', '.join(_state['late'])} loaded before the mode was asked"] if _state["late"] else []
    if x86() and "torch" in sys.modules:
        import torch

        if "avx2" in cpu_flags() and torch.backends.cpu.get_cpu_capability() != PINNED_ISA:
            why.append(f"ATen runs {torch.backends.cpu.get_cpu_capability()}")
        if torch.get_num_threads() != THREADS:
            why.append(f"torch runs {torch.get_num_threads()} threads")
        branch = mkl_branch()
        if branch is not None and branch != ISA_PINS["MKL_CBWR"]:
            why.append(f"MKL runs its {branch} branch")
    if "numpy" in sys.modules and x86():
        try:
            from numpy._core._multiarray_umath import __cpu_features__ as have
        except ImportError:  # numpy < 2
            have = {}
        on = [name for name in ISA_PINS["NPY_DISABLE_CPU_FEATURES"].split() if have.get(name)]
        if on:
            why.append(f"numpy dispatches {', '.join(on)}")
    if "cv2" in sys.modules and "AVX512F" in pinned_environment().get("OPENCV_CPU_DISABLE", ""):
        if sys.modules["cv2"].checkHardwareSupport(13):  # cv::CPU_AVX_512F
            why.append("OpenCV dispatches AVX512F")
    return sorted(set(why), key=why.index)


def run_numerics(dtype: Any = None, precision: str | None = None, device: Any = None) -> dict[str, Any]:
    """What a run records of its arithmetic: ``dtype`` (``fp32``, ``bf16``, ``fp16``, a torch dtype or its name; None
    where no ``--precision`` took part: a stage without one passes its input's, as crf the CAMs'), ``precision`` (as
    asked: ``auto``, ...), ``device`` (its type, ``cpu`` / ``cuda``, where one was given: what ``auto`` resolved on;
    not compared), ``mode`` and, reproducible, the pinned instructions and threads, else (fast) the
    instructions ATen ran, whether the CPU has AMX, and the threads.

    Reproducible mode asked but not in effect (a library loaded before it) is recorded as fast, with one warning
    line a process saying why."""
    record: dict[str, Any] = {"dtype": dtype_name(dtype)}
    if precision is not None:
        record["precision"] = precision
    if device is not None:
        record["device"] = getattr(device, "type", str(device))
    why = _not_pinned() if reproducible_asked() else []
    if reproducible_asked() and not why:
        # torch's CPU products through the pinned OpenBLAS from here on, where they apply (pin_products)
        linear = {"linear": REPRODUCIBLE_LINEAR} if "torch" in sys.modules and pin_products() else {}
        return {**record, "mode": "reproducible", "isa": PINNED_ISA if x86() else platform.machine(),
                "threads": THREADS, **linear}
    if why and not _state["warned"]:
        _state["warned"] = True
        from ..errors import VplWarning

        warnings.warn(VplWarning(f"{MODE_ENV}=1 asked, but {'; '.join(why)}: this run is in fast mode (its files say "
                                 "so); set it before Python starts, or import vpltool before torch and numpy"),
                      stacklevel=3)
    flags = cpu_flags()
    if "torch" in sys.modules:  # what ATen runs (a stage without torch, crf's CPU workers, records the CPU's widest)
        torch = sys.modules["torch"]
        isa, threads = torch.backends.cpu.get_cpu_capability(), torch.get_num_threads()
    else:
        isa = "AVX512" if "avx512f" in flags else "AVX2" if "avx2" in flags else platform.machine()
        threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or os.cpu_count() or 1
    if "torch" in sys.modules and record.get("device") != "cuda" and record["dtype"] in (None, "fp32"):
        record["linear"] = cpu_linear_asked()  # the fp32 CPU products' library: their last bits (linear_mismatch)
    return {**record, "mode": "fast", "isa": isa, "amx": "amx_bf16" in flags, "threads": threads}


def linear_mismatch(found: Mapping[str, Any] | None, own: Mapping[str, Any]) -> str | None:
    """Why a folder's items made with numerics ``found`` must not be joined by a run with ``own`` (a resume, another
    shard): their fp32 CPU products took another library (``linear``: ``VPLTOOL_CPU_LINEAR`` as asked, recorded by
    :func:`run_numerics` in fast mode), whose last bits differ, so one folder would mix two routes' items. None where
    either has no route recorded (CUDA, a file made before it was recorded) and where either is reproducible, whose
    one library (:data:`REPRODUCIBLE_LINEAR`) is recorded for the reader: :func:`mismatch` tells the modes apart."""
    made = found.get("linear") if isinstance(found, Mapping) else None
    runs = own.get("linear")
    if made is None or runs is None or made == runs or "reproducible" in (found.get("mode"), own.get("mode")):
        return None
    return (f"with {CPU_LINEAR_ENV}={made}, this run with {runs} (the library of the fp32 CPU products, whose last "
            f"bits differ); set {CPU_LINEAR_ENV}={made}")


def mismatch(found: Mapping[str, Any] | None, own: Mapping[str, Any]) -> str | None:
    """Why a file made with numerics ``found`` must not feed a run with ``own``: ``dtype``, ``mode``, ``both`` (one
    message names every difference: a fast run on an AMX CPU differs from a reproducible file in both), None: it may.

    The dtypes are compared where both have one (a file whose making took no ``--precision``, such as text
    prototypes, fp32 by design, goes with every dtype), the modes always. A file without a record (made by a vpltool
    before numerics were recorded) has nothing to compare and is read as before."""
    if not isinstance(found, Mapping):
        return None
    made, runs = found.get("dtype"), own.get("dtype")
    dtype = made is not None and runs is not None and made != runs
    mode = found.get("mode") in MODES and found.get("mode") != own.get("mode")
    return "both" if dtype and mode else "dtype" if dtype else "mode" if mode else None


def describe(numerics: Mapping[str, Any], what: str = "both") -> str:
    """How a file was made, for messages: ``what`` = ``dtype`` -> ``at bf16 (auto precision on a CPU with AMX)``,
    ``mode`` -> ``in fast mode``, ``both`` -> the two, the dtype where there is one."""
    dtype, asked = numerics.get("dtype"), numerics.get("precision")
    how = ""
    if dtype is not None and asked == "auto":
        where = "on CUDA" if numerics.get("device") == "cuda" else "on a CPU with AMX"
        how = f" (auto precision {where})" if dtype == "bf16" and numerics.get("mode") == "fast" \
            else " (auto precision)"
    made = f"at {dtype}{how}" if dtype is not None else ""
    mode = f"in {numerics.get('mode', 'fast')} mode"
    if what == "dtype":
        return made
    return mode if what == "mode" or not made else f"{made}, {mode}"


__all__ = ["ON_WORDS", "OFF_WORDS", "switch", "check_switches", "ASSUME_AMX_ENV", "CPU_LINEAR_ENV",
           "CPU_LINEAR_ROUTES", "DTYPES", "ISA_PINS", "MODES", "MODE_ENV", "PINNED_ISA", "THREADS", "THREAD_PINS",
           "REPRODUCIBLE_LINEAR", "ask_reproducible", "cpu_flags", "cpu_linear_asked", "describe", "dtype_name",
           "linear_mismatch", "mismatch", "pin_products", "pinned_environment", "reproducible_asked",
           "reproducible_in_effect", "run_numerics"]
