"""A stage folder's record of the library each fp32 CPU product took under ``VPLTOOL_CPU_LINEAR=auto``: what
``_run.json`` and ``_stage.json`` keep as ``linear_routes``, compared with the run a shard or a resume continues.

``auto`` decides each product shape once per machine (:mod:`vpltool.models.backbones.onednn`), from the verdicts in
the user's cache (``cpu_linear.json``) or measured; two processes of one folder (``--shard 0/2`` and ``1/2``, a
resume) may therefore take other libraries for the same products when the cache changed between them (edited, deleted
and measured again, another machine's), and their items differ in their last bits. A record of ``auto`` alone cannot
tell (the numerics' ``linear``, :func:`vpltool.runtime.numerics.linear_mismatch`, compares the route asked): so the
folder records the route each shape took, ``{"KxN@bucket": "onednn" | "mkl"}``, as its first product runs, and a run
that continues the folder is refused, before any model loads, where it would take another for a recorded shape. So
too the packing verdicts that hand a packed layer's products to the other library (``"KxN@rows/mkl-packed"``,
``"KxN@rows/onednn-packed-over-mkl"``: :func:`vpltool.models.backbones.mkl_packed.library_now`).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import VplError
from .files import read_json, write_json

ROUTES = "linear_routes"  # the key of a stage or run record that holds the routes
ONEDNN, MKL = "onednn", "mkl"


def recorded_routes(record: Any) -> dict[str, str]:
    """``linear_routes`` of a stage or run record (``{}`` for none: another route asked, a vpltool's before it)."""
    routes = record.get(ROUTES) if isinstance(record, Mapping) else None
    if not isinstance(routes, Mapping):
        return {}
    return {str(k): v for k, v in routes.items() if v in (ONEDNN, MKL)}


def _auto(numerics: Mapping[str, Any] | None) -> bool:
    """Whether a run of ``numerics`` takes the ``auto`` route (its fp32 CPU products decided per shape)."""
    return isinstance(numerics, Mapping) and numerics.get("linear") == "auto" and "torch" in sys.modules


def refusal(folder: str | os.PathLike, what: str, shape: str, was: str, now: str) -> VplError:
    """The one line for a folder whose run took ``was`` for the ``shape`` products where this run takes ``now``."""
    from ..models.backbones import onednn
    from ..runtime.numerics import CPU_LINEAR_ENV

    cache = onednn._cache_path()
    where = f"the route cache {cache}" if cache is not None else "the route cache, turned off"
    return VplError(f"{folder}: {what} with {CPU_LINEAR_ENV}=auto taking {_name(was)} for its {shape} products, "
                    f"where this run takes {_name(now)} (its verdict in {where}, changed since or of another "
                    "machine), so its items would mix two libraries' last bits; put that cache back as it was (or run "
                    "where the folder was made), pass --overwrite to redo every item, or choose another --out")


def _name(route: str) -> str:
    return {ONEDNN: "oneDNN", MKL: "MKL"}.get(route, route)


def check_routes(folder: str | os.PathLike, what: str, record: Any, numerics: Mapping[str, Any] | None) -> None:
    """Refuse (:func:`refusal`) a run of ``numerics`` that would take another library for a product shape
    ``record`` (the run it continues) recorded; nothing where this run does not take ``auto`` (the route asked is
    compared first, by the numerics) or the record holds no routes."""
    recorded = recorded_routes(record)
    if not recorded or not _auto(numerics):
        return
    from ..models.backbones import mkl_packed, onednn

    for shape, was in sorted(recorded.items()):
        now = mkl_packed.library_now(shape) if "/" in shape else onednn.route_now(shape)
        if now is not None and (ONEDNN if now else MKL) != was:
            raise refusal(folder, what, shape, was, ONEDNN if now else MKL)


def merged_routes(records: Iterable[Any]) -> dict[str, str]:
    """The routes of ``records`` (the run a folder's run continues), by shape, sorted."""
    out: dict[str, str] = {}
    for record in records:
        out.update(recorded_routes(record))
    return dict(sorted(out.items()))


class FolderRoutes:
    """A stage folder's routes: read from its run record as the folder opens, and told of the route of every product
    shape that runs while it is open (:meth:`open`), each recorded in the run record at once."""

    def __init__(self, folder: Path, run_record: str):
        self.folder, self.path, self.routes = Path(folder), Path(folder) / run_record, {}

    def open(self, numerics: Mapping[str, Any] | None) -> contextlib.AbstractContextManager[None]:
        """Watch the run's routes (a run of ``auto``; else nothing), from what its run record (just written)
        holds."""
        self.routes = recorded_routes(read_json(self.path))
        if not _auto(numerics):
            return contextlib.nullcontext()
        from ..models.backbones import onednn

        return onednn.route_watching(self._route)

    def _route(self, shape: str, onednn: bool) -> None:
        """Refused when the run this one continues took the other library for ``shape`` (a cache changed while
        both ran: another shard's); else recorded in the run record at once (a kill leaves it there)."""
        now = ONEDNN if onednn else MKL
        was = self.routes.get(shape) or recorded_routes(read_json(self.path)).get(shape)
        if was is not None and was != now:
            raise refusal(self.folder, "an earlier run made", shape, was, now)
        if was is None:
            from .records import seal

            record = read_json(self.path)
            self.routes = merged_routes([record, {ROUTES: {**self.routes, shape: now}}])
            write_json(self.path, seal({**record, ROUTES: self.routes}))

    def into(self, extra: dict[str, Any]) -> dict[str, Any]:
        """A completion record's fields with the folder's routes (unchanged when there are none)."""
        return {**extra, ROUTES: self.routes} if self.routes else extra


__all__ = ["FolderRoutes", "ROUTES", "check_routes", "merged_routes", "recorded_routes", "refusal"]
