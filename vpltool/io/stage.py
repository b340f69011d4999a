"""Stage folders: the lock, the run and completion records, resuming, and the dataset a folder was made from.

The skeleton every per-image stage follows is written once, in :class:`StageFolder`::

    with StageFolder(out, "cam", params, overwrite=...) as folder:   # lock, then check / prepare the folder
        for item_id in folder.todo(ids, cam_path):                 # what is not done yet
            ...                                                    # write each item atomically
        folder.complete(inputs=..., count=...)                     # _stage.json, last

:meth:`StageFolder.run` is that skeleton in one call (the stage gives the work on the ids to do), which the per-image
stages use.

* ``_run.json`` holds the parameters of the run under way. A re-run with other parameters is refused (or, with
  ``--overwrite``, redoes the folder), so an interrupted folder never ends up half one setting, half another.
* ``_stage.json`` is written last: the Make target and the proof that every item is complete.
* ``--overwrite`` keeps the last good result until the new one is complete (:mod:`vpltool.io.beside`): the last one
  waits beside the folder (``.NAME.vpltool-last``) and comes back whole if the run fails; files no run of the stage
  wrote (a user's notes) move into the new result.
* ``.vpltool.lock`` (an ``flock``) is the folder's one lock, for plain runs and shards alike
  (:func:`vpltool.io.locks.output_lock`):
  a run takes it exclusively, the shards of a ``--shard i/n`` run share it (each also claims its index), so a plain
  run and a sharded one, two copies of one shard, or shards of two counts never write one folder at once. It is
  taken before anything in the folder changes, so a refused run leaves the folder as it found it, and the kernel
  frees it when the run dies: forked children (DataLoader workers) never hold it. The lock lives in
  :mod:`vpltool.io.locks`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import ContractError, VplError
from ..runtime.numerics import describe, linear_mismatch, mismatch
from . import beside as _beside
from .files import make_folder, read_json, write_json
from .finished import finished_shards, read_stage_record  # noqa: F401 (read_stage_record: this module's door too)
from .folder_reads import FolderReads, check_reads, ledger, with_reads
from .folder_routes import ROUTES, FolderRoutes, check_routes, merged_routes
from .inputs import changed_keys, param_changes, placed
from .locks import output_lock
from .provenance import check_present, run_digest
from .records import (
    LOCK_FILE,
    NUMERICS,
    RUN_DIGEST,
    RUN_RECORD,
    SHARD_RECORD,
    SIDE_RECORD,
    STAGE_RECORD,
    read_record,
    seal,
    stage_record_path,
    write_stage_record,
)

# (an older record's params, this run's) -> the older ones in this run's form (begin_stage_run)
Older = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]


@dataclass
class StageSummary:
    """What a per-image stage did in one run: items written, items skipped as already done, wall seconds."""

    done: int
    skipped: int
    seconds: float
    complete: bool = False  # every item of the stage (all shards) is there: ``_stage.json`` was written

    @property
    def images_per_s(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


def _remove_shard_records(folder: Path) -> None:
    for index, count in finished_shards(folder):
        (folder / SHARD_RECORD.format(index=index, count=count)).unlink(missing_ok=True)


def prepare_stage_dir(folder: str | os.PathLike, stage: str, params: Mapping[str, Any], overwrite: bool,
                      not_compared: Sequence[str] = (), inputs: Mapping[str, Any] | None = None,
                      numerics: Mapping[str, Any] | None = None) -> Path:
    """Create ``folder`` for a stage run (see :func:`begin_stage_run`, which also returns the run's digest)."""
    return begin_stage_run(folder, stage, params, overwrite, not_compared, inputs, numerics)[0]


def begin_stage_run(folder: str | os.PathLike, stage: str, params: Mapping[str, Any], overwrite: bool,
                    not_compared: Sequence[str] = (), inputs: Mapping[str, Any] | None = None,
                    numerics: Mapping[str, Any] | None = None, older: Older | None = None,
                    reads: Mapping[str, Any] | None = None) -> tuple[Path, str | None]:
    """Create ``folder`` for a stage run; refuse to mix parameter sets or inputs unless ``overwrite``.

    Both the completion record and the record of an interrupted run are compared with ``params`` (but for the
    keys in ``not_compared``: limits such as ``max_tokens``, which never change a finished item) and, when given,
    with ``inputs`` (the identity of what the items are made from: a re-made extract folder, a changed dataset; the
    keys given, so that a stage may record more than it compares).
    A resume therefore never skips items made from other inputs, and never rewrites the record over them. With
    ``overwrite`` the records are removed first, so that an interrupted re-run can never look complete; a folder of
    another stage is refused even then (``--overwrite`` never turns it into this stage's).

    ``numerics`` (the run's dtype and numeric mode, :func:`vpltool.runtime.numerics.run_numerics`) is recorded in both
    records and by every item the run writes; a folder made in another dtype or mode is refused like other
    parameters (a folder of a vpltool that recorded none is resumed as before).

    ``older(recorded params, params)``: a record's params as this run records them, where an earlier vpltool
    recorded the same settings in another form (a ``--dense`` method's :meth:`DenseHooks.older_record
    <vpltool.models.dense.hooks.DenseHooks.older_record>`); the records are compared in today's form. ``reads``: the
    run's model files by content (:mod:`vpltool.io.reads`), compared last and recorded as ``inputs.reads``.

    Returns the folder and the run's digest (:mod:`vpltool.io.provenance`), recorded in ``_run.json``: every item
    the run writes carries it. A resume continues its folder's run and keeps the folder's digest (none, for a folder
    begun before run digests, so that its items stay alike); a new run computes it (:func:`run_digest`, over the
    dtype and mode too).
    """
    folder = make_folder(folder)
    kept: list[dict[str, Any]] = []  # the records of the run this one continues
    if not os.access(folder, os.W_OK):
        raise VplError(f"permission denied writing {folder}: fix the folder's permissions or choose another --out")
    for name, what in ((STAGE_RECORD, "made"), (RUN_RECORD, "an interrupted run made")):
        record = folder / name
        if not record.is_file():
            continue
        if overwrite:  # a damaged record is cleared; another stage's folder is refused even then
            try:
                old = read_json(record)
            except ContractError:
                old = None
            if isinstance(old, dict) and old.get("stage") not in (None, stage):
                raise VplError(f"{folder}: holds `{old.get('stage')}` output; choose another --out")
            record.unlink()
            _remove_shard_records(folder)
            continue
        old = read_record(record, run=name == RUN_RECORD)
        if old.get("stage") != stage:
            raise VplError(f"{folder}: holds `{old.get('stage')}` output; choose another --out")
        recorded = old["params"] if older is None else older(old["params"], dict(params))
        settings, contents = param_changes(recorded, params, not_compared)
        if settings:
            resume = " to resume" if name == RUN_RECORD else ""
            changed = ", ".join(changed_keys(recorded, params, not_compared))
            raise VplError(f"{folder}: {what} with other parameters ({changed} differ); re-run with the same "
                           f"options{resume}, pass --overwrite to redo it, or choose another --out")
        if inputs is not None and isinstance(old.get("inputs"), dict):  # the keys given (a stage records more)
            more, also = param_changes(placed({k: v for k, v in old["inputs"].items() if k in inputs}), placed(inputs))
            contents += [(k, f"{k} changed since") for k in more] + also
        if contents:  # the same options, other bytes: the inputs changed, not the parameters
            said = "; ".join(change for _, change in contents)
            raise VplError(f"{folder}: {what} from other inputs ({said}), so its items are stale; pass --overwrite "
                           "to redo every item, or choose another --out")
        if numerics is not None and (differ := mismatch(old.get(NUMERICS), numerics)) is not None:
            resume = " to resume" if name == RUN_RECORD else ""
            same = {"dtype": "--precision", "mode": "mode", "both": "--precision and mode"}[differ]
            raise VplError(f"{folder}: {what} {describe(old[NUMERICS], differ)}, this run is "
                           f"{describe(numerics, differ)}; re-run with the same {same}{resume}, pass --overwrite to "
                           "redo it, or choose another --out")
        if numerics is not None and (route := linear_mismatch(old.get(NUMERICS), numerics)) is not None:
            resume = " to resume" if name == RUN_RECORD else ""
            raise VplError(f"{folder}: {what} {route}{resume}, pass --overwrite to redo it, or choose "
                           "another --out")
        check_reads(folder, what, old, reads)  # a model file replaced since: before any model loads
        check_routes(folder, what, old, numerics)  # auto's route cache changed since: its products' library
        kept.append(old)
    if kept:
        digest = kept[0].get(RUN_DIGEST)
    else:  # the dtype and mode are part of what makes two runs' items interchangeable
        made_in = None if numerics is None else {k: numerics.get(k) for k in ("dtype", "mode")}
        digest = run_digest(stage, params, inputs if made_in is None else {**(inputs or {}), NUMERICS: made_in},
                            not_compared)
    run = {"stage": stage, "vpltool": __version__, "params": dict(params)}
    if inputs is not None:
        run["inputs"] = dict(inputs)
    if numerics is not None:
        run[NUMERICS] = dict(numerics)
    run = with_reads(run, kept, reads)  # beside the inputs, outside the run's digest
    if routes := merged_routes(kept):  # the library each product took (auto), kept for the next shard or resume
        run[ROUTES] = routes
    write_json(folder / RUN_RECORD, seal(run if digest is None else {**run, RUN_DIGEST: digest}))
    return folder, digest


def write_side_record(folder: Path, stage: str, option: str) -> None:
    """Mark a side folder (``--save-overlays``, ``--save-debug``) as ``stage``'s, so that a later run may write
    there again (:func:`vpltool.io.check_outputs` refuses a non-empty folder without it)."""

    make_folder(folder)
    if not (folder / SIDE_RECORD).is_file():
        write_json(folder / SIDE_RECORD, seal({"stage": stage, "option": option, "vpltool": __version__}))


def recorded_ids(folder: str | os.PathLike, suffix: str) -> list[str]:
    """The ids of a finished stage folder's items, from its ``_stage.json`` (never a glob: a prototypes file saved
    beside the features, or a backup copy, is no item); each item file ``<id><suffix>`` must be there.

    A record of an older vpltool lists no ids: then the files are globbed and their number must be the record's
    ``count``.

    Raises:
        ContractError: an item is missing: the folder is incomplete, one line naming it and the fix.
    """
    folder = Path(folder)
    record = read_record(stage_record_path(folder))  # its ids checked like a dataset's (no path, none twice)
    stage = record.get("stage", "the stage that wrote it")
    ids = record.get("ids")
    if isinstance(ids, list) and all(isinstance(i, str) for i in ids):
        missing = [i for i in ids if not (folder / f"{i}{suffix}").is_file()]
        if missing:
            raise ContractError(f"{folder}: incomplete: {len(missing)} of the {len(ids)} items its {STAGE_RECORD} "
                                f"lists are missing (first: {missing[0]}{suffix}); re-run `vpltool {stage}` with the "
                                "same options to restore them")
        return list(ids)
    found = sorted(p.name[:-len(suffix)] for p in folder.glob(f"*{suffix}") if not p.name.startswith("."))
    count = record.get("count")
    if isinstance(count, int) and len(found) != count:
        raise ContractError(f"{folder}: {len(found)} item files but its {STAGE_RECORD} counts {count}: incomplete or "
                            f"holding strays; re-run `vpltool {stage}` with --overwrite to redo it")
    return found


def item_done(path: Path, overwrite: bool) -> bool:
    """True if ``path`` is a finished per-item output to skip (written atomically, so existence is enough)."""
    return not overwrite and path.is_file()


class StageFolder:
    """The per-image stage skeleton: lock -> prepare -> todo -> (the stage's loop) -> record. See the module doc.

    Args:
        folder: the output folder (created).
        stage: the command name recorded in the folder's records.
        params: what makes two runs' items interchangeable (recorded; a resume must match it).
        overwrite: redo finished items (and forget another run's records).
        shard: ``(i, n)`` of a ``--shard i/n`` run (the shards share the folder's lock, :func:`output_lock`); only
            shard 0 (or a run in one piece) removes the records under ``overwrite``. None: torchrun's rank
            (:func:`vpltool.device.shard_from_env`), so that every stage built on this skeleton splits its items
            over the ranks of a torchrun launch (:meth:`todo` and :meth:`mine` keep this shard's ids).
        not_compared: keys of ``params`` recorded but not compared on resume (limits, not settings).
        inputs: the identity of the inputs (recorded in ``_run.json`` and ``_stage.json``; a resume must match).
        sides: option -> side folder (``--save-overlays``, ``--save-debug``; None = not given), marked as this
            stage's when made.
        items: ``(ids, path_of)``, every item of the stage and its file (:meth:`run` gives them): the files present
            (a resume keeps them as done, and the record will vouch for them) are checked on entering, before the
            folder changes, to be the folder's run's (:func:`vpltool.io.provenance.check_present`: a file of another
            run copied in is one line).
        numerics: the run's dtype and numeric mode (:func:`vpltool.runtime.numerics.run_numerics`), recorded in both
            records and every item (a resume in another is refused).
        older: an earlier vpltool's form of the params, made today's (:func:`begin_stage_run`).
        beside: under ``overwrite``, a run in one piece builds the new result while the last one waits beside the
            folder, and swaps them only once the new one is complete (:mod:`vpltool.io.beside`): a run that fails
            leaves the last result as it was. False: the folder is overwritten in place (a shard of several always
            is: the shards share it).
    """

    def __init__(self, folder: str | os.PathLike, stage: str, params: Mapping[str, Any], *, overwrite: bool = False,
                 shard: tuple[int, int] | None = None, not_compared: Sequence[str] = (),
                 inputs: Mapping[str, Any] | None = None, sides: Mapping[str, str | os.PathLike | None] = {},
                 items: tuple[Sequence[str], Callable[[str | os.PathLike, str], Path]] | None = None,
                 numerics: Mapping[str, Any] | None = None, older: Older | None = None, beside: bool = True):
        self.folder, self.stage, self.params, self.older = Path(folder), stage, dict(params), older
        self.numerics = None if numerics is None else dict(numerics)
        self.inputs = None if inputs is None else dict(inputs)
        self.sides = {option: Path(path) for option, path in sides.items() if path is not None}
        if shard is None:
            from ..device import shard_from_env

            shard = shard_from_env()
        self.overwrite, self.shard, self.reset = overwrite, tuple(shard), shard[0] == 0
        self.not_compared, self.items = tuple(not_compared), items
        self._stack = contextlib.ExitStack()
        self._created = False
        self.beside = beside and self.overwrite and self.shard[1] == 1
        self._aside: Path | None = None  # the last result, while this run builds the new one (beside)
        self.digest: str | None = None  # the run's digest (:func:`begin_stage_run`), set on entering
        self.reads = FolderReads(self.folder, RUN_RECORD)  # the model files its items are made with, by content
        self.routes = FolderRoutes(self.folder, RUN_RECORD)  # the library each fp32 CPU product took (auto)

    def __enter__(self) -> StageFolder:
        self._created = not self.folder.exists()
        self._sides_created = [path for path in self.sides.values() if not path.exists()]
        # the parents this run makes too (`-o runs/photo` where runs/ is new): a refused run removes them again
        self._parents_created = [p for p in (*self.folder.parents, *(q for s in self._sides_created for q in s.parents))
                                 if not p.exists()]
        self._stack.enter_context(output_lock(self.folder, self.shard, also=self.sides.values()))
        try:
            self._refuse_other_shard_count()
            if self.shard[1] == 1:  # alone in the folder: what a killed --overwrite run left beside it
                _beside.recover(self.folder, self._stack)
            if self.items is not None and not self.overwrite:  # before _run.json: a refused run changes nothing
                ids, path_of = self.items
                present = _names(self.folder)
                check_present(self.folder, [n for i in ids if (n := path_of(self.folder, i).name) in present])
            if self.beside and _beside.has_result(self.folder):
                _beside.refuse_other_stage(self.folder, self.stage)
                self._aside = _beside.set_aside(self.folder, self._stack)
            _, self.digest = begin_stage_run(self.folder, self.stage, self.params, self.overwrite and self.reset,
                                             self.not_compared, self.inputs, self.numerics, self.older, ledger())
            self._stack.enter_context(self.reads.open())  # and those of models loaded while it is open
            self._stack.enter_context(self.routes.open(self.numerics))  # and the products run while it is open
            for option, path in self.sides.items():
                write_side_record(path, self.stage, option)
        except BaseException:
            self.__exit__(True)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        failed = bool(exc) and exc[0] is not None
        if self._aside is not None:  # swapped only when the new result is complete; else the last one comes back
            aside, self._aside = self._aside, None
            with self._stack:
                _beside.finish(self.folder, aside, failed)
        self._stack.close()
        if failed:
            for path in self._sides_created:  # first: one may lie inside the output folder
                self._remove_if_untouched(path, {SIDE_RECORD})
            if self._created:
                self._remove_if_untouched(self.folder, {LOCK_FILE, RUN_RECORD})
            for path in sorted(set(self._parents_created), key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):  # only when empty: the deepest first
                    path.rmdir()

    def _refuse_other_shard_count(self) -> None:
        """Shards of one folder have one count: ``--shard 1/3`` into a folder where shard 0 of 2 finished would
        split the items twice (a plain run may finish any folder; ``--overwrite`` on shard 0 starts afresh)."""
        index, count = self.shard
        other = [(i, n) for i, n in finished_shards(self.folder) if n != count]
        if count == 1 or not other or (self.overwrite and self.reset):
            return
        n = other[0][1]
        done = ", ".join(str(i) for i, m in other if m == n)
        raise VplError(f"{self.folder}: shard(s) {done} of {n} finished here, so it is made in {n} shards; run the "
                       f"others as --shard i/{n} (or without --shard, to finish it in one run), not --shard "
                       f"{index}/{count}")

    @staticmethod
    def _remove_if_untouched(folder: Path, ours: set[str]) -> None:
        """A run that failed before its first item leaves no folder behind (only the ones it created)."""
        with contextlib.suppress(OSError):
            if {p.name for p in folder.iterdir()} <= ours:
                for name in ours:
                    (folder / name).unlink(missing_ok=True)
                folder.rmdir()

    def mine(self, ids: Iterable[str]) -> list[str]:
        """This shard's part of ``ids`` (every item of the stage, in a fixed order): every n-th from the i-th,
        interleaved so that the shards are even (as :meth:`vpltool.data.Dataset.shard`)."""
        index, count = self.shard
        return list(ids)[index::count]

    def todo(self, ids: Iterable[str], path_of: Callable[[str | os.PathLike, str], Path]) -> list[str]:
        """The ids of this shard (:meth:`mine`; ``ids``: all of the stage's) whose output ``path_of(folder, id)`` is
        missing (all of them under ``overwrite``): one listing of the folder, not a stat per id (outputs are
        written atomically, so a name present is a finished item: ``items`` has them checked on entering)."""
        mine = self.mine(ids)
        if self.overwrite:
            return mine
        present = _names(self.folder)
        return [i for i in mine if path_of(self.folder, i).name not in present]

    def todo_with(self, beside: Sequence[StageFolder], ids: Iterable[str],
                  path_of: Callable[[str | os.PathLike, str], Path]) -> list[str]:
        """:meth:`todo` of this folder and the folders ``beside`` it that the same work writes: the ids of this
        shard that any of them lacks, in this shard's order."""
        missing = set(self.todo(ids, path_of)).union(*(f.todo(ids, path_of) for f in beside))
        return [i for i in self.mine(ids) if i in missing]

    def run(self, ids: Sequence[str], path_of: Callable[[str | os.PathLike, str], Path],
            work: Callable[[list[str]], None], on_start: Callable[[int], None] | None = None,
            beside: Sequence[StageFolder] = (), **finish: Any) -> StageSummary:
        """The skeleton in one call, for a per-image stage: inside the folder (its lock, records and shard) the ids of
        this shard whose output is missing (:meth:`todo`), ``on_start(len(todo))``, ``work(todo)`` when there is
        work (a model loads only then), last :meth:`finish` (``finish``: what it records besides). ``beside``:
        folders the same work writes too (`cam --raw-out`), each locked and recorded with this one, an item done
        again where any of them lacks it (:meth:`todo_with`), each completing on its own."""
        start = time.perf_counter()
        folders = (self, *beside)
        with contextlib.ExitStack() as stack:
            for f in folders:
                f.items = (ids, path_of)
                stack.enter_context(f)
            todo = self.todo_with(beside, ids, path_of)
            if on_start:
                on_start(len(todo))
            if todo:
                work(todo)
            complete = all([f.finish(ids, path_of, **finish) for f in folders])  # a list: every folder finishes
        return StageSummary(done=len(todo), skipped=len(self.mine(ids)) - len(todo),
                            seconds=time.perf_counter() - start, complete=complete)

    def finish(self, ids: Sequence[str], path_of: Callable[[str | os.PathLike, str], Path], index: int | None = None,
               count: int | None = None, *, inputs: Mapping[str, Any] | None = None, **extra: Any) -> bool:
        """After this process's items: :meth:`complete` once every item of ``ids`` (all shards) is there, else (a
        shard of several) :meth:`shard_done`. Returns whether the folder is complete. Each shard checks after
        writing its own items, so the last to finish completes the folder. ``index``/``count``: the folder's
        shard by default."""
        index, count = (self.shard[0] if index is None else index), (self.shard[1] if count is None else count)
        present = _names(self.folder)
        if all(path_of(self.folder, i).name in present for i in ids):
            self.complete(inputs=inputs, count=len(ids), ids=list(ids), **extra)
            return True
        if count > 1:
            self.shard_done(index, count)
        return False

    def complete(self, *, count: int, inputs: Mapping[str, Any] | None = None, **extra: Any) -> Path:
        """Write ``_stage.json`` (every item is there); the run and shard records go, the parameters live on in
        it. ``inputs`` defaults to the folder's; pass ``ids`` (the items, sorted here) so that readers take the
        items from the record (:func:`recorded_ids`), not from whatever files lie in the folder."""
        if "ids" in extra:
            extra["ids"] = sorted(extra["ids"])
        if self.digest is not None:  # the run every item records (vpltool.io.provenance)
            extra[RUN_DIGEST] = self.digest
        if self.numerics is not None:
            extra.setdefault(NUMERICS, self.numerics)
        inputs = self.reads.into(self.inputs if inputs is None else inputs)  # with the model files read, by content
        extra = self.routes.into(extra)
        path = write_stage_record(self.folder, self.stage, params=self.params, inputs=inputs, count=count, **extra)
        (self.folder / RUN_RECORD).unlink(missing_ok=True)
        _remove_shard_records(self.folder)
        return path

    def shard_done(self, index: int, count: int) -> Path:
        """Record that shard ``index`` of ``count`` finished while others are pending, so that a later stage says
        which shards to run instead of "did not finish" (``_stage.json`` comes with the last shard)."""
        return write_json(self.folder / SHARD_RECORD.format(index=index, count=count),
                          {"stage": self.stage, "shard": [index, count]})


def _names(folder: Path) -> set[str]:
    try:
        return set(os.listdir(folder))
    except FileNotFoundError:
        return set()
