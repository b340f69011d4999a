"""`vpltool doctor`: every weights file a method would load, found through the registry's own lookup, with no model
loaded: its path, SHA-256, size and whether it is there; for a file that is not, how to get it.

The methods are ``--dense`` names (every one when none is named) and ``--model NAME:FILE`` checkpoints of the
text-supervised families (``pgseg:FILE``). Each method's models come from its own lookup
(:func:`vpltool.models.dense.method.method_models`: its CLIP, proxy DINO, SAM, the SAM 3 of ``--region-masks sam3``,
its hooks' ``models``), each model's files from its family's (:func:`vpltool.models.registry.model_files`). A model
that names no local file (a tag of open_clip's or timm's hub cache) is asked of its family's ``check``, which reads
no weights into a model either.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import VplError

HUB = "the hub's cache"  # the path shown for a model read from open_clip's or timm's cache, not a named file


@dataclass(frozen=True)
class WeightsFile:
    """One weights file a method would load.

    Attributes:
        method: the method as the command line names it (``--dense sam3``, ``--model pgseg:FILE``).
        family: the registry's family that reads it (``sam3``, ``clip``, ...).
        option: the option that names the file (``--sam3-weights``).
        path: the file (:data:`HUB` for a cached hub model; None: no file was named).
        present: whether it is there (a hub model: whether its family's check finds it).
        size: its size in bytes; None when absent or a hub model.
        sha256: ``sha256:<hex>`` of its bytes; None when absent or a hub model.
        get: how to get it (its family's words), for an absent one.
    """

    method: str
    family: str
    option: str
    path: str | None
    present: bool
    size: int | None = None
    sha256: str | None = None
    get: str = ""

    def line(self) -> str:
        """The row `doctor` prints for it."""
        if not self.present:
            return f"{self.method}  {self.family}  {self.path or '(none given: ' + self.option + ')'}  absent"
        if self.sha256 is None:
            return f"{self.method}  {self.family}  {self.path}  present"
        return f"{self.method}  {self.family}  {self.path}  {self.sha256}  {self.size:,} bytes  present"

    def missing(self) -> str:
        """Its ``missing:`` line: what is absent and how to get it."""
        what = {None: f"(no file given to {self.option})", HUB: f"({HUB})"}.get(self.path, self.path)
        return f"missing: {self.method}: {self.family} weights {what}: {self.get}"


def doctor(dense: Sequence[str] | None = None, models: Sequence[str] = (), clip=None,
           **options: Any) -> list[WeightsFile]:
    """Every weights file of the ``dense`` methods (None and no ``models``: every method) and of each ``--model
    NAME:FILE`` in ``models``; ``clip`` the CLIP's :class:`~vpltool.models.ModelSpec` (None: the default);
    ``options`` the methods' options by field name (``sam3_weights``, ``proxy_weights``, ``sam_weights``, ...; each
    method takes those it reads). Loads no model; a method or family unknown is one line."""
    from ..config.checks import choice
    from ..config.dense import DENSE_CHOICES, DENSE_SPECS, SegmentConfig
    from ..models.dense.method import method_models
    from ..models.registry import model_family

    names = list(DENSE_SPECS) if dense is None and not models else list(dense or ())
    rows: list[WeightsFile] = []
    seen: dict[tuple[str, Any], list[WeightsFile]] = {}
    for name in names:
        choice("--dense", name, DENSE_CHOICES)  # one line naming the methods
        own = set(SegmentConfig.option_names(name))
        cfg = SegmentConfig.of(name, **{k: v for k, v in options.items() if k in own and v is not None})
        for need in method_models(cfg, clip):
            rows += _rows(f"--dense {name}", need.family, need.spec, need.option, seen)
    for value in models:
        family, spec = model_family(value)
        if family == "clip":
            raise VplError(f"--model {value}: give NAME:FILE of a text-supervised family (pgseg:FILE); a CLIP is "
                           "what --dense methods read (pass --dense)")
        rows += _rows(f"--model {value}", family, spec, "--model", seen)
    return rows


def _rows(method: str, name: str, spec: Any, option: str, seen: dict) -> list[WeightsFile]:
    """The files of one model, through the registry's lookup (each model looked up once per call)."""
    from dataclasses import replace

    key = (name, spec)
    if key not in seen:
        seen[key] = _lookup(name, spec, option)
    return [replace(row, method=method) for row in seen[key]]


def _lookup(name: str, spec: Any, option: str) -> list[WeightsFile]:
    from ..models.registry import family

    fam = family(name)
    get = fam.get or fam.fix
    if spec is None:
        return [WeightsFile("", name, option, None, False, get=get)]
    try:
        return _found(name, fam, spec, option, get)
    except OSError as e:  # a path the system cannot look up (a name too long, a loop of links)
        where = str(e.filename or _named_path(spec) or spec)
        return [WeightsFile("", name, option, where, False, get=f"cannot be looked up ({e.strerror}); {get}")]


def _found(name: str, fam: Any, spec: Any, option: str, get: str) -> list[WeightsFile]:
    from ..models.registry import check_model, model_files

    files = model_files(fam, spec)
    if files:
        return [_file("", name, option, p, get) for p in files]
    named = _named_path(spec)
    if named is not None:
        return [WeightsFile("", name, option, str(named), False, get=get)]
    if _random(spec):
        return []  # random weights (tests): no file
    try:  # a hub model: its family's check finds it in the cache (or says where it is not)
        check_model(name, spec)
    except VplError as e:
        return [WeightsFile("", name, option, HUB, False, get=str(e))]
    return [WeightsFile("", name, option, HUB, True)]


def _file(method: str, family: str, option: str, path: Path, get: str) -> WeightsFile:
    from ..io import sha256_file

    if not path.is_file():
        return WeightsFile(method, family, option, str(path), False, get=get)
    return WeightsFile(method, family, option, str(path), True, os.stat(path).st_size, sha256_file(path))


def _random(spec: Any) -> bool:
    return any(getattr(spec, f, None) == "none" for f in ("weights", "pretrained"))


def _named_path(spec: Any) -> Path | None:
    """The file or folder ``spec`` names when its family found no file there (a missing path), else None (a hub
    tag, random weights)."""
    if isinstance(spec, (str, os.PathLike)):
        return Path(spec)
    folder = getattr(spec, "folder", None)
    if isinstance(folder, Path):
        return folder
    weights = getattr(spec, "weights", None)  # the SAM, SAM 3 and DINO specs: a path, or hub / none
    if isinstance(weights, str) and weights not in ("hub", "none", ""):
        return Path(weights).expanduser()
    pretrained = getattr(spec, "pretrained", None)  # a CLIP's: open_clip's tag, or a file
    if isinstance(pretrained, str) and (os.sep in pretrained or Path(pretrained).suffix):
        return Path(pretrained).expanduser()
    return None


def missing_files(rows: Iterable[WeightsFile]) -> list[WeightsFile]:
    """The absent ones, each once (a file several methods read is one line; a hub model is one by its family's
    words, which name it)."""
    out: dict[tuple, WeightsFile] = {}
    for row in rows:
        if not row.present:
            out.setdefault((row.family, row.path, row.option if row.path is None else "", row.get), row)
    return list(out.values())


__all__ = ["HUB", "WeightsFile", "doctor", "missing_files"]
