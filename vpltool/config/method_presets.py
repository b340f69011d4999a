"""One reference's per-benchmark presets as a row: :class:`MethodPresets` (the eight benchmarks' names and config
files with it). :mod:`vpltool.config.benchmarks` holds the older methods' rows; a spec row of
:data:`vpltool.config.dense.DENSE_SPECS` may carry its own (``presets``), so that a new method adds no line there.
Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BENCHMARK_NAMES = ("voc21", "context60", "coco-object", "voc20", "context59", "coco-stuff", "cityscapes", "ade20k")
CFG_FILES = {"voc21": "cfg_voc21.py", "context60": "cfg_context60.py", "coco-object": "cfg_coco_object.py",
             "voc20": "cfg_voc20.py", "context59": "cfg_context59.py", "coco-stuff": "cfg_coco_stuff164k.py",
             "cityscapes": "cfg_city_scapes.py", "ade20k": "cfg_ade20k.py"}


@dataclass(frozen=True)
class MethodPresets:
    """One reference: its repository (and commit when pinned), its segmentor's defaults, and per benchmark the
    values its config sets, each with ``file:line``."""

    repo: str
    defaults: dict  # SegmentConfig fields, "dense" the method
    defaults_source: str
    benchmarks: dict  # name -> {key: (value, "cfg_x.py:line")}
    extra: dict = field(default_factory=dict)  # name -> {knob: value}, not run by vpltool's dense segmentor
    # the bundled class files (SET of SET:BENCHMARK); None: the dataset's own names. Never written in a row: its
    # method's spec row's class_files, filled in by vpltool.config.benchmarks
    class_set: str | None = None
    # the config file of each benchmark its reference runs (name -> its path in the repository); empty: all eight,
    # each its configs/cfg_*.py (CFG_FILES). A reference with fewer configs (RADSeg's five) has presets for those only
    config_files: dict = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        """The benchmarks it has presets for, in :data:`BENCHMARK_NAMES`' order."""
        return tuple(b for b in BENCHMARK_NAMES if b in self.config_files) if self.config_files else BENCHMARK_NAMES

    def config_file(self, benchmark: str) -> str:
        """The path of ``benchmark``'s config in its repository (``configs/cfg_voc21.py``)."""
        return self.config_files.get(benchmark, f"configs/{CFG_FILES[benchmark]}")

    def settings(self, benchmark: str) -> dict:
        """The preset of ``benchmark``: SegmentConfig fields (``class_file`` included when bundled)."""
        out = dict(self.defaults)
        out.update({k: v for k, (v, _) in self.benchmarks.get(benchmark, {}).items()})
        if self.class_set is not None:
            out["class_file"] = f"{self.class_set}:{benchmark}"
        return out

    def sources(self, benchmark: str) -> dict:
        """``{key: "file:line"}`` of every value of :meth:`settings`."""
        out = {k: self.defaults_source for k in self.defaults}
        out.update({k: src for k, (_, src) in self.benchmarks.get(benchmark, {}).items()})
        if self.class_set is not None:
            out["class_file"] = f"configs/cls_*.txt ({self.config_file(benchmark).rsplit('/', 1)[-1]} name_path)"
        return out


__all__ = ["BENCHMARK_NAMES", "CFG_FILES", "MethodPresets"]
