"""Every bad input we try, defined once: `test_robustness.py` checks them, `docgen/robustness_table.py`
writes docs/robustness.md from them, so the page and the behaviour cannot drift apart.

A case builds its bad input in a :class:`Workspace` (a tiny demo world and the finished stage folders of the
random test CLIP ``vpl-test-vit``), then runs the real CLI in-process. In-process because some faults can only be
injected there: we run as root (chmod denies nothing), a full disk cannot be made on demand, and the lock must be
held by "another run".

A case states what must happen: the exit code (2 with one ``error:`` line, or 0 where the input has a documented
meaning), the fragments the message must contain, and the files the run may leave behind (``leaves``: glob
patterns, relative to the workspace; none by default). The workspace is compared before and after the run, so a
half-written file, a stray temporary, an empty folder or a lock file left by a refused run fails the test.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISDIR
from unittest import mock

import cli_once  # tests/ is on sys.path

from pace import Budget  # tests/ is on sys.path

ASSETS = Path(__file__).parent / "assets"
TINY = ["--model", "vpl-test-vit", "--pretrained", "none"]
CPU = ["--device", "cpu"]
TEXT_ARGS = ["--templates", "a photo of a {}.", "--background", "grass,sky,wall,water"]
# segment on the toy CLIP with one prompt template: the default imagenet's 80 send ~2,300 prompts through the
# text tower (~70 % of such a case's CPU), and a case not about templates reads the same with one
ONE_TEMPLATE = ["--templates", "a photo of a {}."]
SEG_TINY = [*TINY, *CPU, *ONE_TEMPLATE]
DINO_MODEL = "vit_tiny_patch16_224"  # the smallest timm ViT: the DINO of these cases, with seeded random weights
DECODER_ARGS = ["--iters", "2", "--batch-size", "2", "--dim", "16", "--layers", "1", "--heads", "2",
                "--crop-size", "64", "--checkpoint-every", "1", "--workers", "1", *CPU]


def configure_environment() -> None:
    """Offline, CPU-only, one thread, --precision auto as on a CPU without AMX, the test model configs visible: the
    same world as the test suite's.

    Call before torch or huggingface_hub is imported (they read these at import).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("VPLTOOL_ASSUME_AMX", "0")  # --precision auto as on a CPU without AMX (tests/conftest.py)
    os.environ["VPLTOOL_MODEL_CONFIGS"] = str(ASSETS / "model_configs")


# --------------------------------------------------------------------------------------------- running the CLI
@dataclass
class Outcome:
    """What a user sees (the exit code, the ``error:`` and ``warning:`` lines, the last line) and what the run left
    on disk (``left``: paths it created, changed or removed, ``-`` before a removed one; folders end with ``/``),
    with the workspace prefix dropped from paths."""

    exit_code: int
    error_lines: list[str]
    last_line: str
    traceback: bool
    warning_lines: list[str] = field(default_factory=list)
    note_lines: list[str] = field(default_factory=list)  # ``note:`` lines, printed before a run's ✓ summary
    left: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)  # the environment the case set: ["VAR=value", "env", "-u", "X"]

    @property
    def seen(self) -> str:
        """The line(s) the table shows: the error, else the warnings, else the notes and the last line."""
        return " / ".join(self.error_lines or self.warning_lines or [*self.note_lines, self.last_line])


def invoke(*args: object):
    """The CLI in this process (typer's CliRunner: stdout and stderr together in ``result.output``), its click
    command tree built once (tests/cli_once.py: ~700 invokes a table run)."""
    return cli_once.invoke(list(args))


def cli_ok(*args: object) -> None:
    """Run a stage that must succeed (workspace set-up); its output in the error if it does not."""
    r = invoke(*args)
    if r.exit_code != 0:
        raise RuntimeError(f"vpltool {' '.join(map(str, args))} failed ({r.exit_code}): {r.output[-2000:]}")


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


# --------------------------------------------------------------------------------------------- a CLI to kill
PACE_S = 0.2
# The CLI with every atomic write paused between its finished temporary file and the rename (files._renamed_onto,
# which atomic_path and atomic_write share): without the pause a run on the tiny model is over before a poll can
# see it start, and with it a kill lands mid-run every time (mostly inside such a pause, where a non-atomic writer
# would leave a half file).
PACED_CLI = """
import contextlib, os, signal, sys, time
from vpltool.io import files
from vpltool.cli import app

# Ctrl-C raises KeyboardInterrupt, as in a shell: a process started with SIGINT ignored (as a pytest-xdist worker's
# children are) keeps it ignored, and its Ctrl-C case ran to the end with exit 0
signal.signal(signal.SIGINT, signal.default_int_handler)
real_renamed_onto = files._renamed_onto
PACE_S = float(os.environ.get("VPLTOOL_TEST_PACE_S", "0.2"))  # torchrun's ranks get paced_cli's through the agent

@contextlib.contextmanager
def paced_renamed_onto(tmp, path):
    with real_renamed_onto(tmp, path):
        yield
        time.sleep(PACE_S)

files._renamed_onto = paced_renamed_onto
app(sys.argv[1:], prog_name="vpltool")
"""


def paced_cli(args: list[object], pace_s: float = PACE_S) -> subprocess.Popen:
    """``vpltool ARGS`` (:data:`PACED_CLI`) in a child process, in its own session (its workers with it), each
    file it writes followed by ``pace_s`` seconds asleep: the window a signal sent after a file appears lands in."""
    return subprocess.Popen([sys.executable, "-c", PACED_CLI, *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "VPLTOOL_TEST_PACE_S": str(pace_s)})


def wait_until(proc: subprocess.Popen, started: Callable[[], bool], timeout: float = 120) -> None:
    """Poll until ``started()`` holds; an error with the child's stderr if it ended first or took too long."""
    budget = Budget(timeout)  # a hang bound in idle-machine seconds
    while not started():
        if proc.poll() is not None:
            raise RuntimeError(f"the child ended (exit {proc.returncode}) before it could be killed: "
                               f"{proc.stderr.read()[-2000:]}")
        if budget.expired():
            raise RuntimeError(f"the child wrote nothing within {timeout} idle-machine seconds")
        time.sleep(0.02)


def session_processes(session: int) -> list[int]:
    """The live processes of a session (a child started with ``start_new_session``: its id is the session's)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z":  # fields: state, ppid, pgrp, session, ...
            found.append(int(stat.parent.name))
    return found


def survivors(session: int, seconds: float = 5) -> list[int]:
    """:func:`session_processes` once they have had ``seconds`` (idle-machine seconds, at the current pace) to end:
    a process sent SIGKILL is still listed while the kernel tears it down (seen once in a fresh clone's
    `.ci/run`: one child of a killed `segment`, still listed right after its parent's exit status came back)."""
    budget = Budget(seconds)
    while (found := session_processes(session)) and not budget.expired():
        time.sleep(0.05)
    return found


# --------------------------------------------------------------------------------------------- workspace
class Workspace:
    """A scratch folder holding a 4 + 2 scene world and every stage's finished output (built in ~3 s)."""

    def __init__(self, root: Path):
        from vpltool.demo.make_world import write_dataset

        self.root = root
        self.world = write_dataset(root / "world", n_train=4, n_val=2, seed=0)
        self.features, self.text, self.cams = root / "features", root / "text.safetensors", root / "cams"
        self.pseudo, self.decoder = root / "pseudo", root / "decoder"
        cli_ok("extract", self.world, "--split", "train", "-o", self.features, *TINY, *CPU, "--workers", "1",
               "--cache", "full")
        cli_ok("text-prototypes", self.features, "-o", self.text, *TEXT_ARGS, *CPU)
        cli_ok("cam", self.features, "-p", self.text, "-o", self.cams, *CPU)
        cli_ok("crf", self.cams, "-o", self.pseudo, "--workers", "1")
        cli_ok("train-decoder", self.pseudo, "-p", self.text, "-o", self.decoder, *DECODER_ARGS)
        self._after_case: list[Path] = []

    def drop_after_case(self, path: Path) -> Path:
        """``path``, removed once the case now being built has run (:meth:`end_case`): a big file or folder of the
        case's own that no later case reads (a case that wants one again makes it again). The workspace held every
        case's at once: twelve train-pgseg runs of 56-82 MB, DINO and PGSeg weights of 22 MB, 1.6 GB in all."""
        self._after_case.append(path)
        return path

    def end_case(self) -> None:
        """Remove what :meth:`drop_after_case` named while the case ran (after its disk state was taken)."""
        for path in self._after_case:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        self._after_case.clear()

    def disk_state(self) -> dict[str, tuple[int, ...]]:
        """:func:`disk_state` of the workspace: kept up to date by a :class:`DiskWatch` (started on first use) where
        inotify is there, walked otherwise."""
        if not hasattr(self, "_watch"):
            self._watch = DiskWatch.start(self.root)
        return self._watch.snapshot() if self._watch is not None else disk_state(self.root)

    def missed_by_watch(self) -> list[str]:
        """:meth:`DiskWatch.missed` of the workspace's watch (none without one)."""
        return self._watch.missed() if getattr(self, "_watch", None) is not None else []

    def segmenter(self):
        """``seg`` of the Python cases (:data:`PY_SEGMENTER`), made on first use."""
        if getattr(self, "_segmenter", None) is None:
            import vpltool  # noqa: F401 (PY_SEGMENTER names it)

            self._segmenter = eval(PY_SEGMENTER)
        return self._segmenter

    def copy(self, source: Path, name: str) -> Path:
        """A private copy of a workspace folder for a case to damage."""
        target = self.root / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)
        return target

    def out(self, name: str) -> Path:
        """A fresh output path (removed if an earlier run left it)."""
        path = self.root / name
        shutil.rmtree(path, ignore_errors=True)
        return path

    def first_feature_file(self, folder: Path | None = None) -> Path:
        return sorted((folder or self.features).glob("*.safetensors"))[0]

    def predictions(self) -> Path:
        """``predict --split val`` of the workspace decoder (made once, on first use)."""
        out = self.root / "pred_val"
        if not (out / "_stage.json").is_file():
            cli_ok("predict", self.decoder / "decoder.safetensors", "--split", "val", "-o", out, *CPU)
        return out

    def dino_weights(self, name: str, prefix: str = "", seed: int = 0) -> Path:
        """A timm ``vit_tiny_patch16_224`` state dict (names prefixed with ``prefix``, as a training checkpoint
        saves them), random but seeded: the DINO weights of these cases."""
        import timm
        import torch
        from safetensors.torch import save_file

        path = self.root / name
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = timm.create_model(DINO_MODEL, pretrained=False, num_classes=0)
        save_file({prefix + k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        return self.drop_after_case(path)  # 22 MB, made again by each case that asks for it

    def relative(self, text: str) -> str:
        """``text`` with the workspace's absolute prefix removed, so paths read ``features/x.safetensors``, and the
        checkout's as ``<checkout>`` (the toy DINO's weights are the package's own), so the page reads the same
        from every clone."""
        text = text.replace(f"{self.root}{os.sep}", "").replace(str(self.root), ".")
        return text.replace(str(CHECKOUT), "<checkout>")


# --------------------------------------------------------------------------------------------- the cases
@dataclass(frozen=True)
class Case:
    """One bad input: ``build(ws)`` is a context manager that makes it and yields the CLI arguments (and keeps
    any in-process fault, such as a held lock or a full disk, active while the CLI runs).

    ``expect``: fragments the error line (exit code 2) or the output (exit code 0) must contain. ``leaves``: glob
    patterns (``fnmatch``, relative to the workspace) of everything the run may leave behind; each must match.
    """

    name: str
    build: Callable[[Workspace], contextlib.AbstractContextManager[list[object]]]
    expect: tuple[str, ...] = ()
    leaves: tuple[str, ...] = ()
    exit_code: int = 2
    python: bool = False  # ``build`` yields lines of Python (the front door, docs/api.md), not CLI arguments
    # its run computes in the dtype ``--precision auto`` resolves to (bf16 on a CPU with AMX) or with the CPU's
    # kernels: test_robustness runs it again in the suite's AMX pass (marker numeric), where its row must not move
    numeric: bool = False
    # variables the case sets that its command line shows even where they hold the suite's own value (the suite runs
    # with VPLTOOL_ASSUME_AMX=0: a case that pins it to 0 says so, for a reader on a CPU with AMX)
    shows_env: tuple[str, ...] = ()
    # the id of the case of a review's list it answers (tests/data/robustness-round11.tsv), shown in the row's case
    # column: every id there has exactly one row (test_robustness_ids)
    tsv: str = ""

    def run(self, ws: Workspace) -> tuple[list[object], Outcome]:
        outside = dict(os.environ)
        with self.build(ws) as args:
            inside = dict(os.environ)
            env = _env_changes(outside, inside)
            env += [f"{k}={inside[k]}" for k in self.shows_env if k in inside and f"{k}={inside[k]}" not in env]
            before = ws.disk_state()
            if self.python:
                outcome = run_python(ws, [str(a) for a in args])
                outcome.left = disk_changes(before, ws.disk_state())
                return args, outcome
            r = invoke(*args)
            after = ws.disk_state()
        lines = [_steady(ws.relative(line)) for line in r.output.splitlines() if line.strip()]
        return args, Outcome(exit_code=r.exit_code, error_lines=[ln for ln in lines if ln.startswith("error:")],
                             last_line=lines[-1] if lines else "",
                             traceback="Traceback" in r.output or (r.exception is not None
                                                                   and not isinstance(r.exception, SystemExit)),
                             warning_lines=[ln for ln in lines if ln.startswith("warning:")],
                             note_lines=[ln for ln in lines if ln.startswith("note:")],
                             left=disk_changes(before, after), env=env)

    def command(self, ws: Workspace, args: list[object], env: list[str] = ()) -> str:
        """The command line as a shell would run it, with the environment the case set (``VAR=value``, or
        ``env -u VAR`` for one it removed); a Python case's lines after ``>>>``."""
        if self.python:
            return _steady(ws.relative(">>> " + "; ".join(map(str, args))))
        line = shlex.join([*env, "vpltool", *map(str, args)])
        return _steady(ws.relative(line.replace("\n", "\\n")))  # a line break in a value, shown as the shell's $'\n'

    def unexpected(self, outcome: Outcome) -> list[str]:
        """What the run left that ``leaves`` does not allow, and the patterns of ``leaves`` that matched nothing."""
        extra = [p for p in outcome.left if not any(fnmatch.fnmatchcase(p, pat) for pat in self.leaves)]
        missing = [f"(nothing matches {pat!r})" for pat in self.leaves
                   if not any(fnmatch.fnmatchcase(p, pat) for p in outcome.left)]
        return extra + missing


CASES: list[Case] = []


def case(name: str, *expect: str, leaves: tuple[str, ...] = (), exit_code: int = 2, python: bool = False,
         numeric: bool = False, shows_env: tuple[str, ...] = (), tsv: str = ""):
    """Register a generator function as a :class:`Case` (in the order of this file: the order of the table);
    ``tsv``: the id of the reviewed case it answers (:attr:`Case.tsv`)."""

    def register(fn):
        CASES.append(Case(name, contextlib.contextmanager(fn), expect, leaves, exit_code, python, numeric, shows_env,
                          tsv))
        return fn

    return register


# the segmenter a Python case calls ``seg`` (made once per workspace: Workspace.segmenter)
PY_SEGMENTER = ('vpltool.segmenter("maskclip", model="vpl-test-vit", pretrained="none", device="cpu", '
                'templates="a photo of a {}.", background="grass,sky,wall,water")')


def run_python(ws: Workspace, lines: list[str]) -> Outcome:
    """A Python case's lines run in this process, in the workspace folder, with ``vpltool``, ``np``, ``torch`` and
    ``seg`` (:data:`PY_SEGMENTER`) at hand: exit code 2 and the exception's line for a ``VplError``, 0 and the last
    line printed otherwise; ``VplWarning``s as the warning lines; any other exception is a traceback."""
    import io as _io
    import warnings

    import numpy as np
    import torch

    import vpltool
    from vpltool.errors import VplError, VplWarning

    namespace = {"vpltool": vpltool, "np": np, "torch": torch, "seg": ws.segmenter()}
    printed, error, traceback = _io.StringIO(), [], False
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(printed), \
            contextlib.chdir(ws.root):
        warnings.simplefilter("always", VplWarning)
        try:
            exec("\n".join(lines), namespace)
        except VplError as e:
            error = [f"VplError: {e}"]
        except Exception as e:  # noqa: BLE001 (what the row must never show)
            error, traceback = [f"{type(e).__name__}: {e}"], True
    shown = [ln for ln in printed.getvalue().splitlines() if ln.strip()]
    return Outcome(exit_code=2 if error else 0, error_lines=[_steady(ws.relative(e)) for e in error],
                   last_line=_steady(ws.relative(error[0] if error else (shown[-1] if shown else ""))),
                   traceback=traceback, env=[],
                   warning_lines=[_steady(ws.relative(f"VplWarning: {w.message}")) for w in caught
                                  if issubclass(w.category, VplWarning)])


def _env_changes(outside: dict[str, str], inside: dict[str, str]) -> list[str]:
    """What a case did to the environment, as the words before a command: ``env -u X`` (removed), ``VAR=value``."""
    removed = sorted(k for k in outside if k not in inside)
    words = ["env", *(w for k in removed for w in ("-u", k))] if removed else []
    return words + [f"{k}={v}" for k, v in sorted(inside.items()) if outside.get(k) != v]


def _steady(line: str) -> str:
    """``line`` with speeds, durations and the free port a case took as "…", so that the page does not change from
    one run to the next."""
    line = re.sub(r"\d+(?:\.\d+)? (img|it|images|iterations)/s", r"… \1/s", line)
    line = re.sub(r"127\.0\.0\.1(:|, )\d+", r"127.0.0.1\1…", line)
    line = re.sub(r"MASTER_PORT=\d+", "MASTER_PORT=…", line)
    line = re.sub(r"MB in \d+(?:\.\d+)? s", "MB in … s", line)  # report's summary
    line = re.sub(r"a path of \d+ bytes", "a path of … bytes", line)  # the workspace's own path is in it
    return re.sub(r"\b\d+m\d\ds elapsed", "… elapsed", line)


def disk_state(root: Path) -> dict[str, tuple[int, ...]]:
    """``{relative path: (mode, size, mtime_ns)}`` of everything under ``root`` (folders end with ``/``; symlinks,
    FIFOs and device nodes are listed as themselves, never followed).

    Taken twice per case over a workspace that grows to thousands of files: one ``scandir`` pass whose entries carry
    their type (os.walk's listing, then a path join, a normpath and an lstat per name, cost 1.7 times as much). A
    case takes it through :meth:`Workspace.disk_state`, which keeps it up to date instead (:class:`DiskWatch`)."""
    state: dict[str, tuple[int, ...]] = {}
    _walk(state, os.fspath(root), "")
    return state


def _walk(state: dict[str, tuple[int, ...]], folder: str, prefix: str,
          before_listing: Callable[[str, str], None] | None = None) -> None:
    """:func:`disk_state`'s entries of ``folder`` (``prefix``: its relative path, ``""`` or ending with ``/``) and
    of everything under it, into ``state``; ``before_listing(folder, prefix)`` is called for each folder first."""
    if before_listing is not None:
        before_listing(folder, prefix)
    try:
        entries = list(os.scandir(folder))
    except OSError:  # as os.walk: a folder that cannot be listed is left out
        return
    if prefix:
        state[prefix] = ()
    subdirs = []
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            subdirs.append(entry)
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        state[prefix + entry.name] = (st.st_mode, st.st_size, st.st_mtime_ns)
    for entry in subdirs:
        _walk(state, entry.path, f"{prefix}{entry.name}/", before_listing)


class DiskWatch:
    """:func:`disk_state` of ``root``, kept up to date from the kernel's inotify events (Linux) instead of walked
    anew: the table's ~770 cases took two snapshots each of a workspace that grows to ~5,000 paths (the item that
    runs them, ``[corrupt-image]``, cost 105.3 CPU-s walking and 89.0 watching: tests/conftest.py's
    VPLTOOL_TEST_CPU_JSON, one run each on a loaded 2-core Xeon). A snapshot looks again at each path an event named
    since the last one (a folder created, moved in or removed: everything under it); after an overflow of the
    kernel's queue, at everything.

    Each folder is watched before it is listed, so a change after its listing is an event. A folder moved keeps its
    watch under its old name until it is listed again under its new one; its move is an event of its parent, so
    the new name is listed whole, and what an event under the old name says is looked up there and found gone.
    :meth:`missed` is the check: the kept state against a fresh :func:`disk_state`."""

    def __init__(self, root: Path):
        from inotify_simple import INotify, flags

        self.root, self.flags, self.inotify = os.fspath(root), flags, INotify()
        self.mask = (flags.CREATE | flags.DELETE | flags.MODIFY | flags.ATTRIB | flags.CLOSE_WRITE | flags.MOVED_FROM
                     | flags.MOVED_TO | flags.ONLYDIR | flags.DONT_FOLLOW)
        self.folders: dict[int, str] = {}  # watch descriptor -> the folder's prefix ("" for root)
        self.state: dict[str, tuple[int, ...]] = {}
        _walk(self.state, self.root, "", self._watch)

    @classmethod
    def start(cls, root: Path) -> DiskWatch | None:
        """A watch of ``root``, or None where inotify is not there (not Linux, inotify_simple not installed, the
        user's inotify instances used up): the caller walks instead."""
        try:
            return cls(root)
        except (ImportError, OSError):
            return None

    def _watch(self, folder: str, prefix: str) -> None:
        try:
            self.folders[self.inotify.add_watch(folder, self.mask)] = prefix  # a folder watched again: its own wd
        except OSError:  # gone already, or no longer a folder: its parent's event says so
            pass

    def snapshot(self) -> dict[str, tuple[int, ...]]:
        """:func:`disk_state` of the root now (a copy)."""
        named, overflow = {}, False
        while events := self.inotify.read(timeout=0):
            for event in events:
                if event.mask & self.flags.Q_OVERFLOW:
                    overflow = True
                elif event.mask & self.flags.IGNORED:  # its folder is gone (or its watch removed)
                    self.folders.pop(event.wd, None)
                elif event.name and event.wd in self.folders and not (
                        event.mask & self.flags.ISDIR and not event.mask & (
                            self.flags.CREATE | self.flags.DELETE | self.flags.MOVED_FROM | self.flags.MOVED_TO)):
                    named[self.folders[event.wd] + event.name] = None  # a folder's own attributes: listed as ()
        if overflow:
            self.state.clear()
            _walk(self.state, self.root, "", self._watch)
        else:
            for path in named:
                self._look_again(path)
        return dict(self.state)

    def _look_again(self, path: str) -> None:
        """``path``'s entries (itself, and everything under it if it is a folder) as they are now."""
        self.state.pop(path, None)
        if f"{path}/" in self.state:
            inside = [p for p in self.state if p.startswith(f"{path}/")]
            for p in inside:
                del self.state[p]
        try:
            st = os.lstat(os.path.join(self.root, path))
        except OSError:
            return
        if S_ISDIR(st.st_mode):
            _walk(self.state, os.path.join(self.root, path), f"{path}/", self._watch)
        else:
            self.state[path] = (st.st_mode, st.st_size, st.st_mtime_ns)

    def missed(self) -> list[str]:
        """The paths where the kept state and a fresh :func:`disk_state` differ (none, or the watch missed one)."""
        kept, walked = self.snapshot(), disk_state(Path(self.root))
        return sorted(p for p in kept.keys() | walked.keys() if kept.get(p) != walked.get(p))


def disk_changes(before: dict[str, tuple[int, ...]], after: dict[str, tuple[int, ...]]) -> list[str]:
    """Paths created or changed between two :func:`disk_state` snapshots, then ``-path`` for removed ones."""
    changed = sorted(p for p, st in after.items() if before.get(p) != st and not (p.endswith("/") and p in before))
    return changed + sorted(f"-{p}" for p in before if p not in after)


def describe_left(left: list[str]) -> str:
    """``left`` for the table: a new folder with its file count, other paths as they are (a path held k times, as
    keyed names are, shown once as ``PATH ×k``); "nothing" when empty."""
    from collections import Counter

    new_dirs = list(dict.fromkeys(p for p in left if p.endswith("/") and not any(p.startswith(d) and p != d
                                                                                 for d in left if d.endswith("/"))))
    shown = []
    for d in new_dirs:
        inside = [p for p in left if p.startswith(d) and not p.endswith("/")]
        shown.append(f"{d} ({len(inside)} file{'s' if len(inside) != 1 else ''}: {', '.join(_short(inside))})"
                     if inside else f"{d} (empty)")
    rest = Counter(p for p in left if not p.endswith("/") and not any(p.startswith(d) for d in new_dirs))
    shown += [f"{p} ×{k}" if k > 1 else p for p, k in rest.items()]
    return "; ".join(shown) or "nothing"


def _short(paths: list[str], n: int = 3) -> list[str]:
    """The first ``n`` distinct file names of ``paths`` (``NAME ×k`` for a name held k times), then ``+m more``."""
    from collections import Counter

    counts = Counter(p.rsplit("/", 1)[-1] for p in paths)
    names = [f"{name} ×{k}" if k > 1 else name for name, k in counts.items()]
    return names[:n] + ([f"+{len(names) - n} more"] if len(names) > n else [])


def _tensors_and_meta(path: Path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def _poison(path: Path, tensor: str) -> None:
    """Set one value of ``tensor`` in a safetensors file to NaN (metadata kept)."""
    from safetensors.torch import save_file

    tensors, meta = _tensors_and_meta(path)
    tensors[tensor].view(-1)[0] = float("nan")
    save_file(tensors, str(path), metadata=meta)


def rewrite_mask(path: Path, labels) -> None:
    """``labels`` ([H, W] uint8) written over the mask at ``path`` with its text chunks (the item's id and run)
    kept: a mask damaged in place, which its folder's record still claims."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from vpltool import io

    with Image.open(path) as img:
        chunks = dict(img.text)
    info = PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    picture = Image.fromarray(labels, mode="L").convert("P")
    picture.putpalette(io.voc_palette())
    picture.save(path, format="PNG", pnginfo=info)


def interrupted_copy(ws: Workspace, source: Path, name: str, n_missing: int = 2) -> Path:
    """A copy of a finished stage folder as a killed run leaves it: items missing, no ``_stage.json``, the run's
    parameters in ``_run.json``."""
    from vpltool import io

    folder = ws.copy(source, name)
    record = io.read_json(folder / io.STAGE_RECORD)
    (folder / io.STAGE_RECORD).unlink()
    for path in sorted(p for p in folder.iterdir() if not p.name.startswith(("_", ".")))[-n_missing:]:
        path.unlink()
    run = {k: record[k] for k in ("stage", "params", io.RUN_DIGEST) if k in record}
    io.write_json(folder / io.RUN_RECORD, run)
    return folder


# ---- datasets
@case("corrupt image", "world_corrupt/images/train_000001.png", "unreadable image", "remove it")
def _corrupt_image(ws: Workspace) -> Iterator[list[object]]:
    world = ws.copy(ws.world, "world_corrupt")
    (world / "images" / "train_000001.png").write_bytes(b"not a png")
    yield ["extract", world, "--split", "train", "-o", ws.out("out"), *TINY, *CPU]


@case("zero-byte image (refused before the model loads)", "world_empty_image/images/train_000001.png",
      "unreadable image", "remove it from the split")
def _zero_byte_image(ws: Workspace) -> Iterator[list[object]]:
    world = ws.copy(ws.world, "world_empty_image")
    (world / "images" / "train_000001.png").write_bytes(b"")
    yield ["extract", world, "--split", "train", "-o", ws.out("out"), *TINY, *CPU]


@case("a 4000x3000 camera photo (too many patch tokens)", "world_big/images/train_000001.png: 3000x4000 pixels",
      "47,000 patch tokens", "--max-tokens 4096", "pass --max-side 1168")
def _huge_photo(ws: Workspace) -> Iterator[list[object]]:
    from PIL import Image

    world = ws.copy(ws.world, "world_big")
    Image.new("RGB", (4000, 3000), (90, 120, 60)).save(world / "images" / "train_000001.png", compress_level=1)
    (world / "masks" / "train_000001.png").unlink()  # its 96x96 mask would be refused first (another case)
    yield ["extract", world, "--split", "train", "-o", ws.out("out"), *TINY, *CPU]


@case("missing image-label file (labels.csv)", "world_no_labels", "no labels.csv or labels.json")
def _missing_labels(ws: Workspace) -> Iterator[list[object]]:
    world = ws.copy(ws.world, "world_no_labels")
    (world / "labels.csv").unlink()
    yield ["extract", world, "--split", "train", "-o", ws.out("out"), *TINY, *CPU]


@case("image listed in labels.csv but missing", "world_missing_image/splits/train.txt", "train_000002",
      "not found")
def _missing_image(ws: Workspace) -> Iterator[list[object]]:
    world = ws.copy(ws.world, "world_missing_image")
    (world / "images" / "train_000002.png").unlink()
    yield ["extract", world, "--split", "train", "-o", ws.out("out"), *TINY, *CPU]


@case("labels.csv saved as Latin-1, not UTF-8", "world_latin1/labels.csv: not UTF-8 text (byte 0xe9 on line 1)",
      "save it as UTF-8")
def _latin1_labels(ws: Workspace) -> Iterator[list[object]]:
    world = ws.copy(ws.world, "world_latin1")
    labels = world / "labels.csv"
    labels.write_bytes("# photos de l'été\n".encode("latin-1") + labels.read_bytes())
    yield ["extract", world, "--split", "train", "-o", ws.out("out"), *TINY, *CPU]


@case("a symlink loop named like an image in images/", "world_loop/images/loop.png: cannot be read",
      "Too many levels of symbolic links", "remove it")
def _symlink_loop(ws: Workspace) -> Iterator[list[object]]:
    world = ws.copy(ws.world, "world_loop")
    (world / "images" / "loop.png").symlink_to("loop.png")
    yield ["extract", world, "--split", "train", "-o", ws.out("out"), *TINY, *CPU]


@case("a split file that lists an id twice", "world_twice/splits/train.txt: id 'train_000000' is listed 2 times",
      "keep one line per image")
def _id_twice(ws: Workspace) -> Iterator[list[object]]:
    world = ws.copy(ws.world, "world_twice")
    listing = world / "splits" / "train.txt"
    listing.write_text(listing.read_text() + "train_000000\n")
    yield ["extract", world, "--split", "train", "-o", ws.out("out"), *TINY, *CPU]


@case("classes.txt with background on its last line", "world_bg_last/classes.txt: 'background' is on line 9",
      "put it on the first line")
def _background_last(ws: Workspace) -> Iterator[list[object]]:
    world = ws.copy(ws.world, "world_bg_last")
    names = (world / "classes.txt").read_text().split()
    (world / "classes.txt").write_text("\n".join([*names[1:], names[0]]) + "\n")
    yield ["extract", world, "--split", "train", "-o", ws.out("out"), *TINY, *CPU]


@case("unknown split", "world/splits/test.txt", "found: train, val", "give one of these split names")
def _unknown_split(ws: Workspace) -> Iterator[list[object]]:
    yield ["extract", ws.world, "--split", "test", "-o", ws.out("out"), *TINY, *CPU]


# ---- wrong folder or file given to a stage
@case("dataset folder where an extract folder belongs", "world: holds `make-world` output", "`extract`")
def _dataset_for_features(ws: Workspace) -> Iterator[list[object]]:
    yield ["learn-prototypes", ws.world, "--cams", ws.cams, "--text", ws.text, "-o", ws.out("w.safetensors"), *CPU]


@case("another stage's folder (extract folder given to crf)", "features: holds `extract` output",
      "expected `cam` output")
def _features_for_cams(ws: Workspace) -> Iterator[list[object]]:
    yield ["crf", ws.features, "-o", ws.out("out"), "--workers", "1"]


@case("interrupted stage folder (no _stage.json)", "cams_interrupted: no _stage.json", "re-run it")
def _interrupted_cams(ws: Workspace) -> Iterator[list[object]]:
    cams = ws.copy(ws.cams, "cams_interrupted")
    (cams / "_stage.json").unlink()
    yield ["crf", cams, "-o", ws.out("out"), "--workers", "1"]


@case("an extract folder where one of two shards is done (cam)", "features_half: no _stage.json yet",
      "runs in 2 shards and only shard(s) 0 finished", "run `vpltool extract` with the pending --shard 1/2")
def _half_sharded(ws: Workspace) -> Iterator[list[object]]:
    folder = ws.out("features_half")
    cli_ok("extract", ws.world, "--split", "train", "-o", folder, *TINY, *CPU, "--shard", "0/2")
    yield ["cam", folder, "-p", ws.text, "-o", ws.out("out"), *CPU]


def _moved_dataset(ws: Workspace, source: Path, name: str) -> Path:
    """A copy of a finished stage folder whose recorded dataset is no longer where it was."""
    from vpltool import io

    folder = ws.copy(source, name)
    record = json.loads((folder / "_stage.json").read_text())
    record["inputs"]["dataset"]["root"] = str(ws.root / "world_moved_away")
    (folder / "_stage.json").write_text(json.dumps(io.seal(record)))  # sealed again: the move, not an edit
    return folder


@case("crf after the dataset folder moved", "cams_moved/_stage.json: its dataset world_moved_away is gone",
      "put it back there", "re-run the pipeline from `extract`")
def _crf_moved(ws: Workspace) -> Iterator[list[object]]:
    yield ["crf", _moved_dataset(ws, ws.cams, "cams_moved"), "-o", ws.out("out"), "--workers", "1"]


@case("eval after the dataset folder moved", "cams_moved/_stage.json: its dataset world_moved_away is gone",
      "pass --data with its new place")
def _eval_moved(ws: Workspace) -> Iterator[list[object]]:
    yield ["eval", _moved_dataset(ws, ws.cams, "cams_moved")]


@case("predict after the dataset folder moved", "decoder_moved.safetensors: its training dataset world_moved_away "
      "is gone", "pass --data with its new place")
def _predict_moved(ws: Workspace) -> Iterator[list[object]]:
    from safetensors.torch import save_file

    tensors, meta = _tensors_and_meta(ws.decoder / "decoder.safetensors")
    dataset = json.loads(meta["vpltool.dataset"])
    meta["vpltool.dataset"] = json.dumps({**dataset, "root": str(ws.root / "world_moved_away")})
    path = ws.root / "decoder_moved.safetensors"
    save_file(tensors, str(path), metadata=meta)
    yield ["predict", path, "--split", "val", "-o", ws.out("out"), *CPU]


@case("CAM folder where pseudo masks belong (train-decoder)", "cams: holds `cam` output", "`crf`")
def _cams_for_pseudo(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-decoder", ws.cams, "-p", ws.text, "-o", ws.out("out"), *DECODER_ARGS]


@case("features file where prototypes belong", "features/train_000000.safetensors",
      "expected a 'prototypes' file, found 'features'")
def _features_for_prototypes(ws: Workspace) -> Iterator[list[object]]:
    yield ["cam", ws.features, "-p", ws.first_feature_file(), "-o", ws.out("out"), *CPU]


@case("prototypes file where a decoder belongs (predict)", "text.safetensors",
      "expected a 'decoder' file, found 'prototypes'")
def _prototypes_for_decoder(ws: Workspace) -> Iterator[list[object]]:
    yield ["predict", ws.text, "--split", "val", "-o", ws.out("out"), *CPU]


# ---- files that do not match each other
@case("prototypes of another dimension (another CLIP)", "wide.safetensors", "36-d", "32-d", "same CLIP")
def _wide_prototypes(ws: Workspace) -> Iterator[list[object]]:
    import torch

    from vpltool import io

    text = io.read_prototypes(ws.text)
    wide = torch.nn.functional.normalize(torch.randn(len(text.vectors), text.dim + 4), dim=1)
    path = ws.root / "wide.safetensors"
    io.write_prototypes(path, io.Prototypes(wide, text.row_class, text.row_names, classes=text.classes,
                                            temperature=0.01, source="text", model=text.model))
    yield ["cam", ws.features, "-p", path, "-o", ws.out("out"), *CPU]


@case("prototypes of another CLIP with the same dimension and classes", "other_clip.safetensors",
      "made with CLIP ViT-B-16 (openai)", "vpl-test-vit (none)", "same model")
def _other_clip(ws: Workspace) -> Iterator[list[object]]:
    from vpltool import io

    text = io.read_prototypes(ws.text)
    path = ws.root / "other_clip.safetensors"
    io.write_prototypes(path, io.Prototypes(text.vectors, text.row_class, text.row_names, classes=text.classes,
                                            temperature=text.temperature, source="text",
                                            model={"model": "ViT-B-16", "pretrained": "openai"}))
    yield ["cam", ws.features, "-p", path, "-o", ws.out("out"), *CPU]


def _local_clip(ws: Workspace, name: str) -> Path:
    """A copy of the shipped toy CLIP's folder (``--model local-dir:FOLDER``)."""
    from vpltool.models.backbones.loading import registered_folder

    return ws.copy(registered_folder("vpltool-toy"), name)


def _replace_weights(folder: Path) -> None:
    """Other weights saved under the same name (one tensor moved): what a retrained model copied over looks like."""
    _replace_weights_file(folder / "open_clip_model.safetensors")


def _replace_weights_file(path: Path) -> None:
    """A safetensors file saved again under its name with one tensor moved."""
    from safetensors.torch import load_file, save_file

    state = load_file(path)
    key = sorted(state)[0]
    state[key] = state[key] + 0.5
    save_file(state, str(path), metadata={"format": "pt"})


@case("a local-dir CLIP whose weights file lacks a tensor (segment; once a RuntimeError traceback)",
      "clip_no_tensor: its weights do not load as the model its open_clip_config.json describes",
      "Missing key(s) in state_dict: \"positional_embedding\"", "re-download or re-train that model")
def _local_clip_missing_tensor(ws: Workspace) -> Iterator[list[object]]:
    from safetensors.torch import load_file, save_file

    clip = _local_clip(ws, "clip_no_tensor")
    state = load_file(clip / "open_clip_model.safetensors")
    del state["positional_embedding"]
    save_file(state, str(clip / "open_clip_model.safetensors"))
    yield ["segment", ws.world, "--split", "val", "-o", ws.out("out"), "--model", f"local-dir:{clip}", *CPU]


@case("a local-dir CLIP whose weights file is cut short (segment; once a SafetensorError traceback)",
      "clip_cut: its weights do not load as the model its open_clip_config.json describes", "not fully covered")
def _local_clip_cut_short(ws: Workspace) -> Iterator[list[object]]:
    clip = _local_clip(ws, "clip_cut")
    weights = clip / "open_clip_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100_000])
    yield ["segment", ws.world, "--split", "val", "-o", ws.out("out"), "--model", f"local-dir:{clip}", *CPU]


@case("a local-dir CLIP's weights replaced under the same name between segment --shard 0/2 and --shard 1/2",
      "seg_shard: an interrupted run made from other inputs (model local-dir:clip_shard: its weights' content "
      "changed (sha256 ")
def _weights_between_shards(ws: Workspace) -> Iterator[list[object]]:
    clip, out = _local_clip(ws, "clip_shard"), ws.out("seg_shard")
    args = ["segment", ws.world, "--split", "val", "-o", out, "--model", f"local-dir:{clip}", *CPU, *ONE_TEMPLATE]
    cli_ok(*args, "--shard", "0/2")
    _replace_weights(clip)
    yield [*args, "--shard", "1/2"]


@case("a local-dir CLIP's weights replaced under the same name between benchmark --shard 0/2 and --shard 1/2",
      "bench_shard/voc21: an interrupted run made from other inputs", "model local-dir:clip_bench_shard: its "
      "weights' content changed")
def _weights_between_benchmark_shards(ws: Workspace) -> Iterator[list[object]]:
    clip, out = _local_clip(ws, "clip_bench_shard"), ws.out("bench_shard")
    args = ["benchmark", "naclip", "--root", f"voc21={_miniature(ws, 'voc21')}", "-o", out, "--model",
            f"local-dir:{clip}", "--short-side", "64", "--slide-crop", "0", *CPU]
    cli_ok(*args, "--shard", "0/2")
    _replace_weights(clip)
    yield [*args, "--shard", "1/2"]


# the same bytes by another path are the same model: a folder reached through a symlink, or renamed (io.by_content)
@case("the same local-dir CLIP through a symlink for segment --shard 1/2 (accepted: the same bytes)",
      "✓ segment (naclip): 1 masks", exit_code=0,
      leaves=("seg_clip_link/*", "-seg_clip_link/_run.json", "-seg_clip_link/_shard.0-of-2.json"))
def _clip_through_symlink(ws: Workspace) -> Iterator[list[object]]:
    clip, out, link = _local_clip(ws, "clip_linked"), ws.out("seg_clip_link"), ws.root / "clip_link"
    args = ["segment", ws.world, "--split", "val", "-o", out, *CPU, *TEXT_ARGS, "--short-side", "64", "--slide-crop",
            "0"]
    cli_ok(*args, "--model", f"local-dir:{clip}", "--shard", "0/2")
    if not link.is_symlink():
        link.symlink_to(clip, target_is_directory=True)
    yield [*args, "--model", f"local-dir:{link}", "--shard", "1/2"]


@case("the dataset's folder renamed between segment --shard 0/2 and --shard 1/2 (accepted: every image and label "
      "the same bytes)", "✓ segment (naclip): 1 masks", exit_code=0,
      leaves=("seg_world_moved/*", "-seg_world_moved/_run.json", "-seg_world_moved/_shard.0-of-2.json"))
def _dataset_renamed_between_shards(ws: Workspace) -> Iterator[list[object]]:
    world, out, moved = ws.copy(ws.world, "world_before_move"), ws.out("seg_world_moved"), ws.out("world_after_move")
    args = ["-o", out, *TINY, *CPU, *TEXT_ARGS, "--classes", "star,circle", "--short-side", "64", "--slide-crop", "0"]
    cli_ok("segment", world, "--split", "val", *args, "--shard", "0/2")
    world.rename(moved)
    yield ["segment", moved, "--split", "val", *args, "--shard", "1/2"]


@case("the same local-dir CLIP renamed between segment --shard 0/2 and --shard 1/2 (accepted: the same bytes)",
      "✓ segment (naclip): 1 masks", exit_code=0,
      leaves=("seg_clip_renamed/*", "-seg_clip_renamed/_run.json", "-seg_clip_renamed/_shard.0-of-2.json"))
def _clip_renamed(ws: Workspace) -> Iterator[list[object]]:
    clip, out, renamed = _local_clip(ws, "clip_before_rename"), ws.out("seg_clip_renamed"), ws.out("clip_renamed")
    args = ["segment", ws.world, "--split", "val", "-o", out, *CPU, *TEXT_ARGS, "--short-side", "64", "--slide-crop",
            "0"]
    cli_ok(*args, "--model", f"local-dir:{clip}", "--shard", "0/2")
    clip.rename(renamed)
    yield [*args, "--model", f"local-dir:{renamed}", "--shard", "1/2"]


@case("a local-dir CLIP's weights replaced under the same name after train-decoder (predict)",
      "decoder.safetensors: made with the CLIP local-dir:clip_predict, whose weights changed since",
      "restore those weights")
def _weights_before_predict(ws: Workspace) -> Iterator[list[object]]:
    clip, run = ws.root / "clip_predict", ws.root / "run_local"
    if not (run / "decoder" / "_stage.json").is_file():
        _local_clip(ws, "clip_predict")
        cli_ok("extract", ws.world, "--split", "val", "-o", run / "features", "--model", f"local-dir:{clip}", *CPU,
               "--workers", "1")
        cli_ok("text-prototypes", run / "features", "-o", run / "text.safetensors", *CPU)
        cli_ok("cam", run / "features", "-p", run / "text.safetensors", "-o", run / "cams", *CPU)
        cli_ok("crf", run / "cams", "-o", run / "pseudo", "--workers", "1")
        cli_ok("train-decoder", run / "pseudo", "-p", run / "text.safetensors", "-o", run / "decoder",
               *DECODER_ARGS)
        _replace_weights(clip)
    yield ["predict", run / "decoder" / "decoder.safetensors", "--split", "val", "-o", ws.out("out"), *CPU]


@case("a local-dir CLIP's folder renamed after train-decoder, given by its new name to predict --model (accepted: "
      "the same bytes)", "✓ predict: 2 masks", exit_code=0, leaves=("pred_at_renamed/", "pred_at_renamed/*"))
def _predict_at_renamed(ws: Workspace) -> Iterator[list[object]]:
    renamed, run = ws.root / "clip_predict_renamed", ws.root / "run_renamed"
    if not (run / "decoder" / "_stage.json").is_file():
        clip = _local_clip(ws, "clip_predict_before")
        cli_ok("extract", ws.world, "--split", "val", "-o", run / "features", "--model", f"local-dir:{clip}", *CPU,
               "--workers", "1")
        cli_ok("text-prototypes", run / "features", "-o", run / "text.safetensors", *TEXT_ARGS, *CPU)
        cli_ok("cam", run / "features", "-p", run / "text.safetensors", "-o", run / "cams", *CPU)
        cli_ok("crf", run / "cams", "-o", run / "pseudo", "--workers", "1")
        cli_ok("train-decoder", run / "pseudo", "-p", run / "text.safetensors", "-o", run / "decoder",
               *DECODER_ARGS)
        clip.rename(renamed)
    yield ["predict", run / "decoder" / "decoder.safetensors", "--split", "val", "-o", ws.out("pred_at_renamed"),
           "--model", f"local-dir:{renamed}", *CPU]


@case("predict --model with a CLIP's name (the decoder's CLIP is the one its record names)",
      "--model ViT-B-16: this command's CLIP is the one its input's record names", "local-dir:DIR")
def _predict_model_name(ws: Workspace) -> Iterator[list[object]]:
    yield ["predict", ws.decoder / "decoder.safetensors", "--split", "val", "-o", ws.out("out"), "--model",
           "ViT-B-16", *CPU]


@case("a Talk2DINO checkpoint's DINO weights file replaced under the same name between segment --shard 0/2 and "
      "--shard 1/2", "a Talk2DINO projection learnt over the DINO weights", "whose bytes changed since",
      "re-train the projection")
def _talk2dino_dino_between_shards(ws: Workspace) -> Iterator[list[object]]:
    from vpltool.models.text.family import text_family

    fam, dino = text_family("talk2dino"), ws.root / "dino_t2d.safetensors"
    shutil.copy(Path(__file__).resolve().parents[1] / "vpltool" / "assets" / "toy-dino" / "model.safetensors", dino)
    cfg = fam.model_config(fam.TrainConfig.recipe_config("demo", dino_weights=str(dino), crop_size=64))
    model = fam.save_checkpoint(ws.root / "talk2dino.safetensors", fam.build_model(cfg, 0))
    args = ["segment", ws.world, "--split", "val", "-o", ws.out("seg_t2d"), "--model", f"talk2dino:{model}",
            "--short-side", "64", "--slide-crop", "0", *CPU]
    cli_ok(*args, "--shard", "0/2")
    _replace_weights_file(dino)
    yield [*args, "--shard", "1/2"]


# ---- no model file is trusted for its name alone; a per-image input is read once, as the run named it
CHECKOUT = Path(__file__).resolve().parents[1]
TOY_DINO = CHECKOUT / "vpltool" / "assets" / "toy-dino" / "model.safetensors"


def _talk2dino_model(ws: Workspace, name: str, edit: Callable[[dict], dict] | None = None) -> Path:
    """A Talk2DINO projection over the toy DINO and toy CLIP (seeded), saved as ``name``; ``edit``: its tensors
    changed before saving, the header kept."""
    from safetensors.torch import save_file

    from vpltool.models.text.family import text_family

    fam = text_family("talk2dino")
    cfg = fam.model_config(fam.TrainConfig.recipe_config("demo", dino_weights=str(TOY_DINO), crop_size=64))
    path = fam.save_checkpoint(ws.root / name, fam.build_model(cfg, 0))
    if edit is not None:
        tensors, meta = _tensors_and_meta(path)
        save_file(edit(tensors), str(path), metadata=meta)
    return path


def _all_nan(tensors: dict) -> dict:
    """Every floating-point tensor times NaN (the header, shapes and dtypes kept)."""
    return {k: v * float("nan") if v.is_floating_point() else v for k, v in tensors.items()}


@case("a Talk2DINO checkpoint whose every weight is NaN, the same header (segment --model talk2dino:FILE; was ✓ "
      "with every pixel class 1, and eval's mIoU 0.08)", "t2d_nan.safetensors: tensor 'proj.linear_layer.weight' "
      "holds NaN or inf", "pass a talk2dino.safetensors")
def _talk2dino_nan(ws: Workspace) -> Iterator[list[object]]:
    model = _talk2dino_model(ws, "t2d_nan.safetensors", _all_nan)
    yield ["segment", ws.world, "--split", "val", "-o", ws.out("out"), "--model", f"talk2dino:{model}",
           "--short-side", "64", "--slide-crop", "0", *CPU]


@case("Python: a Talk2DINO checkpoint whose every weight is NaN (vpltool.segmenter(model='talk2dino:FILE'); was "
      "a segmenter of class 1 everywhere)", "t2d_nan_py.safetensors: tensor 'proj.linear_layer.weight' holds NaN or "
      "inf", python=True)
def _talk2dino_nan_python(ws: Workspace) -> Iterator[list[object]]:
    _talk2dino_model(ws, "t2d_nan_py.safetensors", _all_nan)
    yield ["vpltool.segmenter(model='talk2dino:t2d_nan_py.safetensors', device='cpu')"]


@case("a decoder.safetensors whose every weight is NaN, the same header (predict)",
      "decoder_nan.safetensors: tensor", "holds NaN or inf", "re-run `vpltool train-decoder`")
def _decoder_nan(ws: Workspace) -> Iterator[list[object]]:
    from safetensors.torch import save_file

    path = ws.root / "decoder_nan.safetensors"
    tensors, meta = _tensors_and_meta(ws.decoder / "decoder.safetensors")
    save_file(_all_nan(tensors), str(path), metadata=meta)
    yield ["predict", path, "--split", "val", "-o", ws.out("out"), *CPU]


def _regions(ws: Workspace, name: str, ids_of: Callable[[int, int], object], save: Callable | None = None) -> Path:
    """A folder of region masks for the world's val images: ``ids_of(h, w)`` each image's ids, written with
    ``save(path, ids)`` (default ``np.savez(path, instance_mask=ids)``)."""
    import numpy as np

    from vpltool import io

    folder = ws.root / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for image in sorted((ws.world / "images").glob("val_*.png")):
        ids = ids_of(*io.image_size(image))
        path = folder / f"{image.stem}.npz"
        (save or (lambda p, a: np.savez(p, instance_mask=a)))(path, ids)
        if save is not None and not path.exists():  # np.save appended .npy: the file a user named .npz
            path.with_name(path.name + ".npy").rename(path)
    return folder


def _halves(dtype: str = "int64", low: int = 0):
    """Region ids of a left and a right half: ``low`` and ``low + 1`` (as ``dtype``)."""
    import numpy as np

    def ids_of(h: int, w: int):
        ids = np.full((h, w), low, dtype=dtype)
        ids[:, w // 2:] = np.array(low, dtype=dtype) + np.array(1, dtype=dtype)
        return ids

    return ids_of


CORRCLIP = ["--dense", "corrclip", "--proxy-model", "test_vit", "--proxy-weights", TOY_DINO, *SEG_TINY]


@case("an np.save file named .npz as a region mask (segment --dense corrclip --region-masks; was a TypeError "
      "traceback)", "regions_npy/val_000000.npz: one bare array (np.save's .npy format), not an .npz archive",
      "np.savez(path, instance_mask=ids)")
def _regions_np_save(ws: Workspace) -> Iterator[list[object]]:
    import numpy as np

    folder = _regions(ws, "regions_npy", _halves(), save=np.save)
    yield ["segment", ws.world, "--split", "val", "--classes", "star,circle", "-o", ws.out("out"), "--region-masks",
           folder, *CORRCLIP]


@case("segment --dense corrclip --region-masks sam --sam-model toy --sam-weights none (random SAM weights, for "
      "tests; was a FileNotFoundError traceback)", "✓ segment (corrclip): 1 masks", exit_code=0,
      leaves=("out/", "out/*"))
def _regions_sam_none(ws: Workspace) -> Iterator[list[object]]:
    yield ["segment", ws.world, "--split", "val", "--classes", "star,circle", "-o", ws.out("out"), "--shard", "0/2",
           "--region-masks", "sam", "--sam-model", "toy", "--sam-weights", "none", *CORRCLIP]


@case("segment --dense corrclip --region-masks sam3 with segment-anything's SAM checkpoint as --sam-weights (SAM 3's "
      "weights are another model's; refused before any model loads)",
      "sam_vit.pth: holds no detector.* tensors, so it is not Meta's SAM 3 checkpoint", "facebook/sam3")
def _regions_sam3_of_sam(ws: Workspace) -> Iterator[list[object]]:
    import torch
    from safetensors.torch import load_file

    checkpoint = ws.root / "sam_vit.pth"  # a SAM release is torch.save of the whole Sam's tensors
    torch.save(load_file(str(CHECKOUT / "vpltool" / "assets" / "toy-sam" / "model.safetensors")), checkpoint)
    yield ["segment", ws.world, "--split", "val", "--classes", "star,circle", "-o", ws.out("out"), "--region-masks",
           "sam3", "--sam-weights", checkpoint, *CORRCLIP]


@case("segment --dense textregion --region-masks 'sam3:' (no concept after the colon)",
      "--region-masks sam3:: no concept after 'sam3:'", "sam3:WORD,WORD")
def _regions_sam3_no_concept(ws: Workspace) -> Iterator[list[object]]:
    yield ["segment", ws.world, "--split", "val", "--classes", "star,circle", "-o", ws.out("out"), "--dense",
           "textregion", "--region-masks", "sam3:", "--sam-weights", ws.root / "none_sam3", *TINY, *CPU]


@case("a region-mask file rewritten while segment --dense corrclip runs (after the run named the folder by its "
      "bytes; was ✓ with the old digest recorded and the mask made from the new bytes)",
      "regions_rewritten/val_000000.npz: changed while this run was using it", "run the command again",
      leaves=("regions_rewritten/val_000000.npz",))
def _regions_rewritten(ws: Workspace) -> Iterator[list[object]]:
    import numpy as np

    from vpltool.models.dense import corrclip

    folder = _regions(ws, "regions_rewritten", _halves())
    real = corrclip.Hooks.check_items

    def check_then_rewrite(self, items):  # the run has named every file by its digest: another writes one now
        real(self, items)
        with np.load(folder / "val_000000.npz") as data:
            ids = data["instance_mask"]
        np.savez(folder / "val_000000.npz", instance_mask=ids[:, ::-1].copy())  # the halves swapped

    with mock.patch.object(corrclip.Hooks, "check_items", check_then_rewrite):
        yield ["segment", ws.world, "--split", "val", "--classes", "star,circle", "-o", ws.out("out"),
               "--region-masks", folder, *CORRCLIP]


@case("a photo rewritten while segment runs (after the run named the dataset by its bytes; was ✓ with the old "
      "digest recorded)", "world_rewritten/images/val_000000.png: changed while this run was using it",
      leaves=("world_rewritten/images/val_000000.png",))
def _photo_rewritten(ws: Workspace) -> Iterator[list[object]]:
    from vpltool.io import stage

    world = ws.copy(ws.world, "world_rewritten")
    real = stage.StageFolder.todo

    def todo_then_rewrite(self, *args, **kwargs):  # the record names every image's bytes: one is rewritten now
        found = real(self, *args, **kwargs)
        shutil.copyfile(world / "images" / "val_000001.png", world / "images" / "val_000000.png")
        return found

    with mock.patch.object(stage.StageFolder, "todo", todo_then_rewrite):
        yield ["segment", world, "--split", "val", "--classes", "star,circle", "-o", ws.out("out"), "--dense",
               "maskclip", *SEG_TINY]


@case("region ids past 2^24 and uint64 ids past 2^63 (segment --dense corrclip; ids 2^24 and 2^24 + 1 merged "
      "through float32, and uint64 ids wrapped to negative ones): read exactly", "✓ segment (corrclip): 2 masks",
      exit_code=0, leaves=("out/", "out/*"))
def _regions_large_ids(ws: Workspace) -> Iterator[list[object]]:
    folder = _regions(ws, "regions_uint64", _halves("uint64", 1 << 63))
    yield ["segment", ws.world, "--split", "val", "--classes", "star,circle", "-o", ws.out("out"), "--region-masks",
           folder, *CORRCLIP]


@case("train-text --family talk2dino --recipe demo from a folder outside the checkout (once its toy DINO, a path "
      "relative to the checkout, was not found there)", "✓ train-text", exit_code=0,
      leaves=("t2d_demo/", "t2d_demo/*", "t2d_demo/checkpoints/", "t2d_demo/checkpoints/*"))
def _talk2dino_demo_elsewhere(ws: Workspace) -> Iterator[list[object]]:
    pairs = _pairs_folder(ws, "pairs_t2d")
    with contextlib.chdir(ws.root):  # not the checkout: the recipe's toy DINO is found from the package
        yield ["train-text", pairs.name, "--family", "talk2dino", "--recipe", "demo", "-o", "t2d_demo", "--batch-size",
               "2", "--crop-size", "64", "--workers", "1", *CPU]


@case("train-text --family talk2dino --set dino_weights= a file that is not there (once the line named "
      "--dino-weights, which train-text does not have)", "gone_dino.safetensors: DINO weights file not found",
      "--set dino_weights=FILE")
def _talk2dino_dino_missing(ws: Workspace) -> Iterator[list[object]]:
    pairs = _pairs_folder(ws, "pairs_t2d")
    yield ["train-text", pairs, "--family", "talk2dino", "--recipe", "demo", "-o", ws.out("out"), "--set",
           f"dino_weights={ws.root / 'gone_dino.safetensors'}", "--batch-size", "2", *CPU]


def _talk2dino_cached_run(ws: Workspace, name: str) -> tuple[Path, Path, list[str]]:
    """A finished `train-text --family talk2dino --recipe demo` run whose feature cache holds the 4 pairs' entries:
    (its pairs, its folder, the arguments that run it again over the folder)."""
    pairs, out = _pairs_folder(ws, "pairs_t2d"), ws.out(name)
    args = ["train-text", pairs, "--family", "talk2dino", "--recipe", "demo", "-o", out, "--batch-size", "2",
            "--crop-size", "32", "--workers", "1", *CPU]
    cli_ok(*args)
    return pairs, out, [*args, "--overwrite"]


@case("train-text --family talk2dino over a run folder whose feature-cache entry has a flipped byte in its tensors "
      "(cache/image/<kk>/<key>.safetensors)", "a damaged feature-cache entry (its tensors do not match their "
      "checksum); not used: its pair's features are computed again", exit_code=0, leaves=("t2d_cache/*",),
      numeric=True)
def _talk2dino_cache_entry_damaged(ws: Workspace) -> Iterator[list[object]]:
    _, out, again = _talk2dino_cached_run(ws, "t2d_cache")
    entry = sorted((out / "cache" / "image").glob("*/*.safetensors"))[0]
    data = bytearray(entry.read_bytes())
    data[-1] ^= 0xFF
    entry.write_bytes(bytes(data))
    yield again


@case("train-text --family talk2dino over a run folder whose feature cache was made by another DINO (--set "
      "dino_weights= other bytes)", "a feature cache made dino sha256:", "not used: it is cleared and made again",
      exit_code=0, leaves=("t2d_cache_dino/*", "-t2d_cache_dino/cache/*"), numeric=True)
def _talk2dino_cache_other_dino(ws: Workspace) -> Iterator[list[object]]:
    from safetensors.torch import load_file, save_file

    from vpltool.models.text.talk2dino import Talk2DINOTrainConfig

    _, _, again = _talk2dino_cached_run(ws, "t2d_cache_dino")
    dino = ws.root / "dino_t2d_cache.safetensors"
    state = load_file(Talk2DINOTrainConfig.RECIPES["demo"]["dino_weights"])
    state["cls_token"] = state["cls_token"] + 0.5
    save_file(state, str(dino))
    yield [*again, "--set", f"dino_weights={dino}"]


def _features_then_new_weights(ws: Workspace) -> tuple[Path, Path, Path]:
    """``extract`` and ``text-prototypes`` with a local-dir CLIP, then its weights replaced (made once)."""
    clip, features, text = ws.root / "clip_stages", ws.root / "features_local", ws.root / "text_local.safetensors"
    if not text.is_file():
        _local_clip(ws, "clip_stages")
        cli_ok("extract", ws.world, "--split", "val", "-o", ws.out("features_local"), "--model", f"local-dir:{clip}",
               *CPU, "--workers", "1")
        cli_ok("text-prototypes", features, "-o", text, *CPU)
        _replace_weights(clip)
    return clip, features, text


@case("the local-dir CLIP's weights replaced after extract (text-prototypes)",
      "features_local: made with the CLIP local-dir:clip_stages, whose weights changed since",
      "restore those weights, or re-make features_local")
def _weights_before_text_prototypes(ws: Workspace) -> Iterator[list[object]]:
    _, features, _ = _features_then_new_weights(ws)
    yield ["text-prototypes", features, "-o", ws.out("text_new.safetensors"), *CPU]


@case("the local-dir CLIP's weights replaced after extract and text-prototypes (cam)",
      "features_local: made with the CLIP local-dir:clip_stages, whose weights changed since")
def _weights_before_cam(ws: Workspace) -> Iterator[list[object]]:
    _, features, text = _features_then_new_weights(ws)
    yield ["cam", features, "-p", text, "-o", ws.out("out"), *CPU]


def _features_then_folder_renamed(ws: Workspace) -> tuple[Path, Path, Path]:
    """``extract`` and ``text-prototypes`` with a local-dir CLIP, then its folder renamed (made once): the records
    name a folder that is gone."""
    renamed, features, text = ws.root / "clip_renamed_later", ws.root / "features_renamed", ws.root / "text_renamed"
    if not renamed.is_dir():
        clip = _local_clip(ws, "clip_renamed_before")
        cli_ok("extract", ws.world, "--split", "val", "-o", ws.out("features_renamed"), "--model", f"local-dir:{clip}",
               *CPU, "--workers", "1")
        cli_ok("text-prototypes", features, "-o", text, *TEXT_ARGS, *CPU)
        clip.rename(renamed)
    return renamed, features, text


@case("the local-dir CLIP's folder renamed after extract, given by its new name to text-prototypes --model "
      "(accepted: the same bytes)", "✓ text-prototypes", exit_code=0, leaves=("text_at_renamed.safetensors",))
def _text_prototypes_at_renamed(ws: Workspace) -> Iterator[list[object]]:
    renamed, features, _ = _features_then_folder_renamed(ws)
    yield ["text-prototypes", features, "-o", ws.out("text_at_renamed.safetensors"), "--model", f"local-dir:{renamed}",
           *TEXT_ARGS, *CPU]


@case("the local-dir CLIP's folder renamed after extract and text-prototypes, given by its new name to cam --model "
      "(accepted: the same bytes)", "✓ cam: 2 images", exit_code=0, leaves=("cams_at_renamed/", "cams_at_renamed/*"))
def _cam_at_renamed(ws: Workspace) -> Iterator[list[object]]:
    renamed, features, text = _features_then_folder_renamed(ws)
    yield ["cam", features, "-p", text, "-o", ws.out("cams_at_renamed"), "--model", f"local-dir:{renamed}", *CPU]


@case("the local-dir CLIP's folder renamed after extract, prototypes re-made with text-prototypes --model NEW, then "
      "cam FEATURES -p those (accepted: the prototypes name where the same bytes lie now)", "✓ cam: 2 images",
      exit_code=0, leaves=("cams_protos_renamed/", "cams_protos_renamed/*"))
def _cam_by_prototypes_at_renamed(ws: Workspace) -> Iterator[list[object]]:
    renamed, features, _ = _features_then_folder_renamed(ws)
    text = ws.root / "text_made_at_renamed.safetensors"
    if not text.is_file():
        cli_ok("text-prototypes", features, "-o", text, "--model", f"local-dir:{renamed}", *TEXT_ARGS, *CPU)
    yield ["cam", features, "-p", text, "-o", ws.out("cams_protos_renamed"), *CPU]


@case("cam --model local-dir:OTHER, a folder of other weights than the CLIP the extract folder names",
      "local-dir:clip_other_weights: other weights than the CLIP features_renamed was made with "
      "(local-dir:clip_renamed_before, sha256 ", "give the model folder or file that holds those weights")
def _cam_at_other_weights(ws: Workspace) -> Iterator[list[object]]:
    _, features, text = _features_then_folder_renamed(ws)
    other = _local_clip(ws, "clip_other_weights")
    _replace_weights(other)
    yield ["cam", features, "-p", text, "-o", ws.out("out"), "--model", f"local-dir:{other}", *CPU]


@case("prototypes of the same local-dir CLIP name with other weights than the features' (cam)",
      "text_local.safetensors: made with other weights of CLIP local-dir:clip_stages", "same model")
def _prototypes_of_other_weights(ws: Workspace) -> Iterator[list[object]]:
    clip, _, text = _features_then_new_weights(ws)
    features = ws.root / "features_local_new"
    if not (features / "_stage.json").is_file():
        cli_ok("extract", ws.world, "--split", "val", "-o", ws.out("features_local_new"), "--model",
               f"local-dir:{clip}", *CPU, "--workers", "1")
    yield ["cam", features, "-p", text, "-o", ws.out("out"), *CPU]


@case("prototypes made for other classes", "cat_dog.safetensors", "2 classes", "same dataset")
def _other_classes(ws: Workspace) -> Iterator[list[object]]:
    path = ws.root / "cat_dog.safetensors"
    cli_ok("text-prototypes", "--classes", "cat,dog", *TINY, "--background", "sky", "--templates", "{}", "-o", path,
           *CPU)
    yield ["cam", ws.features, "-p", path, "-o", ws.out("out"), *CPU]


@case("CAM folder made from other features (learn-prototypes)", "cams_other", "other features",
      "re-run `vpltool cam`")
def _cams_of_other_features(ws: Workspace) -> Iterator[list[object]]:
    from vpltool import io

    cams = ws.copy(ws.cams, "cams_other")
    record = json.loads((cams / "_stage.json").read_text())
    record["inputs"]["features"] = "sha256:" + "0" * 64  # what a cam run on another extract folder records
    (cams / "_stage.json").write_text(json.dumps(io.seal(record)))  # sealed, as that run would have
    yield ["learn-prototypes", ws.features, "-c", cams, "-t", ws.text, "-o", ws.out("vision.safetensors"),
           "--iters", "2", *CPU]


@case("interrupted extract resumed with another --max-side", "features_interrupted",
      "an interrupted run made with other parameters (max_side differ)", "--overwrite")
def _resume_max_side(ws: Workspace) -> Iterator[list[object]]:
    folder = interrupted_copy(ws, ws.features, "features_interrupted")
    yield ["extract", ws.world, "--split", "train", "-o", folder, *TINY, *CPU, "--cache", "full", "--max-side", "64"]


@case("interrupted extract resumed with another --model", "features_interrupted", "(model differ)",
      "re-run with the same options to resume")
def _resume_model(ws: Workspace) -> Iterator[list[object]]:
    folder = interrupted_copy(ws, ws.features, "features_interrupted")
    yield ["extract", ws.world, "--split", "train", "-o", folder, "--model", "ViT-B-16", "--pretrained", "none", *CPU,
           "--cache", "full"]


@case("interrupted crf resumed with another --confidence", "pseudo_interrupted", "(confidence differ)",
      "--overwrite")
def _resume_crf(ws: Workspace) -> Iterator[list[object]]:
    folder = interrupted_copy(ws, ws.pseudo, "pseudo_interrupted")
    yield ["crf", ws.cams, "-o", folder, "--workers", "1", "--confidence", "0.5"]


@case("a batch larger than the pseudo masks (train-decoder --batch-size 100)",
      "pseudo: 4 pseudo masks cannot fill a batch of 100", "lower --batch-size (at most 4)")
def _batch_too_big(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-decoder", ws.pseudo, "-p", ws.text, "-o", ws.out("decoder_big_batch"), *DECODER_ARGS,
           "--batch-size", "100"]


@case("a confidence few CRF probabilities reach (crf --confidence 1.0)", "warning: 75.0% of the pixels",
      "--confidence 1", "lower --confidence", exit_code=0, leaves=("pseudo_all_ignored/", "pseudo_all_ignored/*"))
def _confidence_one(ws: Workspace) -> Iterator[list[object]]:
    yield ["crf", ws.cams, "-o", ws.out("pseudo_all_ignored"), "--workers", "1", "--confidence", "1.0"]


@case("pseudo masks whose every pixel is ignored (train-decoder)",
      "pseudo_255: every pixel of its 4 pseudo masks is 255 (ignored)", "lower --confidence")
def _all_ignored(ws: Workspace) -> Iterator[list[object]]:
    import numpy as np

    from vpltool import io

    pseudo = ws.copy(ws.pseudo, "pseudo_255")
    for png in sorted(pseudo.glob("*.png")):
        rewrite_mask(png, np.full_like(io.read_mask(png), 255))
    yield ["train-decoder", pseudo, "-p", ws.text, "-o", ws.out("decoder_255"), *DECODER_ARGS]


@case("interrupted decoder run re-run without --resume", "decoder_interrupted", "--resume", "--overwrite")
def _interrupted_decoder(ws: Workspace) -> Iterator[list[object]]:
    out = ws.copy(ws.decoder, "decoder_interrupted")
    (out / "decoder.safetensors").unlink()  # the checkpoint stays: what a killed run leaves
    yield ["train-decoder", ws.pseudo, "-p", ws.text, "-o", out, *DECODER_ARGS]


# ---- WeCLIP's recipe: image labels only (train-decoder --recipe weclip)
@case("pseudo-mask folder given to train-decoder --recipe weclip", "pseudo: a `crf` folder", "takes none",
      "give the dataset itself")
def _weclip_on_pseudo(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-decoder", ws.pseudo, "-p", ws.text, "-o", ws.out("decoder_weclip"), "--recipe", "weclip",
           *DECODER_ARGS]


@case("feature folder given to train-decoder --recipe weclip", "features: an `extract` folder", "takes none")
def _weclip_on_features(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-decoder", ws.features, "-p", ws.text, "-o", ws.out("decoder_weclip_f"), "--recipe", "weclip",
           *DECODER_ARGS]


@case("--resume of a vpl decoder run with --recipe weclip", "decoder_vpl", "--recipe vpl there, weclip here",
      "PSEUDO (the pseudo masks)")
def _weclip_resumes_vpl(ws: Workspace) -> Iterator[list[object]]:
    out = ws.copy(ws.decoder, "decoder_vpl")
    yield ["train-decoder", ws.world, "-p", ws.text, "-o", out, "--recipe", "weclip", "--resume", *DECODER_ARGS]


@case("train-decoder --recipe weclip+ without its DINO's weights offline", "vit_small_patch14_dinov2.lvd142m",
      "not in the local cache", "--dino-weights")
def _weclip_plus_offline(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-decoder", ws.world, "-p", ws.text, "-o", ws.out("decoder_weclip_plus"), "--recipe", "weclip+",
           *DECODER_ARGS]


# ---- damaged files
# learn-prototypes is the stage that reads 'dense' (cam reads the tokens, or recomputes them from the image)
@case("NaN in a features file's dense features", "features_nan/train_000000.safetensors", "'dense' contains NaN")
def _nan_features(ws: Workspace) -> Iterator[list[object]]:
    features = ws.copy(ws.features, "features_nan")
    _poison(ws.first_feature_file(features), "dense")
    yield ["learn-prototypes", features, "-c", ws.cams, "-t", ws.text, "-o", ws.out("vision.safetensors"),
           "--iters", "2", *CPU]


@case("NaN in a features file's cached attention", "features_nan_attention/train_000000.safetensors",
      "'attention' contains NaN")
def _nan_attention(ws: Workspace) -> Iterator[list[object]]:
    features = ws.copy(ws.features, "features_nan_attention")
    _poison(ws.first_feature_file(features), "attention")
    yield ["cam", features, "-p", ws.text, "-o", ws.out("out"), *CPU]


@case("NaN in a features file's cached last-block input", "features_nan_tokens/train_000000.safetensors",
      "'last_block_input' contains NaN")
def _nan_tokens(ws: Workspace) -> Iterator[list[object]]:
    features = ws.copy(ws.features, "features_nan_tokens")
    _poison(ws.first_feature_file(features), "last_block_input")
    yield ["cam", features, "-p", ws.text, "-o", ws.out("out"), *CPU]


@case("NaN in a CAM file (eval)", "cams_nan/train_000000.safetensors", "'cams' contains NaN")
def _nan_cams_eval(ws: Workspace) -> Iterator[list[object]]:
    cams = ws.copy(ws.cams, "cams_nan")
    _poison(cams / "train_000000.safetensors", "cams")
    yield ["eval", cams]


@case("NaN in a CAM file (learn-prototypes)", "cams_nan/train_000000.safetensors", "'cams' contains NaN")
def _nan_cams_learn(ws: Workspace) -> Iterator[list[object]]:
    cams = ws.copy(ws.cams, "cams_nan")
    _poison(cams / "train_000000.safetensors", "cams")
    yield ["learn-prototypes", ws.features, "-c", cams, "-t", ws.text, "-o", ws.out("vision.safetensors"),
           "--iters", "2", *CPU]


@case("truncated safetensors file", "features_truncated/train_000000.safetensors", "not a readable safetensors")
def _truncated_features(ws: Workspace) -> Iterator[list[object]]:
    features = ws.copy(ws.features, "features_truncated")
    path = ws.first_feature_file(features)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    yield ["cam", features, "-p", ws.text, "-o", ws.out("out"), *CPU]


@case("mask values outside the class range (eval)", "masks_out_of_range/train_000001.png", "mask values [50]",
      "outside 0..8")
def _masks_out_of_range(ws: Workspace) -> Iterator[list[object]]:
    import numpy as np

    from vpltool import io

    masks = ws.copy(ws.pseudo, "masks_out_of_range")
    mask = io.read_mask(masks / "train_000001.png").copy()
    mask[0, :5] = 50
    rewrite_mask(masks / "train_000001.png", mask.astype(np.uint8))
    yield ["eval", masks]


# given by --data, a copy whose ground truth differs from the one the stage recorded is refused before eval reads
# any mask (a copy is scored only if it is identical): the size check itself is met in place (extract's case below)
@case("ground-truth mask of another size than its image (eval --data of the copy)", "--data world_gt_size",
      "not the dataset", "a ground-truth mask differs under the same id")
def _gt_size(ws: Workspace) -> Iterator[list[object]]:
    from PIL import Image

    world = ws.copy(ws.world, "world_gt_size")
    gt = world / "masks" / "train_000000.png"
    with Image.open(gt) as img:
        img.resize((48, 48), Image.NEAREST).save(gt)
    yield ["eval", ws.cams, "--data", world, "--split", "train"]


@case("RGB colour masks instead of class-index PNGs (eval)", "masks_rgb/train_000000.png", "not RGB")
def _rgb_masks(ws: Workspace) -> Iterator[list[object]]:
    from PIL import Image

    masks = ws.out("masks_rgb")
    masks.mkdir()
    for png in sorted((ws.world / "masks").glob("train_*.png")):
        Image.open(png).convert("RGB").save(masks / png.name)
    yield ["eval", masks, "--data", ws.world, "--split", "train"]


# ---- the output folder
@case("output folder locked by another run", "cams_locked", "another vpltool run is writing here")
def _locked(ws: Workspace) -> Iterator[list[object]]:
    from vpltool import io

    out = ws.out("cams_locked")
    with io.output_lock(out):
        yield ["cam", ws.features, "-p", ws.text, "-o", out, *CPU]


@case("output file is a FIFO (or a device such as /dev/null)", "fifo: exists and is not a regular file",
      "never replaced")
def _fifo_output(ws: Workspace) -> Iterator[list[object]]:
    fifo = ws.out("fifo")
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo)
    yield ["text-prototypes", ws.features, "-o", fifo, *TEXT_ARGS, *CPU]


@case("output file is an existing folder (checked before the model loads)", "features: is a folder",
      "give --out a file name")
def _folder_output(ws: Workspace) -> Iterator[list[object]]:
    yield ["text-prototypes", ws.features, "-o", ws.features, *TEXT_ARGS, *CPU]


@case("loss-curve path is an existing folder (learn-prototypes --plot, checked before the descent)",
      "features: is a folder", "give --plot a file name")
def _plot_folder(ws: Workspace) -> Iterator[list[object]]:
    yield ["learn-prototypes", ws.features, "-c", ws.cams, "-t", ws.text, "-o", ws.out("vision.safetensors"),
           "--plot", ws.features, "--iters", "2", *CPU]


@case("output folder is an existing file (train-decoder)", "decoder_file: exists and is not a folder")
def _file_output(ws: Workspace) -> Iterator[list[object]]:
    target = ws.out("decoder_file")
    target.write_text("not a folder")
    yield ["train-decoder", ws.pseudo, "-p", ws.text, "-o", target, *DECODER_ARGS]


@contextlib.contextmanager
def failing_writes(code: int, after: int = 1) -> Iterator[None]:
    """Atomic writes fail with ``OSError(code)`` once ``after`` of them succeeded, half-way through the file.

    The real :func:`vpltool.io.atomic_path` and :func:`vpltool.io.atomic_write` run around the fault, so their
    clean-up and their message are what is tested; only the disk is fake. The fault comes where both rename a
    finished temporary into place (``files._renamed_onto``), the one place every write goes through.
    """
    from vpltool.io import files

    real = files._renamed_onto
    done = [0]

    @contextlib.contextmanager
    def renamed_onto(tmp, path):
        with real(tmp, path):
            yield
            if done[0] >= after:
                os.truncate(tmp, os.stat(tmp).st_size // 2)  # the disk filled up mid-file
                raise OSError(code, os.strerror(code), str(tmp))
            done[0] += 1

    with mock.patch.object(files, "_renamed_onto", renamed_onto):
        yield


@case("disk full while writing (simulated ENOSPC)", "no space left on device writing cams_full/train_000000")
def _disk_full(ws: Workspace) -> Iterator[list[object]]:
    with failing_writes(errno.ENOSPC):
        yield ["cam", ws.features, "-p", ws.text, "-o", ws.out("cams_full"), *CPU]


@case("permission denied on the output (simulated EACCES)", "permission denied writing pseudo_denied/train_000000")
def _permission_denied(ws: Workspace) -> Iterator[list[object]]:
    with failing_writes(errno.EACCES):
        yield ["crf", ws.cams, "-o", ws.out("pseudo_denied"), "--workers", "1"]


@case("read-only file system (simulated EROFS)", "read-only file system writing text_ro.safetensors")
def _read_only(ws: Workspace) -> Iterator[list[object]]:
    with failing_writes(errno.EROFS, after=0):
        yield ["text-prototypes", ws.features, "-o", ws.out("text_ro.safetensors"), *TEXT_ARGS, *CPU]


@case("disk full while appending to the training log (simulated ENOSPC)",
      "no space left on device writing decoder_full/log.jsonl",
      leaves=("decoder_full/", "decoder_full/.vpltool.lock"))  # the first iteration's line is the first write
def _log_full(ws: Workspace) -> Iterator[list[object]]:
    from vpltool.io import training

    def append_line(path, line):  # an OSError no library code converted: the CLI's last line of defence
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    with mock.patch.object(training, "append_line", append_line):  # where append_log finds it
        yield ["train-decoder", ws.pseudo, "-p", ws.text, "-o", ws.out("decoder_full"), *DECODER_ARGS]


# ---- environment
@case("--device cuda without CUDA", "--device cuda", "CUDA is not available")
def _no_cuda(ws: Workspace) -> Iterator[list[object]]:
    import torch

    with mock.patch.object(torch.cuda, "is_available", lambda: False):
        yield ["extract", ws.world, "--split", "train", "-o", ws.out("out"), *TINY, "--device", "cuda"]


@case("unknown model name", "ViT-Nope-99", "unknown to open_clip")
def _unknown_model(ws: Workspace) -> Iterator[list[object]]:
    yield ["extract", ws.world, "--split", "train", "-o", ws.out("out"), "--model", "ViT-Nope-99",
           "--pretrained", "none", *CPU]


@case("pretrained tag offline, weights not cached", "not in the local cache", "--pretrained /path/to/ViT-B-16")
def _offline_tag(ws: Workspace) -> Iterator[list[object]]:
    import huggingface_hub.constants as hf_constants

    hub = ws.out("empty_hf_cache")
    with mock.patch.dict(os.environ, {"HF_HUB_OFFLINE": "1", "HF_HOME": str(hub)}), \
            mock.patch.object(hf_constants, "HF_HUB_CACHE", str(hub / "hub")):  # read at import: patch it too
        yield ["extract", ws.world, "--split", "train", "-o", ws.out("out"), "--model", "ViT-B-16",
               "--pretrained", "openai", *CPU]


@case("weights file not found", "missing.safetensors: weights file not found")
def _missing_weights(ws: Workspace) -> Iterator[list[object]]:
    yield ["extract", ws.world, "--split", "train", "-o", ws.out("out"), "--model", "vpl-test-vit",
           "--pretrained", ws.root / "missing.safetensors", *CPU]


@case("the toy CLIP on words outside the demo world (said once, read as its unknown-word token; the words of the "
      "default template, which the user never typed, counted, not named)",
      "warning: the toy CLIP does not know 'camera':", "one unknown-word token", "and 2 words of vpltool's default "
      "templates",
      "it knows only the demo world's 56 words", exit_code=0,
      leaves=("toy.safetensors",))
def _toy_words(ws: Workspace) -> Iterator[list[object]]:
    yield ["text-prototypes", "--classes", "camera", "--model", "vpltool-toy", "-o", ws.out("toy.safetensors"), *CPU]


@case("CRF extra (pydensecrf2) not installed", "pip install -e '.[crf]'", "--no-crf")
def _no_pydensecrf(ws: Workspace) -> Iterator[list[object]]:
    with mock.patch.dict(sys.modules, {"pydensecrf": None, "pydensecrf.densecrf": None}):  # import fails
        yield ["crf", ws.cams, "-o", ws.out("out"), "--workers", "1"]


# ---- options
@case("bad option value", "--parity 'caffe'", "none or clip-es")
def _bad_option(ws: Workspace) -> Iterator[list[object]]:
    yield ["crf", ws.cams, "-o", ws.out("out"), "--parity", "caffe"]


@case("bad --shard", "--shard 2/2")
def _bad_shard(ws: Workspace) -> Iterator[list[object]]:
    yield ["extract", ws.world, "-o", ws.out("out"), *TINY, "--shard", "2/2"]


@case("input side too small (--image-size 1)", "--image-size 1: must be >= 32 pixels")
def _image_size_1(ws: Workspace) -> Iterator[list[object]]:
    yield ["extract", ws.world, "-o", ws.out("out"), *TINY, "--image-size", "1"]


@case("no room to shrink (--max-side 0)", "--max-side 0: must be >= 32 pixels")
def _max_side_0(ws: Workspace) -> Iterator[list[object]]:
    yield ["extract", ws.world, "-o", ws.out("out"), *TINY, "--max-side", "0"]


@case("negative softmax temperature (cam --temperature -0.01)", "--temperature -0.01: must be a number above 0")
def _negative_temperature(ws: Workspace) -> Iterator[list[object]]:
    yield ["cam", ws.features, "-p", ws.text, "-o", ws.out("out"), "--temperature", "-0.01", *CPU]


@case("step size that diverges at once (learn-prototypes --lr 1e30)", "--lr 1e+30", "at most 1000")
def _huge_lr(ws: Workspace) -> Iterator[list[object]]:
    yield ["learn-prototypes", ws.features, "-c", ws.cams, "-t", ws.text, "-o", ws.out("vision.safetensors"),
           "--lr", "1e30", *CPU]


@case("negative memory budget (learn-prototypes --max-memory-gb -5)", "--max-memory-gb -5.0: must be a number above 0")
def _negative_memory(ws: Workspace) -> Iterator[list[object]]:
    yield ["learn-prototypes", ws.features, "-c", ws.cams, "-t", ws.text, "-o", ws.out("vision.safetensors"),
           "--max-memory-gb", "-5", *CPU]


@case("negative worker count (crf --workers -1)", "--workers -1: must be >= 0", "0 = one per CPU core")
def _negative_workers(ws: Workspace) -> Iterator[list[object]]:
    yield ["crf", ws.cams, "-o", ws.out("out"), "--workers", "-1"]


@case("--workers 0 (one image decoder per CPU core, as in crf)", "✓ extract: 4 images", exit_code=0,
      leaves=("features_w0/", "features_w0/*"))
def _workers_zero(ws: Workspace) -> Iterator[list[object]]:
    yield ["extract", ws.world, "--split", "train", "-o", ws.out("features_w0"), *TINY, *CPU, "--workers", "0"]


@case("scales that are not numbers (predict --scales abc)", "--scales 'abc'", "comma-separated numbers")
def _scales_abc(ws: Workspace) -> Iterator[list[object]]:
    yield ["predict", ws.decoder / "decoder.safetensors", "--split", "val", "-o", ws.out("out"), "--scales", "abc",
           *CPU]


@case("no scales (predict --scales '')", "--scales is empty")
def _scales_empty(ws: Workspace) -> Iterator[list[object]]:
    yield ["predict", ws.decoder / "decoder.safetensors", "--split", "val", "-o", ws.out("out"), "--scales", "", *CPU]


@case("a test view too large for attention memory (predict --long-side 8000)",
      "val_000000.png: its largest test view, 8000x8000 pixels,",
      "patch tokens", "--max-tokens 4096", "pass --long-side")
def _long_side_huge(ws: Workspace) -> Iterator[list[object]]:
    yield ["predict", ws.decoder / "decoder.safetensors", "--split", "val", "-o", ws.out("out"), "--long-side", "8000",
           *CPU]


@case("background exponents that are not numbers (eval --bg-exponents abc)", "--bg-exponents 'abc'",
      "comma-separated numbers")
def _bg_exponents_abc(ws: Workspace) -> Iterator[list[object]]:
    yield ["eval", ws.cams, "--bg-exponents", "abc"]


@case("eval --data of a copy without ground-truth masks", "--data world_no_masks", "not the dataset",
      "a ground-truth mask differs under the same id")
def _eval_without_masks(ws: Workspace) -> Iterator[list[object]]:
    world = ws.copy(ws.world, "world_no_masks")
    shutil.rmtree(world / "masks")
    yield ["eval", ws.pseudo, "--data", world, "--split", "train"]


@case("a manifest whose 'gt' file is missing (eval --data of it)", "--data manifest.json", "not the dataset",
      "a ground-truth mask differs under the same id")
def _manifest_gt_missing(ws: Workspace) -> Iterator[list[object]]:
    from vpltool.data import open_dataset, write_manifest

    manifest = write_manifest(open_dataset(ws.world, "train"), ws.root / "manifest.json")
    data = json.loads(manifest.read_text())
    data["items"][0]["gt"] = "world/masks/gone.png"
    manifest.write_text(json.dumps(data))
    yield ["eval", ws.pseudo, "--data", manifest]


@case("eval of a bare mask folder without --data", "bare_masks", "--data")
def _eval_without_data(ws: Workspace) -> Iterator[list[object]]:
    masks = ws.copy(ws.world / "masks", "bare_masks")
    yield ["eval", masks]


# ---- branch inputs (issue 20): dataset and table inputs
def _extract(ws: Workspace, data: Path, out: str, *extra: object) -> list[object]:
    return ["extract", data, *extra, "-o", ws.out(out), *TINY, *CPU, "--workers", "1"]


def _voc_world(ws: Workspace, name: str) -> Path:
    """`make-world --layout voc` (seed 1: no empty scene), as the CLI writes it."""
    world = ws.out(name)
    cli_ok("make-world", world, "--train", "4", "--val", "1", "--seed", "1", "--layout", "voc")
    return world


def _edit_labels(ws: Workspace, name: str, edit: Callable[[str], str], classes_txt: bool = True) -> Path:
    """A copy of the world whose labels.csv is ``edit(text)`` (and without classes.txt unless asked)."""
    world = ws.copy(ws.world, name)
    labels = world / "labels.csv"
    labels.write_text(edit(labels.read_text()), encoding="utf-8")
    if not classes_txt:
        (world / "classes.txt").unlink()
    return world


@case("`make-world --layout voc`, then extract (the VOC reader follows the world's classes.txt)",
      "✓ extract: 4 images", exit_code=0, leaves=("features_voc/", "features_voc/*"))
def _make_world_voc(ws: Workspace) -> Iterator[list[object]]:
    yield _extract(ws, _voc_world(ws, "world_voc"), "features_voc", "--split", "train")


@case("a VOC root of other classes without classes.txt", "world_voc_nc/Annotations/train_000000.xml: unknown class",
      "list this dataset's classes in world_voc_nc/classes.txt", "without it a VOC root has the 20 VOC classes")
def _voc_no_classes(ws: Workspace) -> Iterator[list[object]]:
    world = _voc_world(ws, "world_voc_nc")
    (world / "classes.txt").unlink()
    yield _extract(ws, world, "out", "--split", "train")


@case("VOC annotation with no <object> (warned, read as background only)",
      "warning: 1 image has no labels: train_000001 (world_voc_empty/Annotations)", "read as background only",
      exit_code=0, leaves=("features_voc_empty/", "features_voc_empty/*"))
def _voc_no_object(ws: Workspace) -> Iterator[list[object]]:
    import re as re_

    world = _voc_world(ws, "world_voc_empty")
    xml = world / "Annotations" / "train_000001.xml"
    xml.write_text(re_.sub(r"<object>.*</object>", "", xml.read_text(), flags=re_.S))
    yield _extract(ws, world, "features_voc_empty", "--split", "train")


@case("split-file ids with a dot and a space (img.v2, chat noir é)", "✓ extract: 4 images", exit_code=0,
      leaves=("features_ids/", "features_ids/*"))
def _dotted_ids(ws: Workspace) -> Iterator[list[object]]:
    world = ws.copy(ws.world, "world_ids")
    for old, new in (("train_000000", "img.v2"), ("train_000001", "chat noir é")):
        for folder in ("images", "masks"):
            (world / folder / f"{old}.png").rename(world / folder / f"{new}.png")
        for name in ("labels.csv", "splits/train.txt"):
            (world / name).write_text((world / name).read_text().replace(old, new), encoding="utf-8")
    yield _extract(ws, world, "features_ids", "--split", "train")


@case("an extra column in labels.csv (id,labels,date), no classes.txt", "world_date/labels.csv: unknown column 'date'",
      "the columns are id,labels")
def _extra_column(ws: Workspace) -> Iterator[list[object]]:
    world = _edit_labels(ws, "world_date", lambda t: "\n".join(
        row + (",date" if i == 0 else ",2023-05-01") for i, row in enumerate(t.splitlines())) + "\n", False)
    yield _extract(ws, world, "out")


@case("labels.csv whose header does not start with id (image,labels)",
      "world_header/labels.csv: the header must start with id,labels (found 'image,labels')")
def _header_image(ws: Workspace) -> Iterator[list[object]]:
    yield _extract(ws, _edit_labels(ws, "world_header", lambda t: t.replace("id,labels", "image,labels", 1)), "out")


@case("semicolon-delimited labels.csv (Excel in many locales)", "world_semicolon/labels.csv: semicolon-delimited",
      "save it as comma-separated id,labels")
def _semicolon_csv(ws: Workspace) -> Iterator[list[object]]:
    yield _extract(ws, _edit_labels(ws, "world_semicolon", lambda t: t.replace(",", ";")), "out")


@case("tab-delimited labels.csv", "world_tab/labels.csv: tab-delimited", "save it as comma-separated id,labels")
def _tab_csv(ws: Workspace) -> Iterator[list[object]]:
    yield _extract(ws, _edit_labels(ws, "world_tab", lambda t: t.replace(",", "\t")), "out")


def _manifest_with_labels(ws: Workspace, labels: object) -> Path:
    from vpltool.data import open_dataset, write_manifest

    manifest = write_manifest(open_dataset(ws.world, "train"), ws.root / "manifest_labels.json")
    data = json.loads(manifest.read_text())
    data["items"][0]["labels"] = labels
    manifest.write_text(json.dumps(data))
    return manifest


@case("manifest labels given as a string (\"labels\": \"12\")", "manifest_labels.json: item 'train_000000' has "
      "'labels' \"12\"", "must be a list of class indices (ints), e.g. [1, 3]")
def _manifest_string_labels(ws: Workspace) -> Iterator[list[object]]:
    yield _extract(ws, _manifest_with_labels(ws, "12"), "out")


@case("manifest labels given as a name (\"labels\": \"x\")", "item 'train_000000' has 'labels' \"x\"",
      "must be a list of class indices")
def _manifest_name_labels(ws: Workspace) -> Iterator[list[object]]:
    yield _extract(ws, _manifest_with_labels(ws, "x"), "out")


@case("an image of an unsupported type (.gif)", "image for id 'train_000000' is world_gif/images/train_000000.gif",
      ".gif images are not supported", "convert it to one of .jpg, .jpeg, .png, .bmp, .webp")
def _gif_image(ws: Workspace) -> Iterator[list[object]]:
    from PIL import Image

    world = ws.copy(ws.world, "world_gif")
    png = world / "images" / "train_000000.png"
    with Image.open(png) as img:
        img.save(png.with_suffix(".gif"))
    png.unlink()
    yield _extract(ws, world, "out", "--split", "train")


@case("an empty labels cell (warned, read as background only)",
      "warning: 1 image has no labels: train_000001 (world_empty_cell/labels.csv)", exit_code=0,
      leaves=("features_empty_cell/", "features_empty_cell/*"))
def _empty_cell(ws: Workspace) -> Iterator[list[object]]:
    world = _edit_labels(ws, "world_empty_cell", lambda t: re.sub(r"(?m)^train_000001,.*$", "train_000001,", t))
    yield _extract(ws, world, "features_empty_cell", "--split", "train")


@case("class names that differ only in case (Ring, ring), no classes.txt",
      "world_case/labels.csv: labels 'Ring' and 'ring' differ only in case", "use one spelling")
def _case_variants(ws: Workspace) -> Iterator[list[object]]:
    world = _edit_labels(ws, "world_case", lambda t: re.sub(r"(?m)^train_000001,.*$", "train_000001,Ring;cross", t)
                         .replace("train_000000,", "train_000000,ring;"), False)
    yield _extract(ws, world, "out")


@case("an id written with its extension (train_000000.png,...)",
      "id 'train_000000.png' is written with its extension; ids are file stems: write 'train_000000'")
def _id_with_extension(ws: Workspace) -> Iterator[list[object]]:
    yield _extract(ws, _edit_labels(ws, "world_ext", lambda t: t.replace("train_000000,", "train_000000.png,")), "out")


@case("a multi-word class written without ';' (potted plant)",
      "world_words/labels.csv: the labels of id 'train_000000' ('potted plant') are split at spaces",
      "separate labels with ';'")
def _multi_word(ws: Workspace) -> Iterator[list[object]]:
    world = _edit_labels(ws, "world_words", lambda t: re.sub(r"(?m)^train_000000,.*$", "train_000000,potted plant", t))
    with open(world / "classes.txt", "a") as fh:
        fh.write("potted plant\n")
    yield _extract(ws, world, "out")


@case("ground-truth mask of another size than its image (refused by extract, before the model loads)",
      "world_gt_small/masks/train_000000.png: ground truth of image 'train_000000' is 48x48 but the image is 96x96",
      "a GT mask must have its image's size")
def _gt_size_extract(ws: Workspace) -> Iterator[list[object]]:
    from PIL import Image

    world = ws.copy(ws.world, "world_gt_small")
    gt = world / "masks" / "train_000000.png"
    with Image.open(gt) as img:
        img.resize((48, 48), Image.NEAREST).save(gt)
    yield _extract(ws, world, "out", "--split", "train")


@case("a 1x1 image", "world_1px/images/train_000001.png: 1x1 pixels, too small to segment",
      "at least 16 pixels a side")
def _one_pixel(ws: Workspace) -> Iterator[list[object]]:
    from PIL import Image

    world = ws.copy(ws.world, "world_1px")
    Image.new("RGB", (1, 1), (90, 120, 60)).save(world / "images" / "train_000001.png")
    (world / "masks" / "train_000001.png").unlink()
    yield _extract(ws, world, "out", "--split", "train")


@case("a 400-megapixel image (a 20000x20000 PNG header)", "world_400mp/images/train_000001.png: 400 megapixels",
      "shrink the file itself", "--max-side resizes an image only after it is decoded")
def _huge_pixels(ws: Workspace) -> Iterator[list[object]]:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    world = ws.copy(ws.world, "world_400mp")
    # only the header is ever read (the refusal comes from it), so the pixel data can be a stub
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    (world / "images" / "train_000001.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))
    yield _extract(ws, world, "out", "--split", "train")


@case("a fully transparent RGBA image (warned: it decodes to black)",
      "warning: world_clear/images/train_000001.png: fully transparent (alpha 0 in every pixel)",
      "save it without its alpha channel", exit_code=0, leaves=("features_clear/", "features_clear/*"))
def _transparent(ws: Workspace) -> Iterator[list[object]]:
    from PIL import Image

    world = ws.copy(ws.world, "world_clear")
    path = world / "images" / "train_000001.png"
    with Image.open(path) as img:
        rgba = img.convert("RGBA")
    rgba.putalpha(0)
    rgba.save(path)
    yield _extract(ws, world, "features_clear", "--split", "train")


# ---- branch `options` (issue 20): metadata, cross-stage options, degenerate runs, messages
def _resaved_prototypes(ws: Workspace, name: str, **meta: str | None) -> Path:
    """A copy of the text prototypes with metadata entries replaced (``None``: removed), tensors unchanged."""
    from safetensors.torch import save_file

    tensors, header = _tensors_and_meta(ws.text)
    for key, value in meta.items():
        header.pop(f"vpltool.{key}", None)
        if value is not None:
            header[f"vpltool.{key}"] = value
    path = ws.root / name
    save_file(tensors, str(path), metadata=header)
    return path


@case("prototypes file whose temperature is 0 (metadata)", "temp0.safetensors: metadata 'vpltool.temperature' is "
      "'0', not a finite number > 0", "re-create it")
def _temperature_zero(ws: Workspace) -> Iterator[list[object]]:
    yield ["cam", ws.features, "-p", _resaved_prototypes(ws, "temp0.safetensors", temperature="0"), "-o",
           ws.out("out"), *CPU]


@case("prototypes file whose temperature is not a number (metadata)",
      "temp_abc.safetensors: metadata 'vpltool.temperature' is 'abc', not a finite number > 0")
def _temperature_abc(ws: Workspace) -> Iterator[list[object]]:
    yield ["cam", ws.features, "-p", _resaved_prototypes(ws, "temp_abc.safetensors", temperature="abc"), "-o",
           ws.out("out"), *CPU]


@case("prototypes file whose model entry is not JSON (metadata)",
      "model_text.safetensors: metadata 'vpltool.model' is 'ViT-B-16'", "a JSON object naming the CLIP")
def _model_not_json(ws: Workspace) -> Iterator[list[object]]:
    yield ["cam", ws.features, "-p", _resaved_prototypes(ws, "model_text.safetensors", model="ViT-B-16"), "-o",
           ws.out("out"), *CPU]


@case("prototypes file without its class list (metadata)",
      "no_classes.safetensors: metadata 'vpltool.classes' missing")
def _no_classes(ws: Workspace) -> Iterator[list[object]]:
    yield ["cam", ws.features, "-p", _resaved_prototypes(ws, "no_classes.safetensors", classes=None), "-o",
           ws.out("out"), *CPU]


@case("_stage.json that is valid JSON but a list", "features_list_record/_stage.json: not a vpltool stage record "
      "(a JSON list, not an object)")
def _record_list(ws: Workspace) -> Iterator[list[object]]:
    features = ws.copy(ws.features, "features_list_record")
    (features / "_stage.json").write_text("[]\n")
    yield ["cam", features, "-p", ws.text, "-o", ws.out("out"), *CPU]


@case("_stage.json with keys missing", "features_short_record/_stage.json: not a vpltool stage record (no "
      "'params')", "re-run `vpltool extract` there with --overwrite")
def _record_short(ws: Workspace) -> Iterator[list[object]]:
    features = ws.copy(ws.features, "features_short_record")
    (features / "_stage.json").write_text('{"stage": "extract"}\n')
    yield ["cam", features, "-p", ws.text, "-o", ws.out("out"), *CPU]


@case("_run.json that is valid JSON but a string (a resumed cam)",
      "cams_bad_run/_run.json: not a vpltool run record (a JSON str, not an object)")
def _run_record_string(ws: Workspace) -> Iterator[list[object]]:
    cams = interrupted_copy(ws, ws.cams, "cams_bad_run")
    (cams / "_run.json").write_text('"cam"\n')
    yield ["cam", ws.features, "-p", ws.text, "-o", cams, *CPU]


@case("cam on an extract folder made with --attention-blocks 2 (full cache)", "✓ cam: 4 images", exit_code=0,
      leaves=("cams_ab2/", "cams_ab2/*"))
def _attention_blocks_2(ws: Workspace) -> Iterator[list[object]]:
    features = ws.out("features_ab2")
    yield from _extract_then_cam(ws, features, ws.out("cams_ab2"), "--attention-blocks", "2", "--cache", "full")


@case("cam on an extract folder made with --attention-blocks 1 (light cache)", "✓ cam: 4 images", exit_code=0,
      leaves=("cams_ab1/", "cams_ab1/*"))
def _attention_blocks_1(ws: Workspace) -> Iterator[list[object]]:
    yield from _extract_then_cam(ws, ws.out("features_ab1"), ws.out("cams_ab1"), "--attention-blocks", "1")


def _extract_then_cam(ws: Workspace, features: Path, cams: Path, *extract_options: str) -> Iterator[list[object]]:
    """The extract run is the case's set-up (before the disk is compared); the cam run is the case."""
    cli_ok("extract", ws.world, "--split", "train", "-o", features, *TINY, *CPU, "--workers", "1",
           *extract_options)
    yield ["cam", features, "-p", ws.text, "-o", cams, *CPU]


@case("cam --attention-blocks that the extract cache cannot serve", "cam --attention-blocks 3",
      "extracted with --attention-blocks 8", "drop the option", "re-run extract with --attention-blocks 3")
def _attention_blocks_mismatch(ws: Workspace) -> Iterator[list[object]]:
    yield ["cam", ws.features, "-p", ws.text, "-o", ws.out("out"), "--attention-blocks", "3", *CPU]


@case("negative seed (make-world --seed -1)", "--seed -1: must be an integer from 0 to 4294967295")
def _make_world_negative_seed(ws: Workspace) -> Iterator[list[object]]:
    yield ["make-world", ws.out("world_negative_seed"), "--train", "1", "--val", "0", "--seed", "-1"]


@case("negative seed (train-decoder --seed -1)", "--seed -1: must be an integer from 0 to 4294967295")
def _decoder_negative_seed(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-decoder", ws.pseudo, "-p", ws.text, "-o", ws.out("decoder_seed"), *DECODER_ARGS, "--seed", "-1"]


@case("negative seed (train-toy-clip --seed -1)", "--seed -1: must be an integer from 0 to 4294967295")
def _toy_clip_negative_seed(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-toy-clip", ws.out("toy_seed"), "--steps", "1", "--seed", "-1"]


@case("huge scene size (make-world --size 100000)", "--size 100000: must be at most 2048 pixels")
def _huge_world(ws: Workspace) -> Iterator[list[object]]:
    yield ["make-world", ws.out("world_huge"), "--train", "1", "--val", "0", "--size", "100000"]


@case("a pseudo mask with a value above the class count (train-decoder)", "pseudo_50/train_000002.png",
      "mask values [50] outside 0..8")
def _pseudo_out_of_range(ws: Workspace) -> Iterator[list[object]]:
    import numpy as np

    from vpltool import io

    pseudo = ws.copy(ws.pseudo, "pseudo_50")
    mask = io.read_mask(pseudo / "train_000002.png").copy()
    mask[-1, -1] = 50  # one corner pixel: a random crop may never sample it, every mask is checked first
    rewrite_mask(pseudo / "train_000002.png", mask.astype(np.uint8))
    yield ["train-decoder", pseudo, "-p", ws.text, "-o", ws.out("decoder_50"), *DECODER_ARGS]


@case("a template with two {} (text-prototypes)", "--templates 'a {} and {}': has 2 '{}' fields",
      "needs exactly one")
def _two_braces(ws: Workspace) -> Iterator[list[object]]:
    yield ["text-prototypes", ws.features, "-o", ws.out("t2.safetensors"), "--templates", "a {} and {}",
           "--background", "sky", *CPU]


@case("a template that is not a format string (text-prototypes)", "--templates 'a {} of {'",
      "not a valid format string")
def _bad_format(ws: Workspace) -> Iterator[list[object]]:
    yield ["text-prototypes", ws.features, "-o", ws.out("t3.safetensors"), "--templates", "a {} of {",
           "--background", "sky", *CPU]


@case("a temperature at which the loss cannot move (learn-prototypes --tau-i 1e-30)",
      "the loss did not move in 3 iterations", "--tau-i 1e-30", "nothing was written")
def _stuck_descent(ws: Workspace) -> Iterator[list[object]]:
    yield ["learn-prototypes", ws.features, "-c", ws.cams, "-t", ws.text, "-o", ws.out("stuck.safetensors"),
           "--tau-i", "1e-30", "--iters", "3", *CPU]


@case("a softmax temperature below float32's reach (cam --temperature 1e-30)",
      "--temperature 1e-30: must be >= 0.001", "GradCAM's gradients vanish")
def _tiny_temperature(ws: Workspace) -> Iterator[list[object]]:
    yield ["cam", ws.features, "-p", ws.text, "-o", ws.out("out"), "--temperature", "1e-30", *CPU]


@case("'background' among the class names (text-prototypes --classes)",
      "--classes: 'background' is class 0 already")
def _background_class(ws: Workspace) -> Iterator[list[object]]:
    yield ["text-prototypes", "--classes", "background,cat", *TINY, "--templates", "{}", "--background", "sky",
           "-o", ws.out("bg.safetensors"), *CPU]


@case("a class named twice (text-prototypes --classes)", "--classes: 'cat' and 'Cat' are named twice")
def _class_twice(ws: Workspace) -> Iterator[list[object]]:
    yield ["text-prototypes", "--classes", "cat,Cat", *TINY, "--templates", "{}", "--background", "sky",
           "-o", ws.out("cc.safetensors"), *CPU]


@case("a background word that is also a class (text-prototypes --background)",
      "--background: 'star' is also a class")
def _background_is_class(ws: Workspace) -> Iterator[list[object]]:
    yield ["text-prototypes", ws.features, "-o", ws.out("bgc.safetensors"), "--templates", "{}", "--background",
           "star,sky", *CPU]


@case("train-decoder interrupted (Ctrl-C) before its first checkpoint (nothing to resume: said)", "interrupted: no "
      "checkpoint was written yet", "re-running starts again from iteration 0", exit_code=130,
      leaves=("decoder_ctrl_c/", "decoder_ctrl_c/.vpltool.lock"))
def _decoder_ctrl_c(ws: Workspace) -> Iterator[list[object]]:
    from vpltool.stages import train_decoder

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    with mock.patch.object(train_decoder._Run, "loop", interrupt):
        yield ["train-decoder", ws.pseudo, "-p", ws.text, "-o", ws.out("decoder_ctrl_c"), *DECODER_ARGS]


@case("train-decoder --resume interrupted (Ctrl-C) after a checkpoint", "interrupted: the last checkpoint is kept; "
      "re-run the same command to continue from it", exit_code=130,
      leaves=("decoder_ctrl_c_resumed/log.jsonl",))
def _decoder_ctrl_c_resumed(ws: Workspace) -> Iterator[list[object]]:
    from vpltool.stages import train_decoder

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    folder = ws.copy(ws.decoder, "decoder_ctrl_c_resumed")
    (folder / "decoder.safetensors").unlink()
    with mock.patch.object(train_decoder._Run, "loop", interrupt):
        yield ["train-decoder", ws.pseudo, "-p", ws.text, "-o", folder, *DECODER_ARGS, "--resume"]


@case("a loss weight that is not a number (train-decoder --lambda-rsc nan)",
      "--lambda-rsc nan: not a finite number")
def _lambda_nan(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-decoder", ws.pseudo, "-p", ws.text, "-o", ws.out("decoder_nan"), *DECODER_ARGS,
           "--lambda-rsc", "nan"]


@case("a negative loss weight (train-decoder --lambda-rsc -1)", "--lambda-rsc -1.0: must be >= 0")
def _lambda_negative(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-decoder", ws.pseudo, "-p", ws.text, "-o", ws.out("decoder_neg"), *DECODER_ARGS,
           "--lambda-rsc", "-1"]


@case("eval of an extract folder", "features: holds `extract` output",
      "expected `cam`, `crf`, `sam-pseudo`, `predict` or `segment` output")
def _eval_features(ws: Workspace) -> Iterator[list[object]]:
    yield ["eval", ws.features]


@case("segment with 'background' among the class names", "--classes")
def _segment_background_class(ws: Workspace) -> Iterator[list[object]]:
    yield ["segment", ws.world, "--split", "val", "-o", ws.out("seg_bg"), *SEG_TINY, "--classes", "background,cat"]


@case("segment a 24-megapixel photo with 1 GB of memory free (a 6000x4000 JPEG)",
      "photo_24mp.jpg: a 6000x4000 photo (24 megapixels) needs about 1.5 GB to segment (27 queries) and 1.0 GB are "
      "free", "pass --max-side 3136 (the photo is segmented at that long side and its mask enlarged to the photo), "
      "or free memory")
def _photo_over_memory(ws: Workspace) -> Iterator[list[object]]:
    from PIL import Image

    from vpltool.models.dense import bands

    photo = ws.root / "photo_24mp.jpg"
    if not photo.exists():
        Image.new("RGB", (6000, 4000), (90, 120, 60)).save(photo, quality=50)
    # refused from the photo's header and the free memory, before any model loads: the same on any machine
    with mock.patch.object(bands, "available_bytes", lambda: 2**30):
        yield ["segment", photo, "--classes", "cat,dog", "-o", ws.out("seg_24mp"), *SEG_TINY]


def _world_with_24mp_photo(ws: Workspace, name: str) -> Path:
    """A copy of the world whose train_000001 is a 6000x4000 PNG (one colour: a small file), its mask removed."""
    from PIL import Image

    world = ws.copy(ws.world, name)
    Image.new("RGB", (6000, 4000), (90, 120, 60)).save(world / "images" / "train_000001.png", compress_level=1)
    (world / "masks" / "train_000001.png").unlink()  # its 96x96 mask would be refused first (another case)
    return world


@case("cam --dense of a 24-megapixel photo with 256 MB of memory free",
      "world_cam_24mp/images/train_000001.png: a 6000x4000 photo (24 megapixels) needs about",
      "and 0.2 GB are free", "free memory, or segment a copy of the photo")
def _cam_dense_over_memory(ws: Workspace) -> Iterator[list[object]]:
    from vpltool.models.dense import bands

    world = _world_with_24mp_photo(ws, "world_cam_24mp")
    with mock.patch.object(bands, "available_bytes", lambda: 2**28):  # before the model loads: any machine
        yield ["cam", world, "--split", "train", "-p", ws.text, "-o", ws.out("cams_24mp"), "--dense", "maskclip",
               *CPU]


@case("predict --dense of a 24-megapixel photo with 256 MB of memory free",
      "world_pred_24mp/images/train_000001.png: a 6000x4000 photo (24 megapixels) needs about",
      "and 0.2 GB are free", "free memory, or segment a copy of the photo")
def _predict_dense_over_memory(ws: Workspace) -> Iterator[list[object]]:
    from vpltool.models.dense import bands

    world = _world_with_24mp_photo(ws, "world_pred_24mp")
    with mock.patch.object(bands, "available_bytes", lambda: 2**28):  # before the model loads: any machine
        yield ["predict", ws.decoder / "decoder.safetensors", "--data", world, "--split", "train", "-o",
               ws.out("pred_24mp"), *CPU, "--dense", "maskclip", "--classes", "star"]


@case("a resume right after segment of a photo folder was killed with -9 (as the OOM killer ends a run; its "
      "loaders orphaned)", "✓ segment (naclip): 2 masks", "1 already done", exit_code=0,
      leaves=("seg_killed/*", "-seg_killed/_run.json"))
def _segment_resume_after_kill(ws: Workspace) -> Iterator[list[object]]:
    from PIL import Image

    photos = ws.root / "killed photos"
    if not photos.exists():
        photos.mkdir()
        for i in range(3):  # camera-like JPEGs, named as a phone names them
            Image.open(ws.world / "images" / f"train_00000{i}.png").convert("RGB").resize((192, 144)).save(
                photos / f"IMG_000{i}.jpg", quality=90)
    out = ws.out("seg_killed")
    args = ["segment", photos, "--classes", "cat,dog", "-o", out, *SEG_TINY, "--workers", "2"]
    proc = paced_cli(args)
    try:
        wait_until(proc, lambda: any(out.glob("*.png")))
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # the main process alone, as the OOM killer does: its loaders live on
        proc.communicate()
    for path in sorted(out.glob("*.png"))[1:] + sorted(out.glob(".*.tmp")):
        path.unlink()  # one finished mask, whenever the kill landed: the same page every time
    yield args  # the same command at once: the lock the killed run held does not block it


@case("segment run again on its finished folder with another run's mask copied in (it said ✓ \"2 already done\")",
      "seg_foreign/val_000000.png: made by another run than its folder's", "a file copied in",
      "remove it and re-run `vpltool segment` with the folder's options")
def _segment_foreign_mask(ws: Workspace) -> Iterator[list[object]]:
    args = ["segment", ws.world, "--split", "val", *SEG_TINY, "--short-side", "64", "--slide-crop", "0"]
    out, other = ws.out("seg_foreign"), ws.out("seg_foreign_other")
    cli_ok(*args, "-o", out, "--classes", "star,circle")
    cli_ok(*args, "-o", other, "--classes", "circle,star")  # other classes: another run
    shutil.copyfile(other / "val_000000.png", out / "val_000000.png")
    yield [*args, "-o", out, "--classes", "star,circle"]


@case("segment with an unknown dense method", "--dense 'nope'", "choose none, maskclip")
def _segment_bad_dense(ws: Workspace) -> Iterator[list[object]]:
    yield ["segment", ws.world, "--split", "val", "-o", ws.out("seg_nope"), *SEG_TINY, "--dense", "nope"]


@case("segment --dense proxyclip on SigLIP 2 (a timm tower: no class token, no nn.MultiheadAttention)",
      "--dense proxyclip reads open_clip's own attention modules", "on it choose --dense none, maskclip")
def _segment_siglip2_proxyclip(ws: Workspace) -> Iterator[list[object]]:
    yield ["segment", ws.world, "--split", "val", "-o", ws.out("seg_siglip2"), "--model", "ViT-B-16-SigLIP2",
           "--pretrained", "none", *CPU, "--dense", "proxyclip", "--proxy-model", DINO_MODEL, "--proxy-weights",
           "none"]


@case("segment --dense trident with SAM 2 as its SAM", "--sam-model sam2_hiera_t: SAM 2's Hiera encoder",
      "--region-masks sam2:CONFIG")
def _segment_trident_sam2(ws: Workspace) -> Iterator[list[object]]:
    yield ["segment", ws.world, "--split", "val", "-o", ws.out("seg_trident_sam2"), *SEG_TINY, "--dense",
           "trident", "--proxy-model", DINO_MODEL, "--proxy-weights", "none", "--sam-model", "sam2_hiera_t",
           "--sam-weights", "none"]


@case("segment --dense textregion without region masks", "--dense textregion needs class-agnostic region masks",
      "--region-masks FOLDER")
def _segment_textregion_no_masks(ws: Workspace) -> Iterator[list[object]]:
    yield ["segment", ws.world, "--split", "val", "-o", ws.out("seg_textregion"), *SEG_TINY, "--dense",
           "textregion"]


def _textregion_masks(ws: Workspace, name: str, bad: dict | None = None) -> Path:
    """A folder of TextRegion's region masks for the workspace's val images (<stem>.npz, key masks); ``bad``: the
    second image's file's arrays instead."""
    import numpy as np

    from vpltool import io
    from vpltool.data import open_dataset

    folder = ws.root / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for i, item in enumerate(open_dataset(ws.world, "val").items):
        h, w = io.load_image(item.image).shape[:2]
        arrays = bad if (bad is not None and i == 1) else {"masks": np.ones((2, h, w), np.float16)}
        np.savez(folder / f"{item.id}.npz", **arrays)
    return folder


@case("segment --dense textregion with a region-mask file of another size than its image (refused before the "
      "model loads)", "textregion_masks_size/val_000001.npz: 5x5 region masks for a 96x96 image")
def _segment_textregion_mask_size(ws: Workspace) -> Iterator[list[object]]:
    import numpy as np

    folder = _textregion_masks(ws, "textregion_masks_size", {"masks": np.ones((1, 5, 5), np.float16)})
    yield ["segment", ws.world, "--split", "val", "-o", ws.out("seg_textregion_size"), *SEG_TINY, "--dense",
           "textregion", "--region-masks", folder]


@case("segment --dense textregion with NaN in a region-mask file", "textregion_masks_nan/val_000001.npz",
      "NaN or infinite", "write masks in [0, 3]")
def _segment_textregion_mask_nan(ws: Workspace) -> Iterator[list[object]]:
    import numpy as np

    folder = _textregion_masks(ws, "textregion_masks_nan", {"masks": np.full((1, 96, 96), np.nan, np.float32)})
    yield ["segment", ws.world, "--split", "val", "-o", ws.out("seg_textregion_nan"), *SEG_TINY, "--dense",
           "textregion", "--region-masks", folder]


@case("segment --dense textregion --region-masks sam2 without --sam-weights", "--region-masks sam2 needs the "
      "model's weights", "--sam-weights FILE")
def _segment_textregion_sam2_no_weights(ws: Workspace) -> Iterator[list[object]]:
    yield ["segment", ws.world, "--split", "val", "-o", ws.out("seg_textregion_sam2"), *SEG_TINY, "--dense",
           "textregion", "--region-masks", "sam2"]


@case("segment --dense textregion on SigLIP 2 (its SigLIP 2 path is not built)",
      "--dense textregion reads open_clip's own attention modules", "on it choose --dense none, maskclip")
def _segment_siglip2_textregion(ws: Workspace) -> Iterator[list[object]]:
    yield ["segment", ws.world, "--split", "val", "-o", ws.out("seg_siglip2_textregion"), "--model",
           "ViT-B-16-SigLIP2", "--pretrained", "none", *CPU, "--dense", "textregion", "--region-masks", "masks/"]


@case("segment --long-side 8", "--long-side 8: must be >= 16")
def _segment_long_side_small(ws: Workspace) -> Iterator[list[object]]:
    yield ["segment", ws.world, "--split", "val", "-o", ws.out("seg_long_side"), *SEG_TINY, "--long-side", "8"]


@case("segment --max-side 10 (a working size PAMR's dilations have no room in)", "--max-side 10: must be >= 64")
def _segment_max_side_small(ws: Workspace) -> Iterator[list[object]]:
    yield ["segment", ws.world, "--split", "val", "-o", ws.out("seg_max_side"), *SEG_TINY, "--max-side", "10"]


@case("segment with a stride larger than its window", "--slide-stride 500 is larger than --slide-crop 224")
def _segment_bad_stride(ws: Workspace) -> Iterator[list[object]]:
    yield ["segment", ws.world, "--split", "val", "-o", ws.out("seg_stride"), *SEG_TINY, "--dense", "sclip",
           "--slide-stride", "500"]


@case("segment --dense proxyclip with --proxy-weights of another architecture", "other_proxy.safetensors",
      "not weights of this --proxy-model")
def _segment_proxy_wrong_weights(ws: Workspace) -> Iterator[list[object]]:
    import torch
    from safetensors.torch import save_file

    path = ws.root / "other_proxy.safetensors"
    save_file({"head.weight": torch.zeros(2, 2)}, str(path))
    yield ["segment", ws.world, "--split", "val", "-o", ws.out("seg_proxy"), *SEG_TINY, "--dense", "proxyclip",
           "--proxy-model", DINO_MODEL, "--proxy-weights", path]


@case("segment --dense trident with --sam-weights of another architecture (a DINO's)", "other_sam.safetensors",
      "not weights of the SAM vit_b image encoder", "--sam-weights")
def _segment_trident_wrong_sam(ws: Workspace) -> Iterator[list[object]]:
    import torch
    from safetensors.torch import save_file

    path = ws.root / "other_sam.safetensors"
    save_file({"blocks.0.attn.qkv.weight": torch.zeros(6, 2)}, str(path))
    yield ["segment", ws.world, "--split", "val", "-o", ws.out("seg_trident"), *SEG_TINY, "--dense", "trident",
           "--proxy-model", DINO_MODEL, "--proxy-weights", "none", "--sam-weights", path]


@case("segment --dense trident with SAM weights of another size (vit_l's width for --sam-model vit_b)",
      "sam_small.safetensors", "the SAM vit_b encoder's is", "another SAM size")
def _segment_trident_sam_size(ws: Workspace) -> Iterator[list[object]]:
    import torch
    from safetensors.torch import save_file

    from vpltool.models.backbones.sam import SAM_ARCHS, _build

    with torch.device("meta"):  # vit_b's tensor names, each of vit_l's width (written as 1-element stand-ins
        names = _build(SAM_ARCHS["vit_b"]).state_dict()  # but the first, so that the file stays small)
    state = {k: torch.zeros(1) for k in names}
    state["blocks.0.attn.proj.bias"] = torch.zeros(1024)
    path = ws.root / "sam_small.safetensors"
    save_file(state, str(path))
    yield ["segment", ws.world, "--split", "val", "-o", ws.out("seg_trident"), *SEG_TINY, "--dense", "trident",
           "--proxy-model", DINO_MODEL, "--proxy-weights", "none", "--sam-weights", path]


@case("segment --dense trident --sam-refine with an encoder-only SAM file (no prompt encoder, no mask decoder)",
      "sam_encoder.safetensors", "image encoder only", "drop --sam-refine")
def _segment_trident_refine_encoder_only(ws: Workspace) -> Iterator[list[object]]:
    import torch
    from safetensors.torch import save_file

    from vpltool.models.backbones.sam import SAM_ARCHS, _build

    torch.manual_seed(0)
    path = ws.root / "sam_encoder.safetensors"
    save_file({k: v.contiguous() for k, v in _build(SAM_ARCHS["test"]).state_dict().items()}, str(path))
    yield ["segment", ws.world, "--split", "val", "-o", ws.out("seg_trident"), *SEG_TINY, "--dense", "trident",
           "--proxy-model", DINO_MODEL, "--proxy-weights", "none", "--sam-model", "test", "--sam-weights", path,
           "--sam-refine"]


@case("segment --dense trident without --sam-weights", "--dense trident needs SAM's image encoder",
      "--sam-weights FILE")
def _segment_trident_no_sam(ws: Workspace) -> Iterator[list[object]]:
    yield ["segment", ws.world, "--split", "val", "-o", ws.out("seg_trident"), *SEG_TINY, "--dense", "trident",
           "--proxy-model", DINO_MODEL, "--proxy-weights", "none"]


@case("segment --dense trident --sam-model toy without --sam-weights (its file named, not a ViT-B release)",
      "--dense trident needs SAM's image encoder: pass --sam-weights "
      "<checkout>/vpltool/assets/toy-sam/model.safetensors (the demo world's toy SAM")
def _segment_trident_toy_no_sam(ws: Workspace) -> Iterator[list[object]]:
    yield ["segment", ws.world, "--split", "val", "-o", ws.out("seg_trident"), *SEG_TINY, "--dense", "trident",
           "--proxy-model", DINO_MODEL, "--proxy-weights", "none", "--sam-model", "toy"]


@case("segment --dense cass with a --global-weight above 1", "--global-weight 1.5")
def _segment_cass_bad_weight(ws: Workspace) -> Iterator[list[object]]:
    yield ["segment", ws.world, "--split", "val", "-o", ws.out("seg_cass"), *SEG_TINY, "--dense", "cass",
           "--global-weight", "1.5"]


@case("segment --dense ov-stitcher without --region-masks", "--dense ov-stitcher needs class-agnostic region masks",
      "--region-masks FOLDER")
def _segment_ov_stitcher_no_masks(ws: Workspace) -> Iterator[list[object]]:
    yield ["segment", ws.world, "--split", "val", "-o", ws.out("seg_ovs"), *SEG_TINY, "--dense", "ov-stitcher",
           "--proxy-model", DINO_MODEL, "--proxy-weights", "none"]


@case("segment --dense ov-stitcher --slide-crop 300 (its windows are stitched whole: a multiple of 56)",
      "--slide-crop 300: --dense ov-stitcher stitches whole windows", "a positive multiple of 56")
def _segment_ov_stitcher_crop(ws: Workspace) -> Iterator[list[object]]:
    (ws.root / "ovs_masks").mkdir(exist_ok=True)
    yield ["segment", ws.world, "--split", "val", "-o", ws.out("seg_ovs"), *SEG_TINY, "--dense", "ov-stitcher",
           "--proxy-model", DINO_MODEL, "--proxy-weights", "none", "--region-masks", ws.root / "ovs_masks",
           "--slide-crop", "300"]


@case("segment --dense ov-stitcher --short-side 224 with its 336-pixel windows (they would be padded)",
      "--short-side 224 is smaller than --slide-crop 336", "pass --short-side 336 or more")
def _segment_ov_stitcher_short(ws: Workspace) -> Iterator[list[object]]:
    (ws.root / "ovs_masks").mkdir(exist_ok=True)
    yield ["segment", ws.world, "--split", "val", "-o", ws.out("seg_ovs"), *SEG_TINY, "--dense", "ov-stitcher",
           "--proxy-model", DINO_MODEL, "--proxy-weights", "none", "--region-masks", ws.root / "ovs_masks",
           "--short-side", "224"]


@case("text-prototypes --templates ov-stitcher (per-class sentences, which predict could not re-encode)",
      "--templates ov-stitcher: its per-class sentences are for the dense segmentor", "give clip-es, imagenet")
def _text_ov_stitcher_templates(ws: Workspace) -> Iterator[list[object]]:
    yield ["text-prototypes", ws.features, "-o", ws.out("text_ovs.safetensors"), "--templates", "ov-stitcher",
           "--background", "sky", *CPU]


@case("cam --dense proxyclip (its proxy model is segment's)", "cam --dense proxyclip", "only `vpltool segment`")
def _cam_dense_proxy(ws: Workspace) -> Iterator[list[object]]:
    yield ["cam", ws.features, "-p", ws.text, "-o", ws.out("cams_proxy"), "--dense", "proxyclip", *CPU]


@case("cam --dense with --save-debug (no GradCAM to debug)", "--save-debug: not made with --dense naclip")
def _cam_dense_debug(ws: Workspace) -> Iterator[list[object]]:
    yield ["cam", ws.features, "-p", ws.text, "-o", ws.out("cams_dense"), "--dense", "naclip", "--save-debug",
           ws.out("cams_dense_debug"), *CPU]


@case("eval of a train folder with --split val", "cams: made from split 'train'",
      "no prediction for split 'val'", "wrong --split?")
def _eval_wrong_split(ws: Workspace) -> Iterator[list[object]]:
    yield ["eval", ws.cams, "--split", "val"]


def _vision_copy(ws: Workspace) -> Path:
    return _resaved_prototypes(ws, "vision_copy.safetensors", source="vision")


@case("vision prototypes where the text ones belong (learn-prototypes -t)",
      "vision_copy.safetensors: holds vision prototypes", "--text expects text prototypes",
      "`vpltool text-prototypes`")
def _vision_as_text(ws: Workspace) -> Iterator[list[object]]:
    yield ["learn-prototypes", ws.features, "-c", ws.cams, "-t", _vision_copy(ws), "-o",
           ws.out("v2.safetensors"), "--iters", "2", *CPU]


@case("vision prototypes where the text ones belong (diagnose -t)",
      "vision_copy.safetensors: holds vision prototypes", "--text expects text prototypes")
def _vision_as_text_diagnose(ws: Workspace) -> Iterator[list[object]]:
    yield ["diagnose", ws.features, "-p", ws.text, "-t", _vision_copy(ws), *CPU]


@case("a device name only in VPLTOOL_DEVICE (VPLTOOL_DEVICE=gpu0)", "--device (from VPLTOOL_DEVICE) 'gpu0'",
      "use auto, cpu, cuda or cuda:N")
def _device_env(ws: Workspace) -> Iterator[list[object]]:
    with mock.patch.dict(os.environ, {"VPLTOOL_DEVICE": "gpu0"}):
        yield ["extract", ws.world, "--split", "train", "-o", ws.out("out"), *TINY]


@case("a loss-curve name that is not .png (learn-prototypes --plot x.jpg)", "--plot curve.jpg",
      "give a name ending in .png")
def _plot_jpg(ws: Workspace) -> Iterator[list[object]]:
    yield ["learn-prototypes", ws.features, "-c", ws.cams, "-t", ws.text, "-o", ws.out("vp.safetensors"), "--plot",
           "curve.jpg", "--iters", "2", *CPU]


@case("a missing -t file is named before any progress line (learn-prototypes)", "nope.safetensors: file not found")
def _missing_text_first(ws: Workspace) -> Iterator[list[object]]:
    yield ["learn-prototypes", ws.features, "-c", ws.cams, "-t", ws.root / "nope.safetensors", "-o",
           ws.out("vn.safetensors"), "--iters", "3", *CPU]


@case("a degenerate test scale (predict --scales 1e-9)", "--scales 1e-09: each scale must be at least 0.1")
def _tiny_scale(ws: Workspace) -> Iterator[list[object]]:
    yield ["predict", ws.decoder / "decoder.safetensors", "--split", "val", "-o", ws.out("out"), "--scales", "1e-9",
           *CPU]


@case("vpltool help COMMAND", "--help", exit_code=0)
def _help_command(ws: Workspace) -> Iterator[list[object]]:
    yield ["help", "crf"]


@case("vpltool -V", "vpltool ", exit_code=0)
def _short_version(ws: Workspace) -> Iterator[list[object]]:
    yield ["-V"]

# ---- guards branch (issue 20): every output guarded alike, resumes re-check their inputs, ids, writers
@case("--save-overlays aimed at the dataset's images folder (cam)", "world/images: is the dataset's folder",
      "no stage writes into a dataset", "choose another --save-overlays")
def _overlays_into_images(ws: Workspace) -> Iterator[list[object]]:
    yield ["cam", ws.features, "-p", ws.text, "-o", ws.out("out"), "--save-overlays", ws.world / "images", *CPU]


@case("--save-overlays aimed at the dataset's images folder (predict)", "world/images: is the dataset's folder",
      "choose another --save-overlays")
def _predict_overlays_into_images(ws: Workspace) -> Iterator[list[object]]:
    yield ["predict", ws.decoder / "decoder.safetensors", "--split", "val", "-o", ws.out("out"), "--save-overlays",
           ws.world / "images", *CPU]


@case("overlays into the stage's own output folder (cam --save-overlays = -o)",
      "cams_ov: given as both --out and --save-overlays", "their files would mix")
def _overlays_into_out(ws: Workspace) -> Iterator[list[object]]:
    out = ws.out("cams_ov")
    yield ["cam", ws.features, "-p", ws.text, "-o", out, "--save-overlays", out, *CPU]


@case("crf output = the dataset's ground-truth masks folder", "world/masks: is the dataset's folder",
      "choose another --out")
def _crf_into_gt(ws: Workspace) -> Iterator[list[object]]:
    yield ["crf", ws.cams, "-o", ws.world / "masks", "--workers", "1", "--overwrite"]


@case("crf output = a folder of masks vpltool did not make (--overwrite)", "gt_copy: not empty and made by no "
      "vpltool stage (no _stage.json or _run.json)", "never written into or resumed", "choose a new or empty folder")
def _crf_into_user_folder(ws: Workspace) -> Iterator[list[object]]:
    yield ["crf", ws.cams, "-o", ws.copy(ws.world / "masks", "gt_copy"), "--workers", "1", "--overwrite"]


def _amg_folder(ws: Workspace, name: str, shape: tuple[int, int] = (96, 96)) -> Path:
    """A mask folder as segment-anything's scripts/amg.py writes it, one all-background mask per train image."""
    import numpy as np
    from PIL import Image

    root = ws.out(name)
    for f in sorted(ws.cams.glob("*.safetensors")):
        (root / f.stem).mkdir(parents=True)
        Image.fromarray(np.zeros(shape, np.uint8)).save(root / f.stem / "0.png")
    return root


@case("sam-pseudo --masks sam without --sam-weights", "--masks sam needs the model's weights: pass --sam-weights")
def _sam_pseudo_no_weights(ws: Workspace) -> Iterator[list[object]]:
    yield ["sam-pseudo", ws.cams, "-o", ws.out("sam_noweights"), "--sam-model", "toy", "--workers", "1"]


@case("sam-pseudo with a decoder's weights as SAM's", "not weights of the SAM toy image encoder",
      "sam_vit_b_01ec64.pth")
def _sam_pseudo_decoder_weights(ws: Workspace) -> Iterator[list[object]]:
    yield ["sam-pseudo", ws.cams, "-o", ws.out("sam_clipweights"), "--sam-model", "toy", "--sam-weights",
           ws.decoder / "decoder.safetensors", "--workers", "1"]


@case("sam-pseudo with a mask folder that lacks an image's masks", "no mask folder for image",
      "as segment-anything's scripts/amg.py writes them")
def _sam_pseudo_missing_masks(ws: Workspace) -> Iterator[list[object]]:
    folder = _amg_folder(ws, "amg_missing")
    shutil.rmtree(sorted(folder.iterdir())[0])
    yield ["sam-pseudo", ws.cams, "-o", ws.out("sam_missing"), "--masks", folder, "--workers", "1"]


@case("sam-pseudo with a mask of another size than its image", "a 48x64 mask for a 96x96 image")
def _sam_pseudo_mask_size(ws: Workspace) -> Iterator[list[object]]:
    yield ["sam-pseudo", ws.cams, "-o", ws.out("sam_size"), "--masks", _amg_folder(ws, "amg_size", (48, 64)),
           "--workers", "1"]


@case("sam-pseudo from a crf folder (not CAMs)", "pseudo: holds `crf` output")
def _sam_pseudo_from_masks(ws: Workspace) -> Iterator[list[object]]:
    yield ["sam-pseudo", ws.pseudo, "-o", ws.out("sam_from_crf"), "--masks", _amg_folder(ws, "amg_ok"),
           "--workers", "1"]


@case("--overwrite onto another stage's folder (cam -o a crf folder)", "pseudo_copy: holds `crf` output",
      "--overwrite only redoes a `cam` folder, never another stage's")
def _overwrite_other_stage(ws: Workspace) -> Iterator[list[object]]:
    yield ["cam", ws.features, "-p", ws.text, "-o", ws.copy(ws.pseudo, "pseudo_copy"), "--overwrite", *CPU]


@case("--save-debug into a folder vpltool did not make", "notes: not empty and holds no _side.json of "
      "`cam --save-debug`", "choose a new or empty folder for --save-debug")
def _debug_into_user_folder(ws: Workspace) -> Iterator[list[object]]:
    notes = ws.out("notes")
    notes.mkdir()
    (notes / "todo.txt").write_text("my notes\n")
    yield ["cam", ws.features, "-p", ws.text, "-o", ws.out("out"), "--save-debug", notes, *CPU]


@case("learn-prototypes output = its own --text input", "text_copy.safetensors: is also this run's input (--text)",
      "choose another --out")
def _learn_onto_text(ws: Workspace) -> Iterator[list[object]]:
    text = ws.root / "text_copy.safetensors"
    shutil.copy(ws.text, text)
    yield ["learn-prototypes", ws.features, "-c", ws.cams, "-t", text, "-o", text, "--iters", "2", *CPU]


@case("train-decoder output = its pseudo-mask input folder", "pseudo: is also this run's input (the pseudo-mask "
      "folder)", "choose another --out")
def _decoder_onto_pseudo(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-decoder", ws.pseudo, "-p", ws.text, "-o", ws.pseudo, *DECODER_ARGS]


@case("eval --json aimed at a ground-truth mask", "world/masks/train_000000.png: lies inside the dataset's folder",
      "choose another --json")
def _json_onto_gt(ws: Workspace) -> Iterator[list[object]]:
    yield ["eval", ws.pseudo, "--json", ws.world / "masks" / "train_000000.png"]


@case("dangling symbolic link as the output folder", "broken_link: a symbolic link to", "which does not exist",
      "create the target or choose another --out")
def _dangling_out(ws: Workspace) -> Iterator[list[object]]:
    link = ws.out("broken_link")
    link.unlink(missing_ok=True)
    link.symlink_to(ws.root / "nowhere")
    yield ["cam", ws.features, "-p", ws.text, "-o", link, *CPU]


@case("re-running cam after its extract folder was re-made", "cams_stale: made from other inputs (features changed "
      "since)", "its items are stale", "pass --overwrite to redo every item")
def _cam_after_reextract(ws: Workspace) -> Iterator[list[object]]:
    features, cams = ws.out("features_remade"), ws.out("cams_stale")
    cli_ok("extract", ws.world, "--split", "train", "-o", features, *TINY, *CPU, "--workers", "1", "--cache", "full")
    cli_ok("cam", features, "-p", ws.text, "-o", cams, *CPU)
    cli_ok("extract", ws.world, "--split", "train", "-o", features, *TINY, *CPU, "--workers", "1", "--cache", "full",
           "--max-side", "48", "--overwrite")
    yield ["cam", features, "-p", ws.text, "-o", cams, *CPU]


@case("re-running extract after the dataset's images were replaced", "features_new: 1 finished item(s) were made "
      "from another image or other labels", "world_new/images/train_000001.png", "pass --overwrite")
def _extract_after_new_images(ws: Workspace) -> Iterator[list[object]]:
    world, features = ws.copy(ws.world, "world_new"), ws.out("features_new")
    cli_ok("extract", world, "--split", "train", "-o", features, *TINY, *CPU, "--workers", "1")
    shutil.copy(world / "images" / "train_000002.png", world / "images" / "train_000001.png")
    yield ["extract", world, "--split", "train", "-o", features, *TINY, *CPU, "--workers", "1"]


@case("an item file deleted from a finished extract folder (cam)", "features_holed: incomplete: 1 of the 4 items",
      "(first: train_000001.safetensors)", "re-run `vpltool extract` with the same options")
def _features_holed(ws: Workspace) -> Iterator[list[object]]:
    features = ws.copy(ws.features, "features_holed")
    (features / "train_000001.safetensors").unlink()
    yield ["cam", features, "-p", ws.text, "-o", ws.out("out"), *CPU]


@case("a mask deleted from a finished crf folder (train-decoder)", "pseudo_holed: incomplete: 1 of the 4 items",
      "re-run `vpltool crf`")
def _pseudo_holed(ws: Workspace) -> Iterator[list[object]]:
    pseudo = ws.copy(ws.pseudo, "pseudo_holed")
    (pseudo / "train_000002.png").unlink()
    yield ["train-decoder", pseudo, "-p", ws.text, "-o", ws.out("out"), *DECODER_ARGS]


@case("text prototypes copied into the extract folder (a stray .safetensors is no item)", "✓ cam: 4 images",
      exit_code=0, leaves=("cams_stray/", "cams_stray/*"))
def _stray_in_features(ws: Workspace) -> Iterator[list[object]]:
    features = ws.copy(ws.features, "features_stray")
    shutil.copy(ws.text, features / "text.safetensors")  # by hand: no stage writes into another's folder
    yield ["cam", features, "-p", features / "text.safetensors", "-o", ws.out("cams_stray"), *CPU]


@case("a manifest id with ../ (path traversal)", "m_trav.json: id '../../evil' holds a path separator",
      "must be plain file names")
def _manifest_traversal(ws: Workspace) -> Iterator[list[object]]:
    from vpltool.data import open_dataset, write_manifest

    manifest = write_manifest(open_dataset(ws.world, "train"), ws.root / "m_trav.json")
    data = json.loads(manifest.read_text())
    data["items"][0]["id"] = "../../evil"
    manifest.write_text(json.dumps(data))
    yield ["extract", manifest, "-o", ws.out("mf_trav"), *TINY, *CPU, "--workers", "1"]


def _safetensors_fails(message: str):
    """The safetensors library failing as on a real full disk or at a file-size limit: its own SafetensorError
    (no OSError) whose text ends "(os error N)"."""
    import safetensors.torch
    from safetensors import SafetensorError

    def save(*args, **kwargs):
        raise SafetensorError(f"Error while serializing: I/O error: {message}")

    return mock.patch.object(safetensors.torch, "save", save)


@case("disk full in the safetensors writer (its SafetensorError, simulated)",
      "no space left on device writing text_full.safetensors", "free space or choose another --out")
def _safetensors_enospc(ws: Workspace) -> Iterator[list[object]]:
    with _safetensors_fails("No space left on device (os error 28)"):
        yield ["text-prototypes", ws.features, "-o", ws.out("text_full.safetensors"), *TEXT_ARGS, *CPU]


@case("file-size limit in the safetensors writer (ulimit -f: SafetensorError, simulated)",
      "file too large (a file-size limit: `ulimit -f`", "writing cams_big/train_000000.safetensors")
def _safetensors_efbig(ws: Workspace) -> Iterator[list[object]]:
    with _safetensors_fails("File too large (os error 27)"):
        yield ["cam", ws.features, "-p", ws.text, "-o", ws.out("cams_big"), *CPU]


@case("file-size limit while writing a PNG (simulated EFBIG, crf)", "file too large", "writing pseudo_big/train_000000")
def _png_efbig(ws: Workspace) -> Iterator[list[object]]:
    with failing_writes(errno.EFBIG, after=1):  # _run.json is written, the first mask is not
        yield ["crf", ws.cams, "-o", ws.out("pseudo_big"), "--workers", "1"]


@contextlib.contextmanager
def diverging_decoder(at: int = 2) -> Iterator[None]:
    """train-decoder's steps blowing up: the loss becomes inf from iteration ``at`` on."""
    from vpltool.stages.train_decoder import steps

    real, calls = steps.compute_losses, [0]

    def compute_losses(*args, **kwargs):
        calls[0] += 1
        losses = real(*args, **kwargs)
        return {**losses, "loss": losses["loss"] * float("inf")} if calls[0] >= at else losses

    with mock.patch.object(steps, "compute_losses", compute_losses):
        yield


@case("a decoder training that diverges (loss inf at iteration 2, simulated)",
      "decoder_nan: training diverged at iteration 2", "the last good checkpoint",
      "(iteration 1) is kept", leaves=("decoder_nan/", "decoder_nan/.vpltool.lock", "decoder_nan/checkpoints/",
                                       "decoder_nan/checkpoints/last.safetensors", "decoder_nan/log.jsonl"))
def _decoder_diverges(ws: Workspace) -> Iterator[list[object]]:
    with diverging_decoder():
        yield ["train-decoder", ws.pseudo, "-p", ws.text, "-o", ws.out("decoder_nan"), *DECODER_ARGS]


# --------------------------------------------------------------------------------------------- issue 38, H class
# ---- no folder is used with a dataset that changed since it was made (data.check_recorded)
def _made_on_copy(ws: Workspace, name: str, stages: tuple[str, ...] = ("extract",)) -> tuple[Path, Path]:
    """``(world, run)``: a private copy of the world (times kept) and a run made on it: ``run/features`` and, as
    asked, ``run/cams`` and ``run/pseudo`` (made once per workspace)."""
    world, run = ws.root / f"world_{name}", ws.root / f"run_{name}"
    if not (run / "features" / "_stage.json").is_file():
        ws.copy(ws.world, world.name)
        cli_ok("extract", world, "--split", "train", "-o", run / "features", *TINY, *CPU, "--workers", "1",
               "--cache", "full")
    if "cam" in stages and not (run / "cams" / "_stage.json").is_file():
        cli_ok("cam", run / "features", "-p", ws.text, "-o", run / "cams", *CPU)
    if "crf" in stages and not (run / "pseudo" / "_stage.json").is_file():
        cli_ok("crf", run / "cams", "-o", run / "pseudo", "--workers", "1")
    return world, run


def _reseeded(ws: Workspace) -> Path:
    """A run whose world was re-made with another seed afterwards (``make-world W --seed 9 --overwrite``)."""
    world, run = _made_on_copy(ws, "reseeded", ("extract", "cam", "crf"))
    if not (world / ".reseeded").is_file():
        cli_ok("make-world", world, "--train", 4, "--val", 2, "--seed", 9, "--overwrite")
        (world / ".reseeded").touch()
    return run


@case("cam after one image was replaced by another of the same size (96x96)", "run_replaced/features: made from "
      "world_replaced as it was before a change", "(first: world_replaced/images/train_000001.png)",
      "re-run `vpltool extract`")
def _cam_after_image_replaced(ws: Workspace) -> Iterator[list[object]]:
    world, run = _made_on_copy(ws, "replaced")
    shutil.copyfile(world / "images" / "train_000002.png", world / "images" / "train_000001.png")
    yield ["cam", run / "features", "-p", ws.text, "-o", ws.out("cams_replaced"), *CPU]


@case("crf after an image was touched (same bytes, a new modification time: refused as replaced)",
      "run_touched/cams: made from world_touched as it was", "modification time differs")
def _crf_after_image_touched(ws: Workspace) -> Iterator[list[object]]:
    world, run = _made_on_copy(ws, "touched", ("extract", "cam"))
    os.utime(world / "images" / "train_000003.png")
    yield ["crf", run / "cams", "-o", ws.out("pseudo_touched"), "--workers", "1"]


@case("eval after `make-world W --seed 9 --overwrite` re-made the run's world", "run_reseeded/pseudo: made from "
      "world_reseeded as it was before a change", "its labels, differ under the same id")
def _eval_after_reseed(ws: Workspace) -> Iterator[list[object]]:
    yield ["eval", _reseeded(ws) / "pseudo"]


@case("crf after `make-world W --seed 9 --overwrite` (old CAMs, new images)", "run_reseeded/cams: made from "
      "world_reseeded as it was")
def _crf_after_reseed(ws: Workspace) -> Iterator[list[object]]:
    yield ["crf", _reseeded(ws) / "cams", "-o", ws.out("pseudo_reseeded"), "--workers", "1"]


@case("cam after `make-world W --seed 9 --overwrite` (old features and labels, new images)",
      "run_reseeded/features: made from world_reseeded as it was")
def _cam_after_reseed(ws: Workspace) -> Iterator[list[object]]:
    yield ["cam", _reseeded(ws) / "features", "-p", ws.text, "-o", ws.out("cams_reseeded"), *CPU]


@case("report after `make-world W --seed 9 --overwrite`", "made from world_reseeded as it was before a change")
def _report_after_reseed(ws: Workspace) -> Iterator[list[object]]:
    yield ["report", _reseeded(ws), "-o", ws.out("report_reseeded"), "--workers", "1"]


@case("train-decoder after an image's labels were changed in labels.csv", "run_relabelled/pseudo: made from "
      "world_relabelled as it was", "its labels, differ under the same id")
def _train_decoder_after_relabel(ws: Workspace) -> Iterator[list[object]]:
    world, run = _made_on_copy(ws, "relabelled", ("extract", "cam", "crf"))
    labels = world / "labels.csv"
    rows = labels.read_text().splitlines()
    first = next(i for i, row in enumerate(rows) if row.startswith("train_000000,"))
    rows[first] = "train_000000,star"
    labels.write_text("\n".join(rows) + "\n")
    yield ["train-decoder", run / "pseudo", "-p", ws.text, "-o", ws.out("decoder_relabelled"), *DECODER_ARGS]


@case("learn-prototypes after an image was added to the split", "run_grown/features: made from world_grown "
      "as it was", "5 images where the record counts 4")
def _learn_after_growth(ws: Workspace) -> Iterator[list[object]]:
    world, run = _made_on_copy(ws, "grown", ("extract", "cam"))
    shutil.copyfile(world / "images" / "val_000000.png", world / "images" / "train_000009.png")
    shutil.copyfile(world / "masks" / "val_000000.png", world / "masks" / "train_000009.png")
    labels = world / "labels.csv"
    val_row = next(r for r in labels.read_text().splitlines() if r.startswith("val_000000,"))
    labels.write_text(labels.read_text() + val_row.replace("val_000000", "train_000009") + "\n")
    split = world / "splits" / "train.txt"
    split.write_text(split.read_text() + "train_000009\n")
    yield ["learn-prototypes", run / "features", "-c", run / "cams", "-t", ws.text, "-o", ws.out("vision_grown.st"),
           "--iters", 2]


def _labels_elsewhere(ws: Workspace) -> tuple[Path, Path]:
    """``(labels file, run)``: a run made from the world with its labels read from a file outside it (``extract
    --labels-file``, one image's labels changed there), up to `cam` (made once)."""
    labels, run = ws.root / "labels_elsewhere.csv", ws.root / "run_labels_file"
    if not (run / "cams" / "_stage.json").is_file():
        rows = (ws.world / "labels.csv").read_text().splitlines()
        labels.write_text("\n".join(r if not r.startswith("train_000000,") else "train_000000,star" for r in rows)
                          + "\n")
        cli_ok("extract", ws.world, "--split", "train", "--labels-file", labels, "-o", run / "features", *TINY, *CPU,
               "--workers", "1", "--cache", "full")
        cli_ok("cam", run / "features", "-p", ws.text, "-o", run / "cams", *CPU)
    return labels, run


@case("crf after extract --labels-file (the later stages read the same label file again)", "4 masks",
      exit_code=0, leaves=("pseudo_labels_file/", "pseudo_labels_file/*"))
def _crf_after_labels_file(ws: Workspace) -> Iterator[list[object]]:
    _, run = _labels_elsewhere(ws)
    yield ["crf", run / "cams", "-o", ws.out("pseudo_labels_file"), "--workers", "1"]


@case("crf after the --labels-file given to extract was edited", "labels_elsewhere.csv: dataset world was read "
      "with this label file (`vpltool extract --labels-file`), which is gone or changed since")
def _crf_after_labels_file_edit(ws: Workspace) -> Iterator[list[object]]:
    labels, run = _labels_elsewhere(ws)
    with labels.open("a") as fh:
        fh.write("# an edit\n")
    yield ["crf", run / "cams", "-o", ws.out("pseudo_labels_edit"), "--workers", "1"]


# ---- eval --data: a moved dataset, never another one
@case("eval --data another world with the same ids (make-world --seed 9)", "--data world_other: not the dataset "
      "pseudo was made from", "its labels, differ under the same id", "pass that dataset")
def _eval_data_other(ws: Workspace) -> Iterator[list[object]]:
    other = ws.root / "world_other"
    if not other.is_dir():
        cli_ok("make-world", other, "--train", 4, "--val", 2, "--seed", 9)
    yield ["eval", ws.pseudo, "--data", other]


@case("eval --data a copy of the world with another class list (two classes swapped)", "--data world_swapped: not "
      "the dataset pseudo was made from", "another class list")
def _eval_data_other_classes(ws: Workspace) -> Iterator[list[object]]:
    world = ws.copy(ws.world, "world_swapped")
    names = (world / "classes.txt").read_text().splitlines()
    names[1], names[2] = names[2], names[1]
    (world / "classes.txt").write_text("\n".join(names) + "\n")
    yield ["eval", ws.pseudo, "--data", world]


@case("eval --data an identical copy made by `cp -r` (new modification times): the moved dataset is scored",
      "✓ eval: mIoU", exit_code=0)
def _eval_data_copy(ws: Workspace) -> Iterator[list[object]]:
    copy = ws.root / "world_cp"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(ws.world, copy, copy_function=shutil.copy)  # contents, not times
    yield ["eval", ws.pseudo, "--data", copy]


# ---- no file output replaces a file vpltool did not write, or wrote as another kind, without --overwrite
def _vision(ws: Workspace) -> Path:
    """Vision prototypes learned from the workspace's CAMs (made once)."""
    path = ws.root / "vision.safetensors"
    if not path.is_file():
        cli_ok("learn-prototypes", ws.features, "-c", ws.cams, "-t", ws.text, "-o", path, "--iters", 2)
    return path


def _demo_run(ws: Workspace) -> Path:
    """A run folder with `demo-report`'s metrics.json and contact sheet (made once)."""
    run = ws.root / "run_demo"
    if not (run / "metrics.json").is_file():
        for name, source in (("features", ws.features), ("cams_text", ws.cams), ("pseudo", ws.pseudo)):
            if not (run / name).is_dir():
                shutil.copytree(source, run / name)
        cli_ok("demo-report", run)
    return run


def _notes(ws: Workspace, name: str = "notes.txt") -> Path:
    path = ws.root / name
    path.write_text("my notes: keep the seed-0 run\n")
    return path


@case("eval --json onto the learned vision prototypes", "vision.safetensors: holds vision prototypes "
      "(`learn-prototypes`), not scores (`eval --json`), so it is not replaced", "pass --overwrite to replace it")
def _eval_json_onto_vision(ws: Workspace) -> Iterator[list[object]]:
    yield ["eval", ws.pseudo, "--json", _vision(ws)]


@case("eval --json onto a user's notes.txt", "notes.txt: exists and was not written by vpltool, so it is not "
      "replaced", "choose another --json, or pass --overwrite")
def _eval_json_onto_notes(ws: Workspace) -> Iterator[list[object]]:
    yield ["eval", ws.pseudo, "--json", _notes(ws)]


@case("eval --json onto a user's notes.txt with --overwrite (replaced, as asked)", "✓ eval: mIoU", exit_code=0,
      leaves=("notes_replaced.txt",))
def _eval_json_onto_notes_overwrite(ws: Workspace) -> Iterator[list[object]]:
    yield ["eval", ws.pseudo, "--json", _notes(ws, "notes_replaced.txt"), "--overwrite"]


@case("eval --json onto the scores of an earlier eval --json (the same kind: replaced)", "✓ eval: mIoU",
      exit_code=0, leaves=("scores.json",))
def _eval_json_again(ws: Workspace) -> Iterator[list[object]]:
    scores = ws.root / "scores.json"
    cli_ok("eval", ws.cams, "--json", scores)
    yield ["eval", ws.pseudo, "--json", scores]


@case("eval --per-image onto the scores of eval --json", "scores_pi.json: holds scores (`eval --json`), not "
      "per-image scores (`eval --per-image`)")
def _eval_per_image_onto_scores(ws: Workspace) -> Iterator[list[object]]:
    scores = ws.root / "scores_pi.json"
    if not scores.is_file():
        cli_ok("eval", ws.pseudo, "--json", scores)
    yield ["eval", ws.pseudo, "--per-image", scores]


@case("text-prototypes -o onto the learned vision prototypes", "vision.safetensors: holds vision prototypes "
      "(`learn-prototypes`), not text prototypes (`text-prototypes`)", "choose another --out")
def _text_onto_vision(ws: Workspace) -> Iterator[list[object]]:
    yield ["text-prototypes", ws.features, "-o", _vision(ws), *TEXT_ARGS, *CPU]


@case("text-prototypes -o onto another run's text prototypes (the same kind: replaced)", "✓ text-prototypes",
      exit_code=0, leaves=("text_again.safetensors",))
def _text_again(ws: Workspace) -> Iterator[list[object]]:
    shutil.copyfile(ws.text, ws.root / "text_again.safetensors")
    yield ["text-prototypes", ws.features, "-o", ws.root / "text_again.safetensors", *TEXT_ARGS, *CPU]


@case("learn-prototypes -o onto text prototypes that are not its input", "text_copy.safetensors: holds text "
      "prototypes (`text-prototypes`), not vision prototypes (`learn-prototypes`)")
def _learn_onto_text(ws: Workspace) -> Iterator[list[object]]:
    other = ws.root / "text_copy.safetensors"  # not text_other's name: that case needs other prototypes
    shutil.copyfile(ws.text, other)
    yield ["learn-prototypes", ws.features, "-c", ws.cams, "-t", ws.text, "-o", other,
           "--plot", ws.out("vision_x.png"), "--iters", 2]


@case("learn-prototypes --plot onto demo-report's contact sheet", "run_demo/contact_sheet.png: holds a contact "
      "sheet (`demo-report`), not a loss curve (`learn-prototypes --plot`)", "choose another --plot")
def _plot_onto_sheet(ws: Workspace) -> Iterator[list[object]]:
    yield ["learn-prototypes", ws.features, "-c", ws.cams, "-t", ws.text, "-o", ws.out("vision_sheet.safetensors"),
           "--plot", _demo_run(ws) / "contact_sheet.png", "--iters", 2]


@case("text-prototypes -o onto demo-report's metrics.json", "run_demo/metrics.json: holds a run's metrics "
      "(`demo-report`), not text prototypes (`text-prototypes`)")
def _text_onto_metrics(ws: Workspace) -> Iterator[list[object]]:
    yield ["text-prototypes", ws.features, "-o", _demo_run(ws) / "metrics.json", *TEXT_ARGS, *CPU]


@case("diagnose --json onto the text prototypes", "text_diag.safetensors: holds text prototypes "
      "(`text-prototypes`), not a diagnosis (`diagnose --json`)")
def _diagnose_onto_text(ws: Workspace) -> Iterator[list[object]]:
    target = ws.root / "text_diag.safetensors"
    shutil.copyfile(ws.text, target)
    yield ["diagnose", ws.features, "-p", ws.text, "--json", target, *CPU]


@case("demo-report over a metrics.json the user wrote", "run_user/metrics.json: exists and was not written by "
      "vpltool", "move it away, or pass --overwrite")
def _demo_report_over_user_metrics(ws: Workspace) -> Iterator[list[object]]:
    run = ws.root / "run_user"
    if not run.is_dir():
        shutil.copytree(_demo_run(ws), run)
    (run / "metrics.json").write_text('{"my": "figures"}\n')
    yield ["demo-report", run]


@case("choose-pseudo over a pseudo_choice.json the user wrote", "run_choice/metrics/pseudo_choice.json: exists "
      "and was not written by vpltool", "pass --overwrite")
def _choose_over_user_file(ws: Workspace) -> Iterator[list[object]]:
    run = ws.root / "run_choice"
    if not (run / "pseudo").is_dir():
        shutil.copytree(ws.pseudo, run / "pseudo")
        cli_ok("eval", run / "pseudo", "--json", run / "metrics" / "pseudo.json")
    (run / "metrics" / "pseudo_choice.json").write_text("{}\n")
    yield ["choose-pseudo", run, "none", "--refine", "none"]


# --------------------------------------------------------------------------------------------- branch ssr
@case("cam with an unknown --affinity", "--affinity 'sam'", "clip, dino or clip+dino")
def _unknown_affinity(ws: Workspace) -> Iterator[list[object]]:
    yield ["cam", ws.features, "-p", ws.text, "-o", ws.out("out"), "--affinity", "sam", *CPU]


@case("cam --affinity clip+dino when the DINO weights are not available offline",
      "vit_small_patch16_224.dino", "not in the local cache", "--dino-weights /path/to/model.safetensors")
def _dino_offline(ws: Workspace) -> Iterator[list[object]]:
    yield ["cam", ws.features, "-p", ws.text, "-o", ws.out("out"), "--affinity", "clip+dino", *CPU]


@case("cam --dino-weights file that does not exist", "gone_dino.safetensors", "DINO weights file not found")
def _dino_file_missing(ws: Workspace) -> Iterator[list[object]]:
    yield ["cam", ws.features, "-p", ws.text, "-o", ws.out("out"), "--affinity", "dino", "--dino-weights",
           ws.root / "gone_dino.safetensors", *CPU]


@case("cam with a mix weight outside [0, 1]", "--affinity-weight 1.5", "must be in [0, 1]")
def _bad_mix_weight(ws: Workspace) -> Iterator[list[object]]:
    yield ["cam", ws.features, "-p", ws.text, "-o", ws.out("out"), "--affinity", "clip+dino", "--affinity-weight",
           "1.5", *CPU]


@case("cam --affinity dino with --refine none", "--affinity dino feeds CAA", "--refine caa or caa+sgc")
def _dino_without_caa(ws: Workspace) -> Iterator[list[object]]:
    yield ["cam", ws.features, "-p", ws.text, "-o", ws.out("out"), "--affinity", "dino", "--refine", "none", *CPU]


@case("cam --refine caa+sgc with no superpixel groups", "--sgc-clusters 0", "must be >= 1")
def _sgc_no_clusters(ws: Workspace) -> Iterator[list[object]]:
    yield ["cam", ws.features, "-p", ws.text, "-o", ws.out("out"), "--refine", "caa+sgc", "--sgc-clusters", "0",
           *CPU]
# --------------------------------------------------------------------------------------------- branch openvocab
# CMPA (train-decoder --lambda-proto), held-out classes (--ignore-classes), open-vocabulary predict --classes
@case("CMPA with a negative weight (train-decoder --lambda-proto -1)", "--lambda-proto -1.0: must be >= 0")
def _lambda_proto_negative(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-decoder", ws.pseudo, "-p", ws.text, "-o", ws.out("out"), *DECODER_ARGS, "--lambda-proto", "-1"]


@case("CMPA temperature of zero (train-decoder --proto-temperature 0)", "--proto-temperature")
def _proto_temperature_zero(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-decoder", ws.pseudo, "-p", ws.text, "-o", ws.out("out"), *DECODER_ARGS, "--lambda-proto", "0.1",
           "--proto-temperature", "0"]


@case("holding out a class the dataset lacks (train-decoder --ignore-classes zebra)",
      "--ignore-classes 'zebra' is not a class of", "classes: circle, star")
def _ignore_unknown(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-decoder", ws.pseudo, "-p", ws.text, "-o", ws.out("out"), *DECODER_ARGS, "--ignore-classes", "zebra"]


@case("holding out background (train-decoder --ignore-classes background)", "background cannot be held out")
def _ignore_background(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-decoder", ws.pseudo, "-p", ws.text, "-o", ws.out("out"), *DECODER_ARGS, "--ignore-classes",
           "background"]


@case("an empty class list (predict --classes '')", "--classes is empty")
def _classes_empty(ws: Workspace) -> Iterator[list[object]]:
    yield ["predict", ws.decoder / "decoder.safetensors", "--split", "val", "-o", ws.out("out"), "--classes", "",
           *CPU]


@case("an empty class file (predict --classes FILE)", "--classes is empty")
def _classes_empty_file(ws: Workspace) -> Iterator[list[object]]:
    path = ws.root / "no_names.txt"
    path.write_text("\n\n")
    yield ["predict", ws.decoder / "decoder.safetensors", "--split", "val", "-o", ws.out("out"), "--classes", path,
           *CPU]


@case("a class named twice (predict --classes star,circle,star)", "--classes: 'star' is named twice")
def _classes_duplicate(ws: Workspace) -> Iterator[list[object]]:
    yield ["predict", ws.decoder / "decoder.safetensors", "--split", "val", "-o", ws.out("out"), "--classes",
           "star,circle,star", *CPU]


@case("background among the classes (predict --classes background,star)", "'background' is class 0 already")
def _classes_background(ws: Workspace) -> Iterator[list[object]]:
    yield ["predict", ws.decoder / "decoder.safetensors", "--split", "val", "-o", ws.out("out"), "--classes",
           "background,star", *CPU]


@case("a word the toy CLIP does not know (predict --classes star,zebra: said once, read as its unknown-word token)",
      "warning: the toy CLIP does not know 'zebra'", "one unknown-word token", exit_code=0,
      leaves=("out/", "out/*"))
def _classes_unknown_word(ws: Workspace) -> Iterator[list[object]]:
    toy = ws.root / "toy"
    if not (toy / "decoder" / "decoder.safetensors").is_file():
        cli_ok("extract", ws.world, "--split", "train", "-o", toy / "features", "--model", "vpltool-toy",
               "--pretrained", "none", *CPU, "--workers", "1")
        cli_ok("text-prototypes", toy / "features", "-o", toy / "text.safetensors", *TEXT_ARGS, *CPU)
        cli_ok("train-decoder", ws.pseudo, "-p", toy / "text.safetensors", "-o", toy / "decoder", *DECODER_ARGS)
    yield ["predict", toy / "decoder" / "decoder.safetensors", "--split", "val", "-o", ws.out("out"), "--classes",
           "star,zebra", *CPU]


@case("a decoder that records no templates (predict --classes, older decoder)",
      "decoder_no_prompts.safetensors: records no text templates / background words", "retrain it")
def _classes_no_prompts(ws: Workspace) -> Iterator[list[object]]:
    from safetensors.torch import save_file

    tensors, meta = _tensors_and_meta(ws.decoder / "decoder.safetensors")
    meta.pop("vpltool.prompts", None)
    path = ws.root / "decoder_no_prompts.safetensors"
    save_file(tensors, str(path), metadata=meta)
    yield ["predict", path, "--split", "val", "-o", ws.out("out"), "--classes", "star,circle", *CPU]


@case("open-vocabulary masks scored on a dataset that lacks a class (eval)",
      "predicted classes ['zebra'] are not classes of the dataset", "score against a dataset that has them")
def _eval_missing_name(ws: Workspace) -> Iterator[list[object]]:
    out = ws.root / "pred_zebra"
    if not (out / "_stage.json").is_file():
        cli_ok("predict", ws.decoder / "decoder.safetensors", "--split", "val", "-o", out, "--classes",
               "star,zebra", *CPU)
    yield ["eval", out]


# --------------------------------------------------------------------------------------------- issue 25
# Every path a run writes goes through the guard: --log (VPLTOOL_LOG), --json, file outputs, make-world's folder
@case("--log aimed at the dataset's label table (extract)", "world/labels.csv: exists and is no vpltool log",
      "never appended to; choose another --log")
def _log_on_labels(ws: Workspace) -> Iterator[list[object]]:
    yield _extract(ws, ws.world, "out", "--split", "train", "--log", ws.world / "labels.csv")


@case("--log aimed at a ground-truth mask (extract)", "world/masks/train_000000.png: exists and is no vpltool log")
def _log_on_mask(ws: Workspace) -> Iterator[list[object]]:
    yield _extract(ws, ws.world, "out", "--split", "train", "--log", ws.world / "masks" / "train_000000.png")


@case("--log aimed at the run's own prototypes file (cam)", "text_log.safetensors: exists and is no vpltool log")
def _log_on_prototypes(ws: Workspace) -> Iterator[list[object]]:
    text = ws.root / "text_log.safetensors"
    shutil.copy(ws.text, text)
    yield ["cam", ws.features, "-p", text, "-o", ws.out("out"), "--log", text, *CPU]


@case("VPLTOOL_LOG naming a new file inside the dataset (extract)",
      "world/extract.log: lies inside the dataset's folder world", "choose another --log")
def _log_env_in_dataset(ws: Workspace) -> Iterator[list[object]]:
    with mock.patch.dict(os.environ, {"VPLTOOL_LOG": str(ws.world / "extract.log")}):
        yield _extract(ws, ws.world, "out", "--split", "train")


@case("--log inside the run's own output folder (cam)", "cams_log/cam.log: lies inside",
      "this run's --out folder, whose files are the stage's; choose a --log outside it")
def _log_in_out(ws: Workspace) -> Iterator[list[object]]:
    out = ws.out("cams_log")
    yield ["cam", ws.features, "-p", ws.text, "-o", out, "--log", out / "cam.log", *CPU]


@case("--log appended to by a second run (a vpltool log: allowed)", "✓ text-prototypes", exit_code=0,
      leaves=("run.log", "t_log2.safetensors"))
def _log_twice(ws: Workspace) -> Iterator[list[object]]:
    log = ws.out("run.log")
    log.unlink(missing_ok=True)
    cli_ok("text-prototypes", ws.features, "-o", ws.out("t_log1.safetensors"), *TEXT_ARGS, *CPU, "--log", log)
    yield ["text-prototypes", ws.features, "-o", ws.out("t_log2.safetensors"), *TEXT_ARGS, *CPU, "--log", log]


@case("eval --json onto an item of the CAM folder it scores",
      "cams/train_000000.safetensors: lies inside cams, this run's input (the folder scored)", "choose another --json")
def _json_on_item(ws: Workspace) -> Iterator[list[object]]:
    yield ["eval", ws.cams, "--json", ws.cams / "train_000000.safetensors"]


@case("eval --json onto the record of the folder it scores", "pred_val/_stage.json: lies inside pred_val, this "
      "run's input (the folder scored)")
def _json_on_record(ws: Workspace) -> Iterator[list[object]]:
    yield ["eval", ws.predictions(), "--json", ws.predictions() / "_stage.json"]


@case("eval --json onto a mask of the folder it scores", "pred_val/val_000001.png: lies inside pred_val")
def _json_on_prediction(ws: Workspace) -> Iterator[list[object]]:
    yield ["eval", ws.predictions(), "--json", ws.predictions() / "val_000001.png"]


@case("diagnose --json onto an item of its extract folder",
      "features/train_000000.safetensors: lies inside features, this run's input (the extract folder)")
def _diagnose_json_on_item(ws: Workspace) -> Iterator[list[object]]:
    yield ["diagnose", ws.features, "-p", ws.text, "--json", ws.features / "train_000000.safetensors", *CPU]


@case("text-prototypes -o onto the dataset's split file", "world/splits/train.txt: lies inside the dataset's folder "
      "world", "no stage writes into a dataset")
def _text_on_split(ws: Workspace) -> Iterator[list[object]]:
    yield ["text-prototypes", ws.features, "-o", ws.world / "splits" / "train.txt", *TEXT_ARGS, *CPU]


@case("text-prototypes -o onto the dataset's class list", "world/classes.txt: lies inside the dataset's folder world")
def _text_on_classes(ws: Workspace) -> Iterator[list[object]]:
    yield ["text-prototypes", ws.features, "-o", ws.world / "classes.txt", *TEXT_ARGS, *CPU]


@case("text-prototypes -o onto an item of its extract folder",
      "features/train_000003.safetensors: lies inside features, this run's input (the extract folder)")
def _text_on_item(ws: Workspace) -> Iterator[list[object]]:
    yield ["text-prototypes", ws.features, "-o", ws.features / "train_000003.safetensors", *TEXT_ARGS, *CPU]


@case("learn-prototypes -o onto an item of its CAM folder",
      "cams/train_000002.safetensors: lies inside cams, this run's input (--cams)")
def _learn_on_item(ws: Workspace) -> Iterator[list[object]]:
    yield ["learn-prototypes", ws.features, "-c", ws.cams, "-t", ws.text, "-o", ws.cams / "train_000002.safetensors",
           "--iters", "2", *CPU]


@case("text-prototypes -o into another stage's folder (not one of its inputs)",
      "pseudo/text.safetensors: lies inside pseudo, a `crf` folder whose files only that stage writes")
def _text_in_other_stage(ws: Workspace) -> Iterator[list[object]]:
    yield ["text-prototypes", ws.features, "-o", ws.pseudo / "text.safetensors", *TEXT_ARGS, *CPU]


@case("cam -o inside its extract folder", "features/cams: lies inside features, this run's input (the source)")
def _cam_in_features(ws: Workspace) -> Iterator[list[object]]:
    yield ["cam", ws.features, "-p", ws.text, "-o", ws.features / "cams", *CPU]


@case("cam -o inside the dataset", "world/cams: lies inside the dataset's folder world")
def _cam_in_dataset(ws: Workspace) -> Iterator[list[object]]:
    yield ["cam", ws.features, "-p", ws.text, "-o", ws.world / "cams", *CPU]


@case("make-world into a dataset of the user's (no vpltool record)",
      "mydata: not empty and made by no vpltool stage", "choose a new or empty folder for OUT")
def _make_world_into_dataset(ws: Workspace) -> Iterator[list[object]]:
    mydata = ws.copy(ws.world, "mydata")
    for record in mydata.glob("_*.json"):
        record.unlink()
    yield ["make-world", mydata, "--train", "4", "--val", "1"]


@case("make-world into a folder holding only notes.txt", "notes_only: not empty and made by no vpltool stage")
def _make_world_into_notes(ws: Workspace) -> Iterator[list[object]]:
    folder = ws.out("notes_only")
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes\n")
    yield ["make-world", folder, "--train", "4", "--val", "1"]


@case("-o a symbolic link loop", "loopA: a symbolic link loop (loopA → loopB → loopA)", "remove it")
def _out_loop(ws: Workspace) -> Iterator[list[object]]:
    a, b = ws.root / "loopA", ws.root / "loopB"
    for link, target in ((a, "loopB"), (b, "loopA")):
        link.unlink(missing_ok=True)
        link.symlink_to(target)
    yield ["cam", ws.features, "-p", ws.text, "-o", a, *CPU]


@case("-o with a 300-byte name", "a name of 300 bytes, longer than a file name may be (255 bytes)",
      "choose a shorter --out")
def _out_300_bytes(ws: Workspace) -> Iterator[list[object]]:
    yield ["text-prototypes", ws.features, "-o", ws.root / ("p" * 288 + ".safetensors"), *TEXT_ARGS, *CPU]


LONG_NAME = "p" * 238 + ".safetensors"  # 250 bytes: legal; its temporary ".NAME.XXXXXXXX.tmp" would not be


@case("a legal -o name of 250 bytes (its temporary name is cut to fit)", "✓ text-prototypes", exit_code=0,
      leaves=(LONG_NAME,))
def _out_250_bytes(ws: Workspace) -> Iterator[list[object]]:
    yield ["text-prototypes", ws.features, "-o", ws.out(LONG_NAME), *TEXT_ARGS, *CPU]


@case("text-prototypes -o dir/ (a file option spelled as a folder)", "--out protos/: ends with '/', so it names a "
      "folder, but --out is a file", "give a file name, e.g. protos/out.safetensors")
def _out_slash(ws: Workspace) -> Iterator[list[object]]:
    yield ["text-prototypes", ws.features, "-o", f"{ws.out('protos')}/", *TEXT_ARGS, *CPU]


# ---- every record field is validated like input
def _edited_record(ws: Workspace, name: str, edit: Callable[[dict], None]) -> Path:
    """A copy of the extract folder whose ``_stage.json`` was edited by hand, and sealed again (as a forger would:
    the seal is refused first otherwise, robustness_round11_records): the checks behind the seal."""
    from vpltool import io

    features = ws.copy(ws.features, name)
    record = json.loads((features / "_stage.json").read_text())
    edit(record)
    (features / "_stage.json").write_text(json.dumps(io.seal(record)))
    return features


@case("_stage.json ids with ../ (cam on a hand-edited extract folder)", "features_victim/_stage.json: not a vpltool "
      "stage record ('ids' lists \"../victim\", which holds a path separator", "re-run `vpltool extract` there")
def _record_traversal(ws: Workspace) -> Iterator[list[object]]:
    shutil.copy(ws.first_feature_file(), ws.root / "victim.safetensors")  # what cam would read, and then overwrite

    def edit(record: dict) -> None:
        record["ids"].append("../victim")
        record["count"] += 1

    yield ["cam", _edited_record(ws, "features_victim", edit), "-p", ws.text, "-o", ws.out("cams_victim"), *CPU]


@case("_stage.json listing an id twice", "features_twice/_stage.json: not a vpltool stage record ('ids' lists "
      "\"train_000001\" twice)")
def _record_twice(ws: Workspace) -> Iterator[list[object]]:
    def edit(record: dict) -> None:
        record["ids"].append("train_000001")
        record["count"] += 1

    yield ["cam", _edited_record(ws, "features_twice", edit), "-p", ws.text, "-o", ws.out("out"), *CPU]


@case("a hand-edited record: params.attention_blocks \"eight\"", "features_eight/_stage.json: 'params."
      "attention_blocks' is \"eight\", not an integer", "re-run the stage that wrote it")
def _record_eight(ws: Workspace) -> Iterator[list[object]]:
    features = _edited_record(ws, "features_eight", lambda r: r["params"].update(attention_blocks="eight"))
    yield ["cam", features, "-p", ws.text, "-o", ws.out("out"), *CPU]


@case("a hand-edited record: params.model \"vpltool-toy\"", "features_model/_stage.json: not a vpltool stage record "
      "('params.model' is \"vpltool-toy\", not an object with 'model', 'pretrained')")
def _record_model(ws: Workspace) -> Iterator[list[object]]:
    features = _edited_record(ws, "features_model", lambda r: r["params"].update(model="vpltool-toy"))
    yield ["cam", features, "-p", ws.text, "-o", ws.out("out"), *CPU]


@case("a hand-edited record: params.parity null (the user passed no --parity)",
      "features_null/_stage.json: 'params.parity' is null, not a string")
def _record_null(ws: Workspace) -> Iterator[list[object]]:
    features = _edited_record(ws, "features_null", lambda r: r["params"].update(parity=None))
    yield ["cam", features, "-p", ws.text, "-o", ws.out("out"), *CPU]


# ---- one lock per folder, for shards and plain runs alike
@case("a shard run into a folder a plain run is writing (extract --shard 0/2 --overwrite)",
      "features_plain_run: another vpltool run (not a shard) is writing here")
def _shard_into_plain(ws: Workspace) -> Iterator[list[object]]:
    from vpltool import io

    out = ws.out("features_plain_run")
    with io.output_lock(out):
        yield ["extract", ws.world, "--split", "train", "-o", out, *TINY, *CPU, "--shard", "0/2", "--cache", "full",
               "--overwrite"]


@case("a plain run into a folder shards are writing", "features_shard_run: the shards of a --shard run are writing "
      "here")
def _plain_into_shards(ws: Workspace) -> Iterator[list[object]]:
    from vpltool import io

    out = ws.out("features_shard_run")
    with io.output_lock(out, shard=(0, 2)):
        yield ["extract", ws.world, "--split", "train", "-o", out, *TINY, *CPU]


@case("a resume right after cam --workers 2 was killed with -9 (its loading workers orphaned)", "✓ cam: 3 images",
      "1 already done", exit_code=0, leaves=("cams_killed/*", "-cams_killed/_run.json"))
def _resume_after_kill(ws: Workspace) -> Iterator[list[object]]:
    out = ws.out("cams_killed")
    args = ["cam", ws.features, "-p", ws.text, "-o", out, *CPU, "--workers", "2"]
    proc = paced_cli(args)
    try:
        wait_until(proc, lambda: any(out.glob("*.safetensors")))
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # the main process alone, as the OOM killer does: not its workers
        proc.communicate()
    for path in sorted(out.glob("*.safetensors"))[1:] + sorted(out.glob(".*.tmp")):
        path.unlink()  # one finished item, whenever the kill landed: the same page every time
    yield args


@case("a refused shard run leaves no lock file of its own", "features_half2: an interrupted run made with other "
      "parameters (max_side differ)")
def _refused_shard(ws: Workspace) -> Iterator[list[object]]:
    folder = ws.out("features_half2")
    cli_ok("extract", ws.world, "--split", "train", "-o", folder, *TINY, *CPU, "--shard", "0/2")
    yield ["extract", ws.world, "--split", "train", "-o", folder, *TINY, *CPU, "--shard", "1/2", "--max-side", "64"]


@case("--shard 1/3 into a folder where shard 0 of 2 finished", "features_counts: shard(s) 0 of 2 finished here, so "
      "it is made in 2 shards", "not --shard 1/3")
def _shard_counts(ws: Workspace) -> Iterator[list[object]]:
    folder = ws.out("features_counts")
    cli_ok("extract", ws.world, "--split", "train", "-o", folder, *TINY, *CPU, "--shard", "0/2")
    yield ["extract", ws.world, "--split", "train", "-o", folder, *TINY, *CPU, "--shard", "1/3"]


@case("--shard 1_0/20 (Python's int reads 10)", "--shard '1_0/20': use i/n with digits 0-9")
def _shard_underscore(ws: Workspace) -> Iterator[list[object]]:
    yield ["extract", ws.world, "-o", ws.out("out"), *TINY, *CPU, "--shard", "1_0/20"]


@case("--shard in Arabic-Indic digits (١/٢)", "--shard '١/٢': use i/n with digits 0-9")
def _shard_arabic(ws: Workspace) -> Iterator[list[object]]:
    yield ["extract", ws.world, "-o", ws.out("out"), *TINY, *CPU, "--shard", "١/٢"]


def _torchrun_env(**values: str):
    """The environment of a (stale) torchrun shell: ``values`` set, the other rendezvous variables unset."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    return mock.patch.dict(os.environ, {**env, **values}, clear=True)


@case("extract under RANK=1 WORLD_SIZE=2 without --shard (torchrun's rank is the shard)",
      "✓ extract: 2 images", "this shard done; other shards pending", exit_code=0,
      leaves=("features_rank1/", "features_rank1/*"))
def _shard_from_rank(ws: Workspace) -> Iterator[list[object]]:
    with _torchrun_env(RANK="1", WORLD_SIZE="2"):
        yield ["extract", ws.world, "--split", "train", "-o", ws.out("features_rank1"), *TINY, *CPU, "--workers", "1"]


@case("an explicit --shard 0/1 under RANK=1 WORLD_SIZE=2", "--shard 0/1, but RANK=1 WORLD_SIZE=2",
      "drop --shard under torchrun, or unset RANK and WORLD_SIZE")
def _shard_vs_rank(ws: Workspace) -> Iterator[list[object]]:
    with _torchrun_env(RANK="1", WORLD_SIZE="2"):
        yield ["extract", ws.world, "-o", ws.out("out"), *TINY, *CPU, "--shard", "0/1"]


@case("--shard 0/2 under RANK=1 WORLD_SIZE=2", "--shard 0/2, but RANK=1 WORLD_SIZE=2 (torchrun or a job script) make "
      "this process shard 1/2")
def _shard_vs_rank_2(ws: Workspace) -> Iterator[list[object]]:
    with _torchrun_env(RANK="1", WORLD_SIZE="2"):
        yield ["extract", ws.world, "-o", ws.out("out"), *TINY, *CPU, "--shard", "0/2"]


@case("RANK=-1 WORLD_SIZE=2 (an integer out of range, not \"not integers\")",
      "RANK=-1 WORLD_SIZE=2: RANK must be in 0..WORLD_SIZE-1 (0..1)", "launch with torchrun")
def _negative_rank(ws: Workspace) -> Iterator[list[object]]:
    with _torchrun_env(RANK="-1", WORLD_SIZE="2"):
        yield ["extract", ws.world, "-o", ws.out("out"), *TINY, *CPU]


@case("eval under RANK=1 WORLD_SIZE=2 of a job script (no MASTER_ADDR): a single-rank stage runs on rank 0 only",
      "rank 1 of 2: `vpltool eval` runs on rank 0 only; nothing to do here", exit_code=0)
def _single_rank_stage(ws: Workspace) -> Iterator[list[object]]:
    with _torchrun_env(RANK="1", WORLD_SIZE="2"):
        yield ["eval", ws.pseudo]


@case("WORLD_SIZE=2 without RANK", "WORLD_SIZE=2 is set but RANK is not", "launch with torchrun")
def _world_without_rank(ws: Workspace) -> Iterator[list[object]]:
    with _torchrun_env(WORLD_SIZE="2"):
        yield ["extract", ws.world, "-o", ws.out("out"), *TINY, *CPU]


@case("train-decoder with RANK and WORLD_SIZE but no MASTER_ADDR (an old torchrun shell)",
      "RANK=1 WORLD_SIZE=2 are set but MASTER_ADDR and MASTER_PORT not", "launch with torchrun")
def _decoder_no_master(ws: Workspace) -> Iterator[list[object]]:
    with _torchrun_env(RANK="1", WORLD_SIZE="2"):
        yield ["train-decoder", ws.pseudo, "-p", ws.text, "-o", ws.out("decoder_rank"), *DECODER_ARGS]


@case("train-decoder whose peers never come (the rendezvous timeout cut to 2 s here; 300 s by default)",
      "rank 1 of WORLD_SIZE=2 did not meet its peers at 127.0.0.1:… within 2 s", "start all 2 ranks (torchrun")
def _decoder_no_peer(ws: Workspace) -> Iterator[list[object]]:
    import socket

    from vpltool.runtime import ranks

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with _torchrun_env(RANK="1", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)), \
            mock.patch.object(ranks, "RENDEZVOUS_S", 2):
        yield ["train-decoder", ws.pseudo, "-p", ws.text, "-o", ws.out("decoder_peers"), *DECODER_ARGS]


@case("SIGTERM mid-run (Slurm's preemption), handled like Ctrl-C",
      "interrupted (SIGTERM): finished items are kept; re-run the same command to resume", exit_code=143,
      leaves=("cams_term/", "cams_term/*"))
def _sigterm(ws: Workspace) -> Iterator[list[object]]:
    from vpltool.stages.cam import stage

    real, calls = stage.cams_for_batch, [0]

    def cams_for_batch(*args, **kwargs):  # the second batch is where the job scheduler's signal lands
        calls[0] += 1
        if calls[0] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    with mock.patch.object(stage, "cams_for_batch", cams_for_batch):
        yield ["cam", ws.features, "-p", ws.text, "-o", ws.out("cams_term"), *CPU]


def _benchmark_shard_args(ws: Workspace, out: Path) -> list[object]:
    return ["benchmark", "naclip", "--root", f"voc21={_miniature(ws, 'voc21')}", "-o", out, *TINY, *CPU,
            "--short-side", "64", "--slide-crop", "0", "--batch-size", "1", "--shard", "0/2"]


@contextlib.contextmanager
def _signal_at_second_batch(sig: int) -> Iterator[None]:
    """``sig`` sent to this process when the segmentor starts its second batch: where a Ctrl-C or a job scheduler's
    SIGTERM lands mid-run."""
    from vpltool.models.dense import segmentor

    real, calls = segmentor.scores_batch, [0]

    def scores_batch(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            os.kill(os.getpid(), sig)
        return real(*args, **kwargs)

    # Python's own Ctrl-C handler, as in a command typed at a terminal: a shell starts a background job (`make ... &`)
    # with SIGINT ignored, and the cases would inherit it
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with mock.patch.object(segmentor, "scores_batch", scores_batch):
            yield
    finally:
        signal.signal(signal.SIGINT, before)


@case("benchmark --shard 0/2 stopped by Ctrl-C (SIGINT) mid-run", "interrupted: finished items are kept; re-run the "
      "same command to resume", exit_code=130, leaves=("bench_int/", "bench_int/voc21/", "bench_int/voc21/*"))
def _benchmark_shard_sigint(ws: Workspace) -> Iterator[list[object]]:
    with _signal_at_second_batch(signal.SIGINT):
        yield _benchmark_shard_args(ws, ws.out("bench_int"))


@case("benchmark --shard 0/2 stopped by SIGTERM mid-run (Slurm's preemption)", "interrupted (SIGTERM): finished "
      "items are kept; re-run the same command to resume", exit_code=143,
      leaves=("bench_term/", "bench_term/voc21/", "bench_term/voc21/*"))
def _benchmark_shard_sigterm(ws: Workspace) -> Iterator[list[object]]:
    with _signal_at_second_batch(signal.SIGTERM):
        yield _benchmark_shard_args(ws, ws.out("bench_term"))


@case("a resume right after benchmark --shard 0/2 --workers 2 was killed with -9 (its loaders orphaned; its "
      "temporary and shard claim removed)", "some benchmarks are not scored yet (other shards still running)",
      exit_code=0, leaves=("bench_killed/voc21/*", "-bench_killed/voc21/.*.tmp",
                           "-bench_killed/voc21/.vpltool.lock.0-of-2"))
def _benchmark_shard_resume_after_kill(ws: Workspace) -> Iterator[list[object]]:
    out = ws.out("bench_killed")
    args = [*_benchmark_shard_args(ws, out), "--workers", "2"]
    proc = paced_cli(args)
    try:
        wait_until(proc, lambda: any((out / "voc21").glob("*.png")))
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # the main process alone, as the OOM killer does: its loaders live on
        proc.communicate()
    if left := survivors(proc.pid):
        raise RuntimeError(f"processes of the killed run outlived it: {left}")
    for path in sorted((out / "voc21").glob("*.png"))[1:] + sorted((out / "voc21").glob(".*.tmp")):
        path.unlink()  # one finished mask and one temporary, whenever the kill landed: the same page every time
    (out / "voc21" / ".2007_000061.png.k9a1b2c3.tmp").write_bytes(b"half a mask")
    yield args  # the same command at once: the lock the killed run held does not block it


@case("a resume after kill -9 removes the temporaries the kill left", "✓ cam: 2 images", "2 already done",
      exit_code=0, leaves=("cams_tmp/*", "-cams_tmp/_run.json", "-cams_tmp/.train_000003.safetensors.k9a1b2c3.tmp"))
def _leftover_tmp(ws: Workspace) -> Iterator[list[object]]:
    cams = interrupted_copy(ws, ws.cams, "cams_tmp")
    (cams / ".train_000003.safetensors.k9a1b2c3.tmp").write_bytes(b"half a file")
    yield ["cam", ws.features, "-p", ws.text, "-o", cams, *CPU]


# ---- an option without effect in its combination is warned about and never recorded; files by their content
@case("cam resumed with --sgc-clusters 7 but no --refine caa+sgc (warned, not recorded: the resume goes on)",
      "warning: --sgc-clusters 7 has no effect without --refine caa+sgc; it is ignored (and not recorded)",
      exit_code=0, leaves=("cams_resume_sgc/*", "-cams_resume_sgc/_run.json"))
def _resume_inert_sgc(ws: Workspace) -> Iterator[list[object]]:
    yield ["cam", ws.features, "-p", ws.text, "-o", interrupted_copy(ws, ws.cams, "cams_resume_sgc"), "--sgc-clusters",
           "7", *CPU]


@case("cam resumed with --affinity-weight 0.9 and --affinity clip (warned, not recorded)",
      "warning: --affinity-weight 0.9 has no effect without --affinity clip+dino", exit_code=0,
      leaves=("cams_resume_mix/*", "-cams_resume_mix/_run.json"))
def _resume_inert_weight(ws: Workspace) -> Iterator[list[object]]:
    yield ["cam", ws.features, "-p", ws.text, "-o", interrupted_copy(ws, ws.cams, "cams_resume_mix"),
           "--affinity-weight", "0.9", *CPU]


def _dino_cam(ws: Workspace, out: Path, weights: Path | str) -> list[object]:
    return ["cam", ws.features, "-p", ws.text, "-o", out, "--affinity", "dino", "--dino-model", DINO_MODEL,
            "--dino-weights", weights, *CPU]


def _interrupted_dino_cam(ws: Workspace, name: str) -> tuple[Path, Path]:
    """A DINO cam run (weights given by a relative path) as a kill leaves it: two items, ``_run.json`` with the
    parameters and inputs of the run."""
    from vpltool import io

    weights, out = ws.dino_weights("dino_tiny.safetensors"), ws.out(name)
    cli_ok(*_dino_cam(ws, out, os.path.relpath(weights)))
    record = io.read_json(out / io.STAGE_RECORD)
    (out / io.STAGE_RECORD).unlink()
    for path in sorted(out.glob("*.safetensors"))[2:]:
        path.unlink()
    io.write_json(out / io.RUN_RECORD, {k: record[k] for k in ("stage", "params", "inputs", io.RUN_DIGEST)})
    return out, weights


@case("cam resumed with the same DINO weights by an absolute instead of a relative path", "✓ cam: 2 images",
      "2 already done", exit_code=0, leaves=("cams_dino_path/*", "-cams_dino_path/_run.json"))
def _dino_other_spelling(ws: Workspace) -> Iterator[list[object]]:
    out, weights = _interrupted_dino_cam(ws, "cams_dino_path")
    yield _dino_cam(ws, out, weights.resolve())


@case("cam resumed after its DINO weights file was replaced under the same name",
      "cams_dino_new: an interrupted run made from other inputs (dino_weights changed since)", "pass --overwrite")
def _dino_replaced(ws: Workspace) -> Iterator[list[object]]:
    out, weights = _interrupted_dino_cam(ws, "cams_dino_new")
    ws.dino_weights(weights.name, seed=1)  # other weights, same name
    yield _dino_cam(ws, out, weights)


@case("DINO weights whose tensor names carry a checkpoint's prefix (backbone.): stripped, and said so",
      "warning: --dino-weights dino_prefixed.safetensors: tensor names prefixed 'backbone.'",
      "the prefix was stripped", exit_code=0, leaves=("cams_dino_prefixed/", "cams_dino_prefixed/*"))
def _dino_prefixed(ws: Workspace) -> Iterator[list[object]]:
    weights = ws.dino_weights("dino_prefixed.safetensors", prefix="backbone.")
    yield _dino_cam(ws, ws.out("cams_dino_prefixed"), weights)


@case("a prototypes file as DINO weights", "text.safetensors: not weights of this --dino-model",
      "of its tensors missing")
def _dino_prototypes(ws: Workspace) -> Iterator[list[object]]:
    yield _dino_cam(ws, ws.out("out"), ws.text)


@case("DINO weights that are no weights file", "dino_junk.bin: not a weights file (neither safetensors nor a torch "
      "checkpoint of tensors)")
def _dino_junk(ws: Workspace) -> Iterator[list[object]]:
    junk = ws.root / "dino_junk.bin"
    junk.write_bytes(b"not a checkpoint\n" * 8)
    yield _dino_cam(ws, ws.out("out"), junk)


@case("a CNN as the DINO model (cam --dino-model resnet18)", "--dino-model resnet18: not a plain ViT",
      "use a timm vision_transformer")
def _dino_resnet(ws: Workspace) -> Iterator[list[object]]:
    yield ["cam", ws.features, "-p", ws.text, "-o", ws.out("out"), "--affinity", "dino", "--dino-model", "resnet18",
           "--dino-weights", "none", *CPU]


@case("an extract of vpltool-toy resumed without VPLTOOL_MODEL_CONFIGS (set on the first run)",
      "✓ extract: 2 images", "2 already done", exit_code=0,
      leaves=("features_toy_env/*", "-features_toy_env/_run.json"))
def _toy_without_configs(ws: Workspace) -> Iterator[list[object]]:
    toy = ["--model", "vpltool-toy", "--pretrained", "none"]
    finished = ws.out("features_toy")
    cli_ok("extract", ws.world, "--split", "train", "-o", finished, *toy, *CPU, "--workers", "1")
    folder = interrupted_copy(ws, finished, "features_toy_env")
    env = {k: v for k, v in os.environ.items() if k != "VPLTOOL_MODEL_CONFIGS"}
    with mock.patch.dict(os.environ, env, clear=True):
        yield ["extract", ws.world, "--split", "train", "-o", folder, *toy, *CPU, "--workers", "1"]


@case("VPLTOOL_DEVICE='cpu ' (a trailing space from a job script)", "✓ text-prototypes", exit_code=0,
      leaves=("t_device.safetensors",))
def _device_space(ws: Workspace) -> Iterator[list[object]]:
    with mock.patch.dict(os.environ, {"VPLTOOL_DEVICE": "cpu "}):
        yield ["text-prototypes", ws.features, "-o", ws.out("t_device.safetensors"), *TEXT_ARGS]


@case("--workers 99999999 (capped at the CPU cores, and said; 2 cores here)",
      "warning: --workers 99999999: more than the 2 CPU core(s) this process may use; using 2", exit_code=0,
      leaves=("cams_many_workers/", "cams_many_workers/*"))
def _workers_huge(ws: Workspace) -> Iterator[list[object]]:
    with mock.patch.object(os, "sched_getaffinity", lambda pid: {0, 1}):  # the same page on any machine
        yield ["cam", ws.features, "-p", ws.text, "-o", ws.out("cams_many_workers"), "--workers", "99999999", *CPU]


@case("extract --attention-blocks 100 on a 3-block model", "--attention-blocks 100: vpl-test-vit has 3 blocks; give "
      "1 to 3")
def _attention_blocks_100(ws: Workspace) -> Iterator[list[object]]:
    yield _extract(ws, ws.world, "out", "--split", "train", "--attention-blocks", "100")


@case("extract --image-size 33 (not a multiple of the patch size: said)", "warning: --image-size 33 is not a "
      "multiple of vpl-test-vit's patch size 16: every input is 48x48 pixels", exit_code=0,
      leaves=("features_size33/", "features_size33/*"))
def _image_size_33(ws: Workspace) -> Iterator[list[object]]:
    yield _extract(ws, ws.world, "features_size33", "--split", "train", "--image-size", "33")


@case("cam --sgc-position inf", "--sgc-position inf: not a finite number")
def _sgc_position_inf(ws: Workspace) -> Iterator[list[object]]:
    yield ["cam", ws.features, "-p", ws.text, "-o", ws.out("out"), "--refine", "caa+sgc", "--sgc-position", "inf",
           *CPU]


@case("train-decoder --lambda-proto inf", "--lambda-proto inf: not a finite number")
def _lambda_proto_inf(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-decoder", ws.pseudo, "-p", ws.text, "-o", ws.out("out"), *DECODER_ARGS, "--lambda-proto", "inf"]


@case("train-decoder --lambda-proto 1e30", "--lambda-proto 1e+30: must be at most 1000")
def _lambda_proto_huge(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-decoder", ws.pseudo, "-p", ws.text, "-o", ws.out("out"), *DECODER_ARGS, "--lambda-proto", "1e30"]


@case("crf resumed: the share of ignored pixels covers the whole folder", "of the 4 masks' pixels ignored (255), 2 "
      "already done", exit_code=0, leaves=("pseudo_resume/*", "-pseudo_resume/_run.json"))
def _crf_resume_share(ws: Workspace) -> Iterator[list[object]]:
    yield ["crf", ws.cams, "-o", interrupted_copy(ws, ws.pseudo, "pseudo_resume"), "--workers", "1"]


# ---- values that may be a file or a literal; class names
COCO40 = ",".join(["person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
                   "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
                   "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
                   "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
                   "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle"])


@case("40 class names, over 255 bytes (predict --classes)", "✓ predict: 2 masks", exit_code=0,
      leaves=("pred_coco40/", "pred_coco40/*"))
def _classes_40(ws: Workspace) -> Iterator[list[object]]:
    yield ["predict", ws.decoder / "decoder.safetensors", "--split", "val", "-o", ws.out("pred_coco40"), "--classes",
           COCO40, *CPU]


@case("a 291-character template (text-prototypes --templates)", "✓ text-prototypes", exit_code=0,
      leaves=("t_long_template.safetensors",))
def _long_template(ws: Workspace) -> Iterator[list[object]]:
    template = "a photo of a {}, " + "seen from far away on a grey day, " * 7 + "in a field at dawn, in low grey sky."
    assert len(template) == 291
    yield ["text-prototypes", ws.features, "-o", ws.out("t_long_template.safetensors"), "--templates", template,
           "--background", "sky", *CPU]


@case("40 background words (text-prototypes --background)", "✓ text-prototypes", exit_code=0,
      leaves=("t_many_words.safetensors",))
def _many_words(ws: Workspace) -> Iterator[list[object]]:
    yield ["text-prototypes", ws.features, "-o", ws.out("t_many_words.safetensors"), "--templates", "a photo of a {}.",
           "--background", COCO40, *CPU]


@case("predict --classes FILE saved with a byte-order mark, then eval", "✓ eval: mIoU", exit_code=0)
def _classes_bom(ws: Workspace) -> Iterator[list[object]]:
    names = (ws.world / "classes.txt").read_text().split()[1:]
    path = ws.root / "classes_bom.txt"
    path.write_text("\ufeff" + "\n".join(names) + "\n", encoding="utf-8")
    out = ws.out("pred_bom")
    cli_ok("predict", ws.decoder / "decoder.safetensors", "--split", "val", "-o", out, "--classes", path, *CPU)
    yield ["eval", out]


@case("predict --classes with a typo in a file name", "--classes myclasess.txt: no such file",
      "give a file with one class name per line, or names a,b,c")
def _classes_typo(ws: Workspace) -> Iterator[list[object]]:
    yield ["predict", ws.decoder / "decoder.safetensors", "--split", "val", "-o", ws.out("out"), "--classes",
           "myclasess.txt", *CPU]


@case("predict --classes naming a folder", "--classes world: is a folder")
def _classes_folder(ws: Workspace) -> Iterator[list[object]]:
    yield ["predict", ws.decoder / "decoder.safetensors", "--split", "val", "-o", ws.out("out"), "--classes",
           ws.world, *CPU]


@case("predict --classes /dev/null", "--classes /dev/null: is not a regular file")
def _classes_devnull(ws: Workspace) -> Iterator[list[object]]:
    yield ["predict", ws.decoder / "decoder.safetensors", "--split", "val", "-o", ws.out("out"), "--classes",
           "/dev/null", *CPU]


@case("predict --classes Star,STAR (one word to CLIP)", "--classes: 'Star' and 'STAR' are named twice (case ignored)")
def _classes_case(ws: Workspace) -> Iterator[list[object]]:
    yield ["predict", ws.decoder / "decoder.safetensors", "--split", "val", "-o", ws.out("out"), "--classes",
           "Star,STAR", *CPU]


@case("predict --classes star,sky (sky is one of the decoder's background words)",
      "--classes: 'sky' is one of the background words of decoder/decoder.safetensors", "drop it")
def _classes_background_word(ws: Workspace) -> Iterator[list[object]]:
    yield ["predict", ws.decoder / "decoder.safetensors", "--split", "val", "-o", ws.out("out"), "--classes",
           "star,sky", *CPU]


# ---- eval
@case("eval --data without --split (the split the folder was made from, val, is kept)", "✓ eval: mIoU",
      "over 2 images", exit_code=0)
def _eval_data_keeps_split(ws: Workspace) -> Iterator[list[object]]:
    yield ["eval", ws.predictions(), "--data", ws.world]


@case("a prediction mask of another size than its image (eval)", "pred_small/val_000001.png: is 48x48 but image "
      "'val_000001'", "and its ground truth are 96x96", "wrong --data or --split")
def _eval_prediction_size(ws: Workspace) -> Iterator[list[object]]:
    import numpy as np
    from PIL import Image

    pred = ws.copy(ws.predictions(), "pred_small")
    mask = pred / "val_000001.png"
    with Image.open(mask) as img:
        small = img.resize((48, 48), Image.NEAREST)
    rewrite_mask(mask, np.asarray(small))  # its id and run kept: the folder's own mask, damaged
    yield ["eval", pred]


@case("eval of open-vocabulary masks over some of the classes (said: the others score 0)",
      "warning: pred_subset: masks over the classes star, circle (predict --classes)", "are never predicted: IoU 0 "
      "where present, counted in the mIoU", exit_code=0)
def _eval_vocabulary(ws: Workspace) -> Iterator[list[object]]:
    out = ws.out("pred_subset")
    cli_ok("predict", ws.decoder / "decoder.safetensors", "--split", "val", "-o", out, "--classes", "star,circle",
           *CPU)
    yield ["eval", out]


# ---- issue 38 (robust-ml): report
def _run_folder(ws: Workspace, name: str, **metrics: object) -> Path:
    """A run folder as the Makefile leaves it (features, cams, pseudo), with ``metrics.json`` or
    ``metrics/<file>`` written from ``metrics`` (``metrics.json=…``, ``metrics/cams.json``: ``**{"…": …}``)."""
    run = ws.out(name)
    for folder in (ws.features, ws.cams, ws.pseudo):
        shutil.copytree(folder, run / folder.name)
    for rel, value in metrics.items():
        path = run / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    return run


@case("report: metrics.json whose stages is a string", "run_stages/metrics.json: 'stages' is \"CAM\", not a list "
      "of rows", "vpltool demo-report RUN")
def _report_stages_string(ws: Workspace) -> Iterator[list[object]]:
    yield ["report", _run_folder(ws, "run_stages", **{"metrics.json": {"stages": "CAM"}}), "--workers", "1"]


@case("report: a stage row's split figure is a number, not {\"miou\": …}", "'stages[0].train' is 0.5, not null or "
      "{\"miou\"")
def _report_row_number(ws: Workspace) -> Iterator[list[object]]:
    yield ["report", _run_folder(ws, "run_row", **{"metrics.json": {"stages": [{"stage": "CAM", "train": 0.5}]}}),
           "--workers", "1"]


@case("report: metrics.json whose chance is a list", "'chance' is [1, 2], not an object")
def _report_chance_list(ws: Workspace) -> Iterator[list[object]]:
    yield ["report", _run_folder(ws, "run_chance", **{"metrics.json": {"chance": [1, 2]}}), "--workers", "1"]


@case("report: an eval JSON with \"miou\": \"abc\" (metrics/cams.json)", "run_miou/metrics/cams.json: 'miou' is "
      "\"abc\", not a number in [0, 1] or null", "vpltool eval FOLDER --json")
def _report_miou_text(ws: Workspace) -> Iterator[list[object]]:
    yield ["report", _run_folder(ws, "run_miou", **{"metrics/cams.json": {"miou": "abc", "iou": {}}}), "--workers", "1"]


@case("report: an eval JSON whose bg_exponent is a list (metrics/cams.json, a CAM column's)",
      "'bg_exponent' is [1], not a number")
def _report_bg_list(ws: Workspace) -> Iterator[list[object]]:
    bad = {"miou": 0.5, "iou": {"star": 0.5}, "bg_exponent": [1]}
    yield ["report", _run_folder(ws, "run_bg", **{"metrics/cams.json": bad}), "--workers", "1"]


@case("report --workers -1 (refused as crf refuses it)", "--workers -1: must be >= 0")
def _report_workers_negative(ws: Workspace) -> Iterator[list[object]]:
    yield ["report", _run_folder(ws, "run_workers"), "--workers", "-1"]


@case("report: a pseudo mask of another size than its image names the mask", "run_size/pseudo/train_000001.png: is "
      "48x48 but image 'train_000001'", "re-run the stage that wrote it")
def _report_mask_size(ws: Workspace) -> Iterator[list[object]]:
    import numpy as np
    from PIL import Image

    run = _run_folder(ws, "run_size")
    mask = run / "pseudo" / "train_000001.png"
    with Image.open(mask) as img:
        small = img.resize((48, 48), Image.NEAREST)
    rewrite_mask(mask, np.asarray(small))  # its id and run kept: the folder's own mask, damaged
    yield ["report", run, "--workers", "1"]


@case("report while another report writes the same folder", "run_locked/report: another vpltool run is writing here",
      "choose another --out")
def _report_locked(ws: Workspace) -> Iterator[list[object]]:
    from vpltool import io

    run = _run_folder(ws, "run_locked")
    with io.replace_lock(run / "report"):
        yield ["report", run, "--workers", "1"]


@case("report into a RUN/report symlink (the link stays; the report replaces its target)", "✓ report: 4 images",
      exit_code=0, leaves=("report_target/*", "report_target/*/*", "report_target/*/*/*"))
def _report_symlink(ws: Workspace) -> Iterator[list[object]]:
    run = _run_folder(ws, "run_link")
    target = ws.out("report_target")
    cli_ok("report", run, "-o", target, "--workers", "1")
    (run / "report").symlink_to(target)
    yield ["report", run, "--workers", "1"]


@case("report after one killed while swapping folders (its .report.old-* is removed)", "✓ report: 4 images",
      exit_code=0, leaves=("run_stale/report/", "run_stale/report/*", "run_stale/report/*/*",
                           "run_stale/report/*/*/*", "-run_stale/.report.old-1/", "-run_stale/.report.old-1/*"))
def _report_stale(ws: Workspace) -> Iterator[list[object]]:
    run = _run_folder(ws, "run_stale")
    (run / ".report.old-1").mkdir()  # what a report killed between its two renames left
    (run / ".report.old-1" / "index.html").write_text("an old report")
    yield ["report", run, "--workers", "1"]


@case("report of a run whose folders come from two datasets with other classes", "run_two: its folders come from "
      "two datasets with other classes", "class 2 is 'star' in one and 'comet' in the other",
      "move the folders of one dataset into a run folder of their own")
def _report_two_class_lists(ws: Workspace) -> Iterator[list[object]]:
    other = ws.copy(ws.world, "world_renamed")
    for name in ("classes.txt", "labels.csv"):
        (other / name).write_text((other / name).read_text().replace("star", "comet"))
    run = _run_folder(ws, "run_two")
    cli_ok("extract", other, "--split", "train", "-o", run / "features_other", *TINY, *CPU, "--workers", "1")
    yield ["report", run, "--workers", "1"]


@case("report of a run holding two datasets of one folder name and split (tabs named by their path)",
      "✓ report: 8 images (train (other/world) 4, train (world) 4)", exit_code=0,
      leaves=("run_twins/report/", "run_twins/report/*", "run_twins/report/*/*", "run_twins/report/*/*/*"))
def _report_twin_datasets(ws: Workspace) -> Iterator[list[object]]:
    other = ws.out("other")
    shutil.copytree(ws.world, other / "world")
    run = _run_folder(ws, "run_twins")
    cli_ok("extract", other / "world", "--split", "train", "-o", run / "features_other", *TINY, *CPU,
           "--workers", "1")
    yield ["report", run, "--workers", "1"]


@case("report of a run whose dataset lost an image since its stages ran", "made from world_shrunk as it was before a "
      "change: 3 images where the record counts 4", "re-run `vpltool extract` and the stages after it")
def _report_dataset_shrunk(ws: Workspace) -> Iterator[list[object]]:
    world = ws.copy(ws.world, "world_shrunk")
    run = ws.out("run_shrunk")
    cli_ok("extract", world, "--split", "train", "-o", run / "features", *TINY, *CPU, "--workers", "1", "--cache",
           "full")
    cli_ok("cam", run / "features", "-p", ws.text, "-o", run / "cams", *CPU)
    split = world / "splits" / "train.txt"
    split.write_text("\n".join(split.read_text().split()[:-1]) + "\n")
    yield ["report", run, "--workers", "1"]


# ---- issue 38 (robust-ml): metadata, options without effect, messages
def _edited_tensors(source: Path, edit: Callable[[dict, dict], None]) -> None:
    """Rewrite a safetensors file after ``edit(tensors, metadata)`` (what a hand edit or another tool leaves)."""
    from safetensors.torch import save_file

    tensors, meta = _tensors_and_meta(source)
    edit(tensors, meta)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(source), metadata=meta)


def _cams_with(ws: Workspace, name: str, edit: Callable[[dict, dict], None]) -> Path:
    """A copy of the CAM folder whose first labelled item was edited by ``edit``."""
    import torch

    cams = ws.copy(ws.cams, name)
    first = next(p for p in sorted(cams.glob("*.safetensors"))
                 if torch.numel(_tensors_and_meta(p)[0]["labels"]) > 0)
    _edited_tensors(first, edit)
    return cams


@case("a CAM file whose vpltool.image_size is [0, 0] (crf)", "metadata 'vpltool.image_size' is '[0, 0]', not "
      "[height, width] in pixels", "re-run `vpltool cam`")
def _cam_size_zero(ws: Workspace) -> Iterator[list[object]]:
    cams = _cams_with(ws, "cams_size0", lambda t, m: m.update({"vpltool.image_size": "[0, 0]"}))
    yield ["crf", cams, "-o", ws.out("out"), "--workers", "1"]


@case("a CAM file whose vpltool.image_size is \"abc\" (crf --backend torch)", "metadata 'vpltool.image_size' is "
      "'abc', not [height, width]")
def _cam_size_text(ws: Workspace) -> Iterator[list[object]]:
    cams = _cams_with(ws, "cams_size_abc", lambda t, m: m.update({"vpltool.image_size": "abc"}))
    yield ["crf", cams, "-o", ws.out("out"), "--workers", "1", "--backend", "torch", *CPU]


@case("a CAM file with values above 1 (the format's maps are in [0, 1])", "cams hold values in [0, 1.5], the "
      "format's are in [0, 1]")
def _cam_above_one(ws: Workspace) -> Iterator[list[object]]:
    def edit(t: dict, m: dict) -> None:
        t["cams"].view(-1)[0] = 1.5

    yield ["crf", _cams_with(ws, "cams_above1", edit), "-o", ws.out("out"), "--workers", "1"]


@case("a CAM file naming one label twice", "name a class twice (one map per label)")
def _cam_label_twice(ws: Workspace) -> Iterator[list[object]]:
    import torch

    def edit(t: dict, m: dict) -> None:
        t["labels"] = torch.cat([t["labels"][:1], t["labels"][:1]])
        t["cams"] = torch.cat([t["cams"][:1], t["cams"][:1]])

    yield ["eval", _cams_with(ws, "cams_twice", edit)]


@case("a CAM file whose grid does not fit its image (a 6x1 grid for a 96x96 image)", "a 6x1 grid of CAMs does not "
      "fit its 96x96 image")
def _cam_grid(ws: Workspace) -> Iterator[list[object]]:
    def edit(t: dict, m: dict) -> None:
        t["cams"] = t["cams"][:, :, :1].contiguous()

    yield ["crf", _cams_with(ws, "cams_grid", edit), "-o", ws.out("out"), "--workers", "1"]


def _decoder_with(ws: Workspace, name: str, key: str, edit: Callable[[object], object]) -> Path:
    folder = ws.copy(ws.decoder, name)
    _edited_tensors(folder / "decoder.safetensors",
                    lambda t, m: m.update({key: json.dumps(edit(json.loads(m[key])))}))
    return folder / "decoder.safetensors"


@case("decoder metadata decoder_config.dim = \"x\" (predict)", "decoder_x/decoder.safetensors (decoder_config): "
      "'params.dim' is \"x\", not an integer")
def _decoder_dim_text(ws: Workspace) -> Iterator[list[object]]:
    decoder = _decoder_with(ws, "decoder_x", "vpltool.decoder_config", lambda c: {**c, "dim": "x"})
    yield ["predict", decoder, "--split", "val", "-o", ws.out("out"), *CPU]


@case("decoder metadata decoder_arch.blocks = \"all\" (predict)", "metadata 'vpltool.decoder_arch' is",
      "re-run `vpltool train-decoder`")
def _decoder_arch_text(ws: Workspace) -> Iterator[list[object]]:
    decoder = _decoder_with(ws, "decoder_arch", "vpltool.decoder_arch", lambda a: {**a, "blocks": "all"})
    yield ["predict", decoder, "--split", "val", "-o", ws.out("out"), *CPU]


def _config_folder(ws: Workspace, name: str, extra: str, text: str) -> Path:
    folder = ws.out(name)
    shutil.copytree(ASSETS / "model_configs", folder)
    (folder / extra).write_text(text)
    return folder


@case("a malformed JSON beside a valid config in VPLTOOL_MODEL_CONFIGS", "configs_bad/broken.json: not valid JSON",
      "fix or remove it (the model config folder (--model-config-dir, VPLTOOL_MODEL_CONFIGS))")
def _configs_malformed(ws: Workspace) -> Iterator[list[object]]:
    folder = _config_folder(ws, "configs_bad", "broken.json", '{"embed_dim": 32,')
    with mock.patch.dict(os.environ, {"VPLTOOL_MODEL_CONFIGS": str(folder)}):
        yield _extract(ws, ws.world, "out", "--split", "train")


@case("a config {\"embed_dim\": \"x\"} in VPLTOOL_MODEL_CONFIGS (invalid, not unknown)", "configs_x/vpl-x.json: not "
      "an open_clip model config (an object with embed_dim, vision_cfg, text_cfg)")
def _configs_invalid(ws: Workspace) -> Iterator[list[object]]:
    folder = _config_folder(ws, "configs_x", "vpl-x.json", '{"embed_dim": "x"}')
    with mock.patch.dict(os.environ, {"VPLTOOL_MODEL_CONFIGS": str(folder)}):
        yield ["extract", ws.world, "--split", "train", "-o", ws.out("out"), "--model", "vpl-x", "--pretrained",
               "none", *CPU]


@case("a config whose vision_cfg.layers is \"x\" in VPLTOOL_MODEL_CONFIGS", "configs_layers/vpl-l.json: "
      "'vision_cfg.layers' is \"x\", not a whole number >= 1")
def _configs_layers(ws: Workspace) -> Iterator[list[object]]:
    cfg = json.loads((ASSETS / "model_configs" / "vpl-test-vit.json").read_text())
    cfg["vision_cfg"]["layers"] = "x"
    folder = _config_folder(ws, "configs_layers", "vpl-l.json", json.dumps(cfg))
    with mock.patch.dict(os.environ, {"VPLTOOL_MODEL_CONFIGS": str(folder)}):
        yield ["extract", ws.world, "--split", "train", "-o", ws.out("out"), "--model", "vpl-l", "--pretrained",
               "none", *CPU]


@case("train-decoder --crop-size 4096 (65,536 patch tokens)", "--crop-size 4096: 65,536 patch tokens",
      "give --crop-size 1024 or less")
def _crop_huge(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-decoder", ws.pseudo, "-p", ws.text, "-o", ws.out("out"), *DECODER_ARGS, "--crop-size", "4096"]


@case("extract --attention-blocks 3 on a 3-block model (the most it has)", "✓ extract: 4 images", exit_code=0,
      leaves=("features_blocks3/", "features_blocks3/*"))
def _attention_blocks_all(ws: Workspace) -> Iterator[list[object]]:
    yield _extract(ws, ws.world, "features_blocks3", "--split", "train", "--attention-blocks", "3")


@case("extract --attention-blocks 8 given on a 3-block model (8, the default, is refused when given)",
      "--attention-blocks 8: vpl-test-vit has 3 blocks; give 1 to 3")
def _attention_blocks_8(ws: Workspace) -> Iterator[list[object]]:
    yield _extract(ws, ws.world, "out", "--split", "train", "--attention-blocks", "8")


# options without effect: warned, never recorded
@case("predict --crf-backend torch without --crf", "warning: --crf-backend torch has no effect without --crf; it is "
      "ignored (and not recorded)", exit_code=0, leaves=("pred_backend/", "pred_backend/*"))
def _predict_backend_alone(ws: Workspace) -> Iterator[list[object]]:
    yield ["predict", ws.decoder / "decoder.safetensors", "--split", "val", "-o", ws.out("pred_backend"),
           "--crf-backend", "torch", *CPU]


@case("predict resumed without --crf-backend after a run given it without --crf (not recorded, so no refusal)",
      "✓ predict: 0 masks", "2 already done", exit_code=0, leaves=("pred_backend_rerun/_stage.json",))
def _predict_backend_rerun(ws: Workspace) -> Iterator[list[object]]:
    out = ws.out("pred_backend_rerun")
    cli_ok("predict", ws.decoder / "decoder.safetensors", "--split", "val", "-o", out, "--crf-backend", "torch", *CPU)
    yield ["predict", ws.decoder / "decoder.safetensors", "--split", "val", "-o", out, *CPU]


@case("train-decoder --proto-every 5 with --lambda-proto 0 (warned, and in neither params)",
      "warning: --proto-every 5 has no effect with --lambda-proto 0; it is ignored (and not recorded)", exit_code=0,
      leaves=("decoder_proto/", "decoder_proto/*", "decoder_proto/checkpoints/", "decoder_proto/checkpoints/*"))
def _proto_every(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-decoder", ws.pseudo, "-p", ws.text, "-o", ws.out("decoder_proto"), *DECODER_ARGS,
           "--lambda-proto", "0", "--proto-every", "5"]


@case("crf --backend pydensecrf --batch-size 4", "warning: --batch-size 4 has no effect with the pydensecrf backend "
      "(one image per process); it is ignored (and not recorded)", exit_code=0,
      leaves=("pseudo_batch/", "pseudo_batch/*"))
def _crf_batch_pydensecrf(ws: Workspace) -> Iterator[list[object]]:
    yield ["crf", ws.cams, "-o", ws.out("pseudo_batch"), "--backend", "pydensecrf", "--batch-size", "4",
           "--workers", "1"]


@case("eval --bg-exponents 3 on a folder of masks", "warning: --bg-exponents 3 has no effect on a folder of masks",
      "only CAMs have a background score", exit_code=0)
def _eval_exponents_masks(ws: Workspace) -> Iterator[list[object]]:
    yield ["eval", ws.pseudo, "--bg-exponents", "3"]


@case("text-prototypes FEATURES --classes circle,star (the folder names the classes)",
      "warning: --classes circle,star has no effect with an extract folder", exit_code=0,
      leaves=("t_classes.safetensors",))
def _text_classes_with_folder(ws: Workspace) -> Iterator[list[object]]:
    yield ["text-prototypes", ws.features, "-o", ws.out("t_classes.safetensors"), *TEXT_ARGS, "--classes",
           "circle,star", *CPU]


# '#': a comment line in every list file, never the start of a name or an id
@case("classes.txt lists '#star' and a label names it ('#' starts a comment line)", "class '#star' (id "
      "'train_000000') starts with '#', which makes a comment line in every list file", "rename the class")
def _hash_class(ws: Workspace) -> Iterator[list[object]]:
    world = ws.copy(ws.world, "world_hash")
    for name in ("classes.txt", "labels.csv"):
        (world / name).write_text((world / name).read_text().replace("star", "#star"))
    yield _extract(ws, world, "out", "--split", "train")


@case("predict --classes '#star'", "--classes: '#star' starts with '#', which makes a comment line")
def _hash_classes_option(ws: Workspace) -> Iterator[list[object]]:
    yield ["predict", ws.decoder / "decoder.safetensors", "--split", "val", "-o", ws.out("out"), "--classes",
           "#star,circle", *CPU]


@case("an image named #000.png in a folder dataset (its id would be a comment in a split file)",
      "id '#000' starts with '#'")
def _hash_id(ws: Workspace) -> Iterator[list[object]]:
    world = ws.copy(ws.world, "world_hash_id")
    shutil.rmtree(world / "splits")
    (world / "images" / "train_000000.png").rename(world / "images" / "#000.png")
    (world / "masks" / "train_000000.png").rename(world / "masks" / "#000.png")
    labels = world / "labels.csv"
    labels.write_text(labels.read_text().replace("train_000000", '"#000"'))
    yield _extract(ws, world, "out")


@case("a --templates file with '# comment' lines (skipped, as in every list file)", "✓ text-prototypes",
      "1 template(s)", exit_code=0, leaves=("t_comments.safetensors",))
def _template_comments(ws: Workspace) -> Iterator[list[object]]:
    path = ws.root / "templates_comments.txt"
    path.write_text("# the CLIP-ES wording, shortened\na photo of a {}.\n  # another comment\n")
    yield ["text-prototypes", ws.features, "-o", ws.out("t_comments.safetensors"), "--templates", path,
           "--background", "grass,sky,wall,water", *CPU]


# messages that name only the command's own options
@case("eval --json on a full disk (simulated) names --json, not --out", "free space or choose another --json")
def _eval_json_full(ws: Workspace) -> Iterator[list[object]]:
    with failing_writes(errno.ENOSPC, after=0):
        yield ["eval", ws.pseudo, "--json", ws.out("full.json")]


@case("eval --json naming a folder", "is a folder; give --json a file name")
def _eval_json_folder(ws: Workspace) -> Iterator[list[object]]:
    folder = ws.out("json_folder")
    folder.mkdir()
    yield ["eval", ws.pseudo, "--json", folder]


@case("demo-report on a full disk (simulated): its files have no option, so none is named",
      "no space left on device writing run_full/contact_sheet.png: free space")
def _demo_report_full(ws: Workspace) -> Iterator[list[object]]:
    run = _run_folder(ws, "run_full")
    with failing_writes(errno.ENOSPC, after=0):
        yield ["demo-report", run]


@case("train-decoder --val-split test (no such split) names no option it lacks", "no split 'test' here (found: "
      "train, val); give one of these split names")
def _val_split_unknown(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-decoder", ws.pseudo, "-p", ws.text, "-o", ws.out("out"), *DECODER_ARGS, "--val-split", "test"]


@case("train-decoder --tensorboard naming a file", "board_file: exists and is not a folder; choose another "
      "--tensorboard")
def _tensorboard_file(ws: Workspace) -> Iterator[list[object]]:
    board = ws.out("board_file")
    board.write_text("notes")
    yield ["train-decoder", ws.pseudo, "-p", ws.text, "-o", ws.out("out"), *DECODER_ARGS, "--tensorboard", board]


@case("learn-prototypes --plot ''", "--plot '': an empty file name; give a file name, e.g. loss.png, or leave the "
      "option out")
def _plot_empty(ws: Workspace) -> Iterator[list[object]]:
    yield ["learn-prototypes", ws.features, "-c", ws.cams, "-t", ws.text, "-o", ws.out("vision.safetensors"),
           "--plot", "", "--iters", "2", *CPU]


@case("learn-prototypes --threshold 1 (no pixel reaches it)", "--threshold 1: no pixel reached it",
      "lower --threshold (default 0.4)")
def _threshold_one(ws: Workspace) -> Iterator[list[object]]:
    yield ["learn-prototypes", ws.features, "-c", ws.cams, "-t", ws.text, "-o", ws.out("vision.safetensors"),
           "--threshold", "1", "--iters", "2", *CPU]


@case("RANK=-1 WORLD_SIZE=2", "RANK must be in 0..WORLD_SIZE-1 (0..1)")
def _rank_negative(ws: Workspace) -> Iterator[list[object]]:
    with _torchrun_env(RANK="-1", WORLD_SIZE="2"):
        yield ["extract", ws.world, "-o", ws.out("out"), *TINY, *CPU]


# train-decoder: resume, tensorboard
def _other_text(ws: Workspace) -> Path:
    path = ws.root / "text_other.safetensors"
    if not path.is_file():
        cli_ok("text-prototypes", ws.features, "-o", path, "--templates", "a picture of a {}.", "--background",
               "grass,sky,wall,water", *CPU)
    return path


@case("train-decoder --resume with another run's checkpoint: every difference named at once", "--iters 2 there, 3 "
      "here; --prototypes", "or start again without --resume (with --overwrite)")
def _resume_every_difference(ws: Workspace) -> Iterator[list[object]]:
    folder = ws.copy(ws.decoder, "decoder_other")
    (folder / "decoder.safetensors").unlink()
    args = ["--iters", "3", *DECODER_ARGS[2:]]
    yield ["train-decoder", ws.pseudo, "-p", _other_text(ws), "-o", folder, *args, "--resume"]


@case("train-decoder --resume --overwrite with other --iters (the fix is not the --overwrite already given)",
      "--iters 2 there, 3 here", "start again without --resume")
def _resume_overwrite(ws: Workspace) -> Iterator[list[object]]:
    folder = ws.copy(ws.decoder, "decoder_resume_overwrite")
    args = ["--iters", "3", *DECODER_ARGS[2:]]
    yield ["train-decoder", ws.pseudo, "-p", ws.text, "-o", folder, *args, "--resume", "--overwrite"]


@case("train-decoder --tensorboard into a folder holding another finished run's events", "board_other: holds the "
      "TensorBoard events of another run", "choose another --tensorboard folder")
def _tensorboard_other_run(ws: Workspace) -> Iterator[list[object]]:
    board = ws.out("board_other")
    cli_ok("train-decoder", ws.pseudo, "-p", ws.text, "-o", ws.out("decoder_board_a"), *DECODER_ARGS,
           "--tensorboard", board)
    yield ["train-decoder", ws.pseudo, "-p", ws.text, "-o", ws.out("out"), *DECODER_ARGS, "--tensorboard", board]



# ---- issue 38 (robust-ml): EXIF orientation as decoding applies it
def _late_exif_png(path: Path, size: tuple[int, int], orientation: int) -> None:
    """A PNG whose eXIf chunk (``orientation``) follows its pixel data, as some tools write it."""
    import zlib

    from PIL import Image

    Image.new("RGB", size, (90, 140, 60)).save(path)
    exif = Image.Exif()
    exif[0x0112] = orientation
    payload = exif.tobytes().removeprefix(b"Exif\x00\x00")
    chunk = len(payload).to_bytes(4, "big") + b"eXIf" + payload + zlib.crc32(b"eXIf" + payload).to_bytes(4, "big")
    data = path.read_bytes()
    end = data.rindex(b"IEND") - 4
    path.write_bytes(data[:end] + chunk + data[end:])


@case("a PNG whose eXIf (orientation 6) follows its pixels, its GT drawn on the image as stored",
      "world_exif/images/train_000001.png: its EXIF orientation (6) turns it to 96x64 when decoded",
      "its ground truth world_exif/masks/train_000001.png is 64x96, the image as stored",
      "save the image upright (without its orientation tag), or turn the mask")
def _exif_after_pixels(ws: Workspace) -> Iterator[list[object]]:
    from PIL import Image

    world = ws.copy(ws.world, "world_exif")
    _late_exif_png(world / "images" / "train_000001.png", (96, 64), 6)
    with Image.open(world / "masks" / "train_000001.png") as mask:
        mask.resize((96, 64), Image.NEAREST).save(world / "masks" / "train_000001.png")
    yield _extract(ws, world, "out", "--split", "train")


@case("a non-square PNG whose eXIf (orientation 6) follows its pixels, its GT drawn upright (once: a false \"the "
      "file changed during the run\")", "✓ extract: 4 images", exit_code=0, leaves=("features_exif_upright/",
                                                                                 "features_exif_upright/*"))
def _exif_upright(ws: Workspace) -> Iterator[list[object]]:
    from PIL import Image

    world = ws.copy(ws.world, "world_exif_upright")
    _late_exif_png(world / "images" / "train_000001.png", (96, 64), 6)  # shown 64 wide, 96 high
    with Image.open(world / "masks" / "train_000001.png") as mask:
        mask.resize((64, 96), Image.NEAREST).save(world / "masks" / "train_000001.png")
    yield _extract(ws, world, "features_exif_upright", "--split", "train")


@case("a square PNG whose eXIf (orientation 6) follows its pixels, with its GT (used as stored: said)",
      "warning: world_exif_square/images/train_000001.png: an EXIF orientation flips or turns it when decoded",
      "is used as stored", exit_code=0, leaves=("features_exif/", "features_exif/*"))
def _exif_square(ws: Workspace) -> Iterator[list[object]]:
    world = ws.copy(ws.world, "world_exif_square")
    _late_exif_png(world / "images" / "train_000001.png", (96, 96), 6)
    yield _extract(ws, world, "features_exif", "--split", "train")


# ---- choose-pseudo
def _choice_run(ws: Workspace, name: str) -> Path:
    """A Make run folder as `make report` leaves it, for two refinements: the run's own (none: ``RUN/cams_vision``,
    ``RUN/pseudo``) and caa (``RUN/caa/``: the workspace's CAMs and masks), each scored on train by eval."""
    base = ws.root / "choice_base"
    if not (base / "pseudo" / "_stage.json").is_file():
        cli_ok("cam", ws.features, "-p", ws.text, "-o", base / "cams_vision", "--refine", "none", *CPU)
        cli_ok("crf", base / "cams_vision", "-o", base / "pseudo", "--workers", "1")
        shutil.copytree(ws.cams, base / "caa" / "cams_vision")
        shutil.copytree(ws.pseudo, base / "caa" / "pseudo")
    run = ws.copy(base, name)
    cli_ok("eval", run / "pseudo", "--json", run / "metrics" / "pseudo.json")
    cli_ok("eval", run / "caa" / "pseudo", "--json", run / "metrics" / "caa" / "pseudo.json")
    return run


def _edit_score(run: Path, edit: Callable[[dict], object]) -> None:
    scored = run / "metrics" / "caa" / "pseudo.json"
    scored.write_text(json.dumps(edit(json.loads(scored.read_text()))))


@case("choose-pseudo after the candidate's masks were re-made (crf --overwrite --confidence 0.99): a stale score",
      "choice_stale/metrics/caa/pseudo.json: stale: choice_stale/caa/pseudo was re-made after it was scored",
      "re-run `vpltool eval choice_stale/caa/pseudo --json")
def _choice_stale(ws: Workspace) -> Iterator[list[object]]:
    run = _choice_run(ws, "choice_stale")
    cli_ok("crf", run / "caa" / "cams_vision", "-o", run / "caa" / "pseudo", "--workers", "1", "--overwrite",
           "--confidence", "0.99")
    yield ["choose-pseudo", run, "none", "caa"]


@case("choose-pseudo with a val-split prediction's score in place of a candidate's",
      "choice_val/metrics/caa/pseudo.json: scores pred_val, not choice_val/caa/pseudo")
def _choice_val_json(ws: Workspace) -> Iterator[list[object]]:
    run = _choice_run(ws, "choice_val")
    (run / "metrics" / "caa" / "pseudo.json").unlink()
    cli_ok("eval", ws.predictions(), "--json", run / "metrics" / "caa" / "pseudo.json")
    yield ["choose-pseudo", run, "none", "caa"]


@case("choose-pseudo after a candidate's mask folder was deleted (its score kept)",
      "choice_deleted/caa/pseudo: no finished pseudo masks there", "`make pseudo RUN=", "REFINES='none caa'`")
def _choice_deleted(ws: Workspace) -> Iterator[list[object]]:
    run = _choice_run(ws, "choice_deleted")
    shutil.rmtree(run / "caa" / "pseudo")
    yield ["choose-pseudo", run, "none", "caa"]


@case("choose-pseudo with a CAM folder where a candidate's pseudo masks belong",
      "choice_cams/caa/pseudo: holds `cam` output, expected `crf` or `sam-pseudo` pseudo masks")
def _choice_cams(ws: Workspace) -> Iterator[list[object]]:
    run = _choice_run(ws, "choice_cams")
    shutil.rmtree(run / "caa" / "pseudo")
    shutil.copytree(run / "caa" / "cams_vision", run / "caa" / "pseudo")
    yield ["choose-pseudo", run, "none", "caa"]


@case('choose-pseudo with a score "miou": "0.7" (a string)', "choice_string/metrics/caa/pseudo.json: 'miou' is "
      "'0.7', not a number in [0, 1]", "re-run `vpltool eval")
def _choice_string(ws: Workspace) -> Iterator[list[object]]:
    run = _choice_run(ws, "choice_string")
    _edit_score(run, lambda r: {**r, "miou": "0.7"})
    yield ["choose-pseudo", run, "none", "caa"]


@case("choose-pseudo with a score mIoU of 7.5 (a percentage, or damaged)",
      "choice_percent/metrics/caa/pseudo.json: 'miou' is 7.5, not a number in [0, 1]")
def _choice_percent(ws: Workspace) -> Iterator[list[object]]:
    run = _choice_run(ws, "choice_percent")
    _edit_score(run, lambda r: {**r, "miou": 7.5})
    yield ["choose-pseudo", run, "none", "caa"]


@case("choose-pseudo with a score JSON lacking miou", "choice_no_miou/metrics/caa/pseudo.json: no 'miou'",
      "re-run `vpltool eval")
def _choice_no_miou(ws: Workspace) -> Iterator[list[object]]:
    run = _choice_run(ws, "choice_no_miou")
    _edit_score(run, lambda r: {k: v for k, v in r.items() if k != "miou"})
    yield ["choose-pseudo", run, "none", "caa"]


@case("choose-pseudo with a score JSON that is a list", "choice_list/metrics/caa/pseudo.json: a JSON list, not an "
      "eval result")
def _choice_list(ws: Workspace) -> Iterator[list[object]]:
    run = _choice_run(ws, "choice_list")
    _edit_score(run, lambda r: [r["miou"]])
    yield ["choose-pseudo", run, "none", "caa"]


@case("choose-pseudo after running the eval command it quoted for a score JSON that is a list (the fix works)",
      "choice_list_fixed/", exit_code=0, leaves=("choice_list_fixed/metrics/pseudo_choice.json",))
def _choice_list_fixed(ws: Workspace) -> Iterator[list[object]]:
    run = _choice_run(ws, "choice_list_fixed")
    _edit_score(run, lambda r: [r["miou"]])
    refused = invoke("choose-pseudo", run, "none", "caa", "--by", "masks")
    quoted = re.search(r"re-run `(vpltool eval [^`]*)`", refused.output)
    assert refused.exit_code == 2 and quoted, refused.output
    cli_ok(*shlex.split(quoted.group(1))[1:])
    yield ["choose-pseudo", run, "none", "caa", "--by", "masks"]


@case("choose-pseudo RUN caa where RUN's own folders are none's (the refinement is read from the records)",
      "choice_own/caa/pseudo", exit_code=0, leaves=("choice_own/metrics/pseudo_choice.json",))
def _choice_own(ws: Workspace) -> Iterator[list[object]]:
    yield ["choose-pseudo", _choice_run(ws, "choice_own"), "caa", "--by", "masks"]


@case("choose-pseudo (by decoder) with no decoder trained on a candidate's masks",
      "choice_no_decoder/decoder/decoder.safetensors: not found: the decoder trained on choice_no_decoder/pseudo",
      "`make decoders RUN=", "REFINES='none caa'`")
def _choice_no_decoder(ws: Workspace) -> Iterator[list[object]]:
    yield ["choose-pseudo", _choice_run(ws, "choice_no_decoder"), "none", "caa"]


@case("choose-pseudo --refine caa where RUN's own folders are none's",
      "choice_refine/pseudo: made from CAMs of --refine none (its cams_vision record), not caa", "drop --refine")
def _choice_refine(ws: Workspace) -> Iterator[list[object]]:
    yield ["choose-pseudo", _choice_run(ws, "choice_refine"), "none", "caa", "--refine", "caa"]


# --------------------------------------------------------------------------------------------- branch robust
# ---- H1: a per-item file under another item's name (every per-item file records its id; the one reader checks it)
def _swapped(ws: Workspace, source: Path, name: str, suffix: str) -> tuple[Path, str]:
    """A copy of a finished folder where the first item's file is replaced by the last item's (a `cp` over it)."""
    folder = ws.copy(source, name)
    files = sorted(p for p in folder.glob(f"*{suffix}") if not p.name.startswith(("_", ".")))
    shutil.copyfile(files[-1], files[0])
    return folder, files[0].name


@case("eval of a CAM folder where one file is another image's (`cp` over it)", "holds item 'train_000003'",
      "not 'train_000000''s: a file copied or renamed over another item's; re-run `vpltool cam` with --overwrite")
def _eval_swapped_cam(ws: Workspace) -> Iterator[list[object]]:
    folder, _ = _swapped(ws, ws.cams, "cams_swapped_eval", ".safetensors")
    yield ["eval", folder]


@case("crf of a CAM folder where one file is another image's", "cams_swapped_crf/train_000000.safetensors: holds "
      "item 'train_000003''s cam")
def _crf_swapped_cam(ws: Workspace) -> Iterator[list[object]]:
    folder, _ = _swapped(ws, ws.cams, "cams_swapped_crf", ".safetensors")
    yield ["crf", folder, "-o", ws.out("pseudo_swapped"), "--workers", "1"]


@case("cam of a features folder where one file is another image's", "holds item 'train_000003''s features",
      "re-run `vpltool extract` with --overwrite")
def _cam_swapped_features(ws: Workspace) -> Iterator[list[object]]:
    folder, _ = _swapped(ws, ws.features, "features_swapped", ".safetensors")
    yield ["cam", folder, "-p", ws.text, "-o", ws.out("cams_of_swapped"), *CPU]


@case("eval of a pseudo-mask folder where one mask is another image's", "pseudo_swapped_eval/train_000000.png: "
      "holds item 'train_000003''s mask", "re-run the stage that wrote it with --overwrite")
def _eval_swapped_mask(ws: Workspace) -> Iterator[list[object]]:
    folder, _ = _swapped(ws, ws.pseudo, "pseudo_swapped_eval", ".png")
    yield ["eval", folder]


@case("train-decoder on a pseudo-mask folder where one mask is another image's", "holds item 'train_000003''s mask")
def _decoder_swapped_mask(ws: Workspace) -> Iterator[list[object]]:
    folder, _ = _swapped(ws, ws.pseudo, "pseudo_swapped_decoder", ".png")
    yield ["train-decoder", folder, "-p", ws.text, "-o", ws.out("decoder_swapped"), *DECODER_ARGS]


def _relabelled(ws: Workspace, name: str) -> Path:
    """A copy of the CAM folder whose first labelled file holds its own id but other labels, as a CAM of another
    dataset's image of the same id would (each label moved to the next class, so the maps still fit)."""

    def edit(tensors: dict, meta: dict) -> None:
        n = len(json.loads(meta["vpltool.classes"]))
        tensors["labels"] = (tensors["labels"] % (n - 1)) + 1

    return _cams_with(ws, name, edit)


@case("eval of a CAM folder where one file holds its id but another image's labels (another dataset's)",
      "CAMs for classes", "but the image is labelled", "re-run `vpltool cam` (with --overwrite)")
def _eval_relabelled_cam(ws: Workspace) -> Iterator[list[object]]:
    yield ["eval", _relabelled(ws, "cams_relabelled_eval")]


@case("crf of a CAM folder where one file holds its id but another image's labels", "CAMs for classes",
      "but the image is labelled")
def _crf_relabelled_cam(ws: Workspace) -> Iterator[list[object]]:
    yield ["crf", _relabelled(ws, "cams_relabelled_crf"), "-o", ws.out("pseudo_relabelled"), "--workers", "1"]


# ---- H2, M2-M4: class names checked once (presets.check_class_names): at most 254, synonyms unique, none empty
SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross", "ring", "diamond")


def _segment(ws: Workspace, out: str, *extra: object) -> list[object]:
    return ["segment", ws.world, "--split", "val", "-o", ws.out(out), *SEG_TINY, "--dense", "maskclip", *extra]


@case("segment --classes FILE with 254 filler names then the 8 shapes (262 classes: a uint8 mask wraps at 255)",
      "--classes: 262 class names, more than the 254 a mask holds")
def _too_many_classes(ws: Workspace) -> Iterator[list[object]]:
    path = ws.root / "classes_262.txt"
    path.write_text("\n".join([f"filler{i}" for i in range(254)] + list(SHAPES)) + "\n")
    yield _segment(ws, "seg_262", "--classes", path)


@case("predict --classes with 255 names", "--classes: 255 class names, more than the 254 a mask holds")
def _predict_too_many_classes(ws: Workspace) -> Iterator[list[object]]:
    yield ["predict", ws.decoder / "decoder.safetensors", "--split", "val", "-o", ws.out("pred_255"), *CPU,
           "--classes", ",".join(f"thing{i}" for i in range(255))]


@case("segment --classes '|star,circle' (a blank before the first synonym: the class is 'star')", "→ seg_blank_syn",
      exit_code=0, leaves=("seg_blank_syn/*",))
def _blank_first_synonym(ws: Workspace) -> Iterator[list[object]]:
    yield _segment(ws, "seg_blank_syn", "--classes", "|star,circle")


@case("segment --classes ',' (separators only)", "--classes")
def _classes_commas(ws: Workspace) -> Iterator[list[object]]:
    yield _segment(ws, "seg_commas", "--classes", ",")


@case("predict --classes 'star|circle,square' (synonyms are segment's)", "--classes: 'star|circle': predict reads "
      "no synonyms")
def _predict_synonyms(ws: Workspace) -> Iterator[list[object]]:
    yield ["predict", ws.decoder / "decoder.safetensors", "--split", "val", "-o", ws.out("pred_syn"), *CPU,
           "--classes", "star|circle,square"]


@case("segment --classes 'star|circle,circle' (a synonym that is another class)", "--classes: 'circle' is named "
      "twice (case ignored); give each class and synonym once")
def _synonym_is_a_class(ws: Workspace) -> Iterator[list[object]]:
    yield _segment(ws, "seg_syn_class", "--classes", "star|circle,circle")


@case("segment --classes 'circle|background,star' (background as a synonym)", "--classes: 'background' (a synonym "
      "of 'circle') is class 0 already")
def _synonym_background(ws: Workspace) -> Iterator[list[object]]:
    yield _segment(ws, "seg_syn_bg", "--classes", "circle|background,star")


@case("segment --classes 'striped_star,striped star' ('_' reads as a space: one name)", "'striped_star' and "
      "'striped star' are named twice (case ignored) ('_' reads as a space)")
def _underscore_twice(ws: Workspace) -> Iterator[list[object]]:
    yield _segment(ws, "seg_underscore", "--classes", "striped_star,striped star")


# ---- H3: train-toy-dino's outputs name their kind, so the output guard protects every other file
@case("train-toy-dino OUT where OUT is the run's text prototypes (no --overwrite)", "text_for_dino.safetensors: "
      "holds text prototypes (`text-prototypes`), not a toy DINO's weights (`train-toy-dino`), so it is not replaced")
def _dino_over_prototypes(ws: Workspace) -> Iterator[list[object]]:
    target = ws.root / "text_for_dino.safetensors"
    shutil.copyfile(ws.text, target)
    yield ["train-toy-dino", target, "--data", ws.world]


@case("train-toy-dino OUT where OUT.json beside it is an eval score file", "dino_scores.json: holds scores "
      "(`eval --json`), not a toy DINO's record (`train-toy-dino`)")
def _dino_over_scores(ws: Workspace) -> Iterator[list[object]]:
    cli_ok("eval", ws.pseudo, "--json", ws.root / "dino_scores.json")
    yield ["train-toy-dino", ws.root / "dino_scores.safetensors", "--data", ws.world]


# ---- train-toy-sam's outputs name their kind too
@case("train-toy-sam OUT where OUT is the run's text prototypes (no --overwrite)", "text_for_sam.safetensors: "
      "holds text prototypes (`text-prototypes`), not a toy SAM's weights (`train-toy-sam`), so it is not replaced")
def _sam_over_prototypes(ws: Workspace) -> Iterator[list[object]]:
    target = ws.root / "text_for_sam.safetensors"
    shutil.copyfile(ws.text, target)
    yield ["train-toy-sam", target, "--data", ws.world]


# ---- H4, H5: a dataset is known by its images' bytes, not their names and sizes (Dataset.content_sha)
def _bmp_world(ws: Workspace) -> tuple[Path, Path]:
    """The workspace world with its images saved as BMP (a BMP's byte size is its pixel size: a flipped copy keeps
    every size), and its CAMs (extract, cam; made once)."""
    from PIL import Image

    world, cams = ws.root / "world_bmp", ws.root / "cams_bmp"
    if not (cams / "_stage.json").is_file():
        ws.copy(ws.world, "world_bmp")
        for png in sorted((world / "images").glob("*.png")):
            with Image.open(png) as img:
                img.convert("RGB").save(png.with_suffix(".bmp"))
            png.unlink()
        features = ws.out("features_bmp")
        cli_ok("extract", world, "--split", "train", "-o", features, *TINY, *CPU, "--workers", "1", "--cache", "full")
        cli_ok("cam", features, "-p", ws.text, "-o", cams, *CPU)
    return world, cams


def _flipped_copy(ws: Workspace, world: Path, name: str) -> Path:
    """A copy of ``world`` with every image and mask flipped left-right: same ids, labels, names and byte sizes."""
    from PIL import Image, ImageOps

    copy = ws.copy(world, name)
    for path in sorted([*(copy / "images").glob("*.bmp"), *(copy / "masks").glob("*.png")]):
        with Image.open(path) as img:
            flipped = ImageOps.mirror(img)
            flipped.load()
        flipped.save(path)
    return copy


@case("eval CAMS --data COPY where COPY has every image and mask flipped (same ids, labels, names, byte sizes)",
      "--data world_flipped: not the dataset cams_bmp was made from", "an image's content differs under the same "
      "id, name and byte size")
def _eval_flipped(ws: Workspace) -> Iterator[list[object]]:
    world, cams = _bmp_world(ws)
    yield ["eval", cams, "--data", _flipped_copy(ws, world, "world_flipped")]


@case("eval CAMS --data COPY where COPY is an exact copy of the dataset (moved)", "mIoU", exit_code=0)
def _eval_identical_copy(ws: Workspace) -> Iterator[list[object]]:
    _, cams = _bmp_world(ws)
    yield ["eval", cams, "--data", ws.copy(ws.root / "world_bmp", "world_bmp_copy")]


@case("choose-pseudo where one refinement's CAMs and masks were re-made from another world with the same ids",
      "choice_other_world/caa/pseudo: made from another dataset than choice_other_world/pseudo",
      "the candidates' scores are not comparable")
def _choice_other_world(ws: Workspace) -> Iterator[list[object]]:
    _, cams = _bmp_world(ws)
    run = _choice_run(ws, "choice_other_world")
    shutil.rmtree(run / "caa" / "cams_vision")
    shutil.copytree(cams, run / "caa" / "cams_vision")
    cli_ok("crf", run / "caa" / "cams_vision", "-o", run / "caa" / "pseudo", "--workers", "1", "--overwrite")
    cli_ok("eval", run / "caa" / "pseudo", "--json", run / "metrics" / "caa" / "pseudo.json")
    yield ["choose-pseudo", run, "none", "caa", "--by", "masks"]


@case("choose-pseudo where a score's miou and per-class IoUs were edited together (its confusion matrix kept)",
      "choice_edited2/metrics/caa/pseudo.json: its 'miou' 0.9900 is not that of its confusion matrix")
def _choice_edited_both(ws: Workspace) -> Iterator[list[object]]:
    run = _choice_run(ws, "choice_edited2")
    _edit_score(run, lambda r: {**r, "miou": 0.99, "iou": {k: None if v is None else 0.99 for k, v in r["iou"].items()
                                                           }})
    yield ["choose-pseudo", run, "none", "caa", "--by", "masks"]


@case("choose-pseudo where a score's miou was edited to contradict its per-class IoUs", "choice_edited/metrics/caa/"
      "pseudo.json: its 'miou' 0.9900 is not the mean of its per-class IoUs", "re-run `vpltool eval")
def _choice_edited(ws: Workspace) -> Iterator[list[object]]:
    run = _choice_run(ws, "choice_edited")
    _edit_score(run, lambda r: {**r, "miou": 0.99})
    yield ["choose-pseudo", run, "none", "caa", "--by", "masks"]


# ---- M5, M6, M10: the dense options of cam and predict named as they spell them; bounds; options without effect
@case("cam --dense maskclip --dense-crop 8 --dense-stride 16 (the error names cam's options)",
      "--dense-stride 16 is larger than --dense-crop 8")
def _cam_dense_names(ws: Workspace) -> Iterator[list[object]]:
    yield ["cam", ws.features, "-p", ws.text, "-o", ws.out("cams_dense_names"), "--dense", "maskclip", "--dense-crop",
           "8", "--dense-stride", "16", *CPU]


@case("cam --dense maskclip --dense-scale 1e39 (float32 overflows)", "--dense-scale 1e+39: must be a number above "
      "0 and at most 1000")
def _cam_dense_scale_huge(ws: Workspace) -> Iterator[list[object]]:
    yield ["cam", ws.features, "-p", ws.text, "-o", ws.out("cams_dense_huge"), "--dense", "maskclip", "--dense-scale",
           "1e39", *CPU]


@case("predict --dense maskclip --classes star --dense-side 3", "--dense-side 3: must be >= 16")
def _predict_dense_names(ws: Workspace) -> Iterator[list[object]]:
    yield ["predict", ws.decoder / "decoder.safetensors", "--split", "val", "-o", ws.out("pred_dense_names"), *CPU,
           "--dense", "maskclip", "--classes", "star", "--dense-side", "3"]


@case("segment --logit-scale 1e300 (all-background masks from a float32 overflow)", "--logit-scale 1e+300: must "
      "be a number above 0 and at most 1000")
def _segment_scale_huge(ws: Workspace) -> Iterator[list[object]]:
    yield _segment(ws, "seg_scale_huge", "--classes", "star,circle", "--logit-scale", "1e300")


@case("cam --dense-crop 64 without --dense", "warning: --dense-crop 64 has no effect without --dense; it is ignored",
      exit_code=0, leaves=("cams_crop_only/*",))
def _cam_crop_without_dense(ws: Workspace) -> Iterator[list[object]]:
    yield ["cam", ws.features, "-p", ws.text, "-o", ws.out("cams_crop_only"), "--dense-crop", "64", *CPU]


@case("cam --dense maskclip --refine caa+sgc (GradCAM's refinement with the dense path)",
      "warning: --refine caa+sgc has no effect with --dense maskclip (no GradCAM, no CAA)", exit_code=0,
      leaves=("cams_dense_refine/*",))
def _cam_dense_refine(ws: Workspace) -> Iterator[list[object]]:
    yield ["cam", ws.features, "-p", ws.text, "-o", ws.out("cams_dense_refine"), "--dense", "maskclip", "--refine",
           "caa+sgc", *CPU]


# ---- M7: every stage that reads images refuses one under 16 pixels a side before a model loads (header_sizes)
def _strip_world(ws: Workspace) -> Path:
    from PIL import Image

    world = ws.copy(ws.world, "world_strip")
    ids = sorted(p.stem for p in (world / "images").glob("val_*.png"))
    Image.new("RGB", (5000, 1), (90, 120, 60)).save(world / "images" / f"{ids[0]}.png")
    (world / "masks" / f"{ids[0]}.png").unlink()
    return world


@case("segment on a split holding a 1x5000 image", "world_strip/images/val_000000.png: 1x5000 pixels, too small "
      "to segment")
def _segment_strip(ws: Workspace) -> Iterator[list[object]]:
    yield ["segment", _strip_world(ws), "--split", "val", "-o", ws.out("seg_strip"), *SEG_TINY, "--dense",
           "maskclip", "--classes", "star,circle"]


@case("predict on a split holding a 1x5000 image", "world_strip/images/val_000000.png: 1x5000 pixels, too small "
      "to segment")
def _predict_strip(ws: Workspace) -> Iterator[list[object]]:
    yield ["predict", ws.decoder / "decoder.safetensors", "--data", _strip_world(ws), "--split", "val", "-o",
           ws.out("pred_strip"), *CPU]


# ---- M9: learning rates and scales of the toy trainers: finite, positive, bounded
@case("train-toy-clip --lr nan", "--lr nan: not a finite number")
def _toy_clip_lr_nan(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-toy-clip", ws.out("toy_nan"), "--lr", "nan"]


@case("train-toy-clip --lr -1", "--lr -1.0: must be a number above 0 and at most 1")
def _toy_clip_lr_negative(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-toy-clip", ws.out("toy_neg"), "--lr", "-1"]


@case("train-toy-clip --lr inf (was: exit 0 and a model of NaN weights)", "--lr inf: not a finite number")
def _toy_clip_lr_inf(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-toy-clip", ws.out("toy_inf"), "--lr", "inf"]


@case("train-toy-dino --lr inf", "--lr inf: not a finite number")
def _toy_dino_lr_inf(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-toy-dino", ws.root / "dino_inf.safetensors", "--data", ws.world, "--lr", "inf"]


# ---- M8: no mIoU from a ground truth without a labelled pixel
@case("eval --json --data of a copy whose ground truth is all 255", "--data world_all_ignore", "not the dataset",
      "a ground-truth mask differs under the same id")
def _gt_all_ignore(ws: Workspace) -> Iterator[list[object]]:
    import numpy as np
    from PIL import Image

    from vpltool import io

    world = ws.copy(ws.world, "world_all_ignore")
    for mask in sorted((world / "masks").glob("val_*.png")):
        with Image.open(mask) as img:
            size = img.size
        io.write_mask(mask, np.full(size[::-1], 255, np.uint8))
    yield ["eval", ws.predictions(), "--data", world, "--json", ws.root / "all_ignore.json"]


# ---- M12: eval of a half-sharded folder names the pending shard
@case("eval of a segment folder where only shard 0 of 2 finished", "seg_half: no _stage.json yet: `vpltool segment` "
      "runs in 2 shards and only shard(s) 0 finished; run `vpltool segment` with the pending --shard 1/2")
def _eval_half_segment(ws: Workspace) -> Iterator[list[object]]:
    folder = ws.out("seg_half")
    cli_ok(*_segment(ws, "seg_half", "--classes", "star,circle", "--shard", "0/2"))
    yield ["eval", folder]


@case("eval of a predict folder where only shard 1 of 2 finished", "pred_half: no _stage.json yet: `vpltool "
      "predict` runs in 2 shards and only shard(s) 1 finished; run `vpltool predict` with the pending --shard 0/2")
def _eval_half_predict(ws: Workspace) -> Iterator[list[object]]:
    folder = ws.out("pred_half")
    cli_ok("predict", ws.decoder / "decoder.safetensors", "--split", "val", "-o", folder, *CPU, "--shard", "1/2")
    yield ["eval", folder]


# ---- M11: a path longer than the system takes, for every output folder (io.check_folder_target)
@case("segment -o PATH where PATH is 20 folders of 200 letters (over Linux's 4096-byte path limit)",
      "longer than a path may be (3839 bytes, leaving room for the names of the files in it); choose a shorter")
def _segment_path_too_long(ws: Workspace) -> Iterator[list[object]]:
    yield _segment(ws, "/".join(["d" * 200] * 20), "--classes", "star,circle")


# ---- L: files and records of a newer format are refused, never read silently
@case("crf on a CAM folder whose record is of format 2 (a newer vpltool)", "cams_format2/_stage.json: written in "
      "format 2 by vpltool 9.0, newer than the format 1", "upgrade vpltool")
def _record_newer_format(ws: Workspace) -> Iterator[list[object]]:
    folder = ws.copy(ws.cams, "cams_format2")
    record = json.loads((folder / "_stage.json").read_text())
    (folder / "_stage.json").write_text(json.dumps({**record, "format": "2", "vpltool": "9.0"}))
    yield ["crf", folder, "-o", ws.out("pseudo_format2"), "--workers", "1"]


@case("eval of a CAM folder holding a file of format 2", "train_000000.safetensors: written in format 2 by vpltool "
      "9.0", "upgrade vpltool")
def _tensor_newer_format(ws: Workspace) -> Iterator[list[object]]:
    from safetensors.torch import save_file

    folder = ws.copy(ws.cams, "cams_file_format2")
    path = sorted(folder.glob("*.safetensors"))[0]
    tensors, meta = _tensors_and_meta(path)
    save_file(tensors, str(path), metadata={**meta, "vpltool.format": "2", "vpltool.version": "9.0"})
    yield ["eval", folder]


# ---- L: every fraction of an eval JSON is checked where the report reads it (io.check_eval_metrics)
@case("report: an eval JSON whose precision of a class is 75 (shown as 7500 %)", "run_precision/metrics/cams.json: "
      "'precision.star' is 75, not a number in [0, 1] or null")
def _report_precision(ws: Workspace) -> Iterator[list[object]]:
    bad = {"miou": 0.5, "iou": {"star": 0.5}, "precision": {"star": 75}}
    yield ["report", _run_folder(ws, "run_precision", **{"metrics/cams.json": bad}), "--workers", "1"]


@case("report: an eval JSON whose pixel accuracy is -3", "run_pixacc/metrics/cams.json: 'pixel_accuracy' is -3, "
      "not a number in [0, 1] or null")
def _report_pixel_accuracy(ws: Workspace) -> Iterator[list[object]]:
    bad = {"miou": 0.5, "iou": {"star": 0.5}, "pixel_accuracy": -3}
    yield ["report", _run_folder(ws, "run_pixacc", **{"metrics/cams.json": bad}), "--workers", "1"]


# ---- found by tests/test_fuzz.py: a record whose inputs name no dataset
@case("train-decoder on a pseudo-mask folder whose record's inputs were edited to {\"a\": 1} (was a KeyError)",
      "pseudo_no_dataset/_stage.json: names no dataset; re-run the stage that wrote pseudo_no_dataset")
def _decoder_record_no_dataset(ws: Workspace) -> Iterator[list[object]]:
    from vpltool import io

    folder = ws.copy(ws.pseudo, "pseudo_no_dataset")
    record = json.loads((folder / "_stage.json").read_text())
    (folder / "_stage.json").write_text(json.dumps(io.seal({**record, "inputs": {"a": 1}})))  # sealed again
    yield ["train-decoder", folder, "-p", ws.text, "-o", ws.out("decoder_no_dataset"), *DECODER_ARGS]


# ---- L: one still image per item (io.images._check_still, from the header, in every stage)
def _frames_world(ws: Workspace, name: str, fmt: str) -> Path:
    """The world with its first train image replaced by a two-frame ``fmt`` image under its ``.png`` name."""
    from PIL import Image

    world = ws.copy(ws.world, name)
    png = world / "images" / "train_000000.png"
    with Image.open(png) as img:
        first = img.convert("RGB")
    frames = [first, first.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    first.save(png, format=fmt, save_all=True, append_images=frames[1:])
    return world


@case("an animated PNG (APNG, 2 frames)", "world_apng/images/train_000000.png: an animated PNG of 2 frames")
def _apng(ws: Workspace) -> Iterator[list[object]]:
    yield _extract(ws, _frames_world(ws, "world_apng", "PNG"), "out", "--split", "train")


@case("an animated WebP named .png", "world_awebp/images/train_000000.png: an animated WEBP of 2 frames")
def _animated_webp(ws: Workspace) -> Iterator[list[object]]:
    yield _extract(ws, _frames_world(ws, "world_awebp", "WEBP"), "out", "--split", "train")


@case("a GIF named .png", "world_gif_png/images/train_000000.png: a GIF image under a .png name")
def _gif_named_png(ws: Workspace) -> Iterator[list[object]]:
    from PIL import Image

    world = ws.copy(ws.world, "world_gif_png")
    png = world / "images" / "train_000000.png"
    with Image.open(png) as img:
        img.convert("RGB").save(png, format="GIF")
    yield _extract(ws, world, "out", "--split", "train")


# ---- L: wording
@case("segment --classes FILE saved as UTF-16 (Windows' \"Unicode\")", "classes_utf16.txt: UTF-16 text (byte-order "
      "mark ff fe); save it as UTF-8, e.g. iconv -f utf-16 -t utf-8")
def _classes_utf16(ws: Workspace) -> Iterator[list[object]]:
    path = ws.root / "classes_utf16.txt"
    path.write_text("star\ncircle\n", encoding="utf-16")
    yield _segment(ws, "seg_utf16", "--classes", path)


@case("crf -o INSIDE an extract folder", "lies inside features, an `extract` folder whose files only that stage "
      "writes")
def _inside_extract(ws: Workspace) -> Iterator[list[object]]:
    yield ["crf", ws.cams, "-o", ws.features / "pseudo_inside", "--workers", "1"]


@case("predict DECODER_FOLDER/ (the folder, not its decoder.safetensors)", "decoder: a folder, not a safetensors "
      "file (it holds decoder.safetensors); give the file itself")
def _predict_folder(ws: Workspace) -> Iterator[list[object]]:
    yield ["predict", ws.decoder, "--split", "val", "-o", ws.out("pred_folder"), *CPU]


@case("segment --shard 0/2: the ✓ line says the folder is incomplete", "(this shard done; other shards pending)",
      exit_code=0, leaves=("seg_shard0/*",))
def _shard_line(ws: Workspace) -> Iterator[list[object]]:
    yield _segment(ws, "seg_shard0", "--classes", "star,circle", "--shard", "0/2")


# --------------------------------------------------------------------------------------------- the eight benchmarks
def _miniature(ws: Workspace, name: str) -> Path:
    """Benchmark ``name``'s miniature layout under ``<ws>/benchmarks`` (made once)."""
    from vpltool.data.miniature import make_miniature

    return make_miniature(name, ws.root / "benchmarks")


@case("a benchmark root of another layout (ADE20K pointed at VOC)", "benchmarks/VOC2012", "not a ade20k root",
      "images/validation", "annotations/validation")
def _benchmark_wrong_layout(ws: Workspace) -> Iterator[list[object]]:
    root = _miniature(ws, "voc21")
    yield ["segment", f"ade20k={root}", "-o", ws.out("out"), *SEG_TINY]


@case("a class file with an empty line", "classes_blank.txt", "line 3 is empty", "remove the line")
def _class_file_blank_line(ws: Workspace) -> Iterator[list[object]]:
    root = _miniature(ws, "voc21")
    lines = ["background", "aeroplane", "", *[f"class {i}" for i in range(18)]]
    (ws.root / "classes_blank.txt").write_text("\n".join(lines) + "\n")
    yield ["segment", f"voc20={root}", "-o", ws.out("out"), "--class-file", ws.root / "classes_blank.txt", *TINY,
           *CPU]

@case("a class file with blank lines after its last class (accepted: they name no class)",
      "✓ segment (naclip): 3 masks", exit_code=0, leaves=("seg_trailing/", "seg_trailing/*"))
def _class_file_trailing_blank(ws: Workspace) -> Iterator[list[object]]:
    from vpltool.data.class_files import class_file_path

    path = ws.root / "classes_trailing.txt"
    path.write_text(class_file_path("sclip:voc21").read_text().rstrip("\n") + "\n\n\n")
    yield ["segment", f"voc21={_miniature(ws, 'voc21')}", "-o", ws.out("seg_trailing"), "--class-file", path, *SEG_TINY,
           "--short-side", "64", "--slide-crop", "0"]


@case("a --class-file rewritten between segment --shard 0/2 and 1/2 (a class's queries changed: named as a changed "
      "input, not as \"other parameters (class_queries differ)\")", "seg_class_file_changed: an interrupted run made "
      "from other inputs (class_file classes_changed.txt: its content changed (sha256 ", "--overwrite")
def _class_file_changed_between_shards(ws: Workspace) -> Iterator[list[object]]:
    from vpltool.data.class_files import class_file_path

    path, out = ws.root / "classes_changed.txt", ws.out("seg_class_file_changed")
    text = class_file_path("sclip:voc21").read_text()
    path.write_text(text)
    args = ["segment", f"voc21={_miniature(ws, 'voc21')}", "-o", out, "--class-file", path, *SEG_TINY,
            "--short-side", "64", "--slide-crop", "0"]
    cli_ok(*args, "--shard", "0/2")
    lines = text.splitlines()
    path.write_text("\n".join([lines[0], lines[1] + ", airplane", *lines[2:]]) + "\n")  # a synonym added
    with contextlib.chdir(ws.root):
        yield [*args, "--shard", "1/2"]

# --------------------------------------------------------------------------------------------- train-pgseg
PGSEG_ARGS = ["--recipe", "cpu", "--batch-size", "2", "--epochs", "1", "--crop-size", "32", "--workers", "1", *CPU]


def _pgseg_shard(ws: Workspace, name: str, caption: bytes, image: bytes | None = None) -> Path:
    """A folder with one img2dataset-style shard: sample 000000000 (a world image) and 000000001 (``image``, or
    the same image, with ``caption``)."""
    import io as _io
    import tarfile

    folder = ws.root / name
    folder.mkdir()
    picture = (ws.world / "images" / "train_000000.png").read_bytes()
    with tarfile.open(folder / "00000.tar", "w") as tar:
        for key, ext, data in (("000000000", "png", picture), ("000000000", "txt", b"a red star"),
                               ("000000001", "png", picture if image is None else image),
                               ("000000001", "txt", caption)):
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            tar.addfile(info, _io.BytesIO(data))
    return folder


@case("a shard cut short between two samples (train-pgseg; once read as a shard that ends there, its last sample "
      "never trained on)", "00000.tar: cut short after member 000000000.txt", "re-download it or leave it out")
def _pgseg_shard_cut_between_samples(ws: Workspace) -> Iterator[list[object]]:
    import tarfile

    folder = _pgseg_shard(ws, "pairs_cut", b"a blue ring")
    shard = folder / "00000.tar"
    with tarfile.open(shard) as tar:
        first = tar.getmember("000000000.txt")
    shard.write_bytes(shard.read_bytes()[:first.offset_data + 512])  # the first sample's blocks, whole
    yield ["train-pgseg", folder, "-o", ws.out("out"), *PGSEG_ARGS]


@case("a shard sample with an empty caption (train-pgseg)", "00000.tar:000000001: empty caption")
def _pgseg_empty_caption(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-pgseg", _pgseg_shard(ws, "pairs_empty", b"  "), "-o", ws.out("out"), *PGSEG_ARGS]


@case("a shard caption longer than the text context (train-pgseg)", "00000.tar:000000001: caption of",
      "longer than the text context (77)", "--truncate")
def _pgseg_long_caption(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-pgseg", _pgseg_shard(ws, "pairs_long", b"star " * 90), "-o", ws.out("out"), *PGSEG_ARGS]


@case("a shard image that does not decode (train-pgseg)", "00000.tar:000000001: the image does not decode")
def _pgseg_bad_image(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-pgseg", _pgseg_shard(ws, "pairs_bad_image", b"a blue cross", b"not a png"), "-o", ws.out("out"),
           *PGSEG_ARGS]


@case("a folder of images without captions (train-pgseg)", "no .tar shards and no captions.json")
def _pgseg_no_captions(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-pgseg", ws.world / "images", "-o", ws.out("out"), *PGSEG_ARGS]


def _all_empty_shard(ws: Workspace, name: str) -> Path:
    """A folder with one img2dataset-style shard of two world images whose captions are both blank."""
    import io as _io
    import tarfile

    folder = ws.root / name
    folder.mkdir()
    picture = (ws.world / "images" / "train_000000.png").read_bytes()
    with tarfile.open(folder / "00000.tar", "w") as tar:
        for key, ext, data in (("000000000", "png", picture), ("000000000", "txt", b""),
                               ("000000001", "png", picture), ("000000001", "txt", b" \n")):
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            tar.addfile(info, _io.BytesIO(data))
    return folder


@case("shards whose captions are all empty (train-pgseg)", "00000.tar:000000000: empty caption")
def _pgseg_all_empty_captions(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-pgseg", _all_empty_shard(ws, "pairs_all_empty"), "-o", ws.out("out"), *PGSEG_ARGS]


@case("a world too small for one batch (train-pgseg --batch-size 8 on 4 train pairs)",
      "4 pairs cannot fill a batch of 8", "lower --batch-size (at most 4)")
def _pgseg_world_too_small(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-pgseg", ws.world, "-o", ws.out("out"), *PGSEG_ARGS, "--batch-size", "8"]


@case("shards whose captions are all empty (train-toy-clip --pairs)", "00000.tar:000000000: empty caption")
def _toy_clip_all_empty_captions(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-toy-clip", ws.out("toy"), "--pairs", _all_empty_shard(ws, "toy_pairs_all_empty"), "--steps", "1",
           "--batch-size", "2"]


@case("pairs too few for one batch (train-toy-clip --pairs, 4 pairs, batch 64)", "4 pairs cannot fill one batch of 64",
      "make-pairs --scenes")
def _toy_clip_pairs_too_few(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-toy-clip", ws.out("toy"), "--pairs", ws.world, "--steps", "1"]


@case("make-pairs --scenes 0", "--scenes 0: must be >= 1")
def _make_pairs_no_scenes(ws: Workspace) -> Iterator[list[object]]:
    yield ["make-pairs", ws.out("pairs"), "--scenes", "0"]


@case("a missing noun vocabulary file (train-pgseg --multi-label --nouns)", "--nouns", "no such file",
      "one noun a line")
def _pgseg_nouns_missing(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-pgseg", ws.world, "-o", ws.out("out"), "--multi-label", "3", "--nouns", ws.root / "nouns.txt",
           *PGSEG_ARGS]


@case("an empty noun vocabulary file (train-pgseg --multi-label --nouns)", "--nouns", "holds no noun")
def _pgseg_nouns_empty(ws: Workspace) -> Iterator[list[object]]:
    (ws.root / "nouns_empty.txt").write_text("# shapes\n\n")
    yield ["train-pgseg", ws.world, "-o", ws.out("out"), "--multi-label", "3", "--nouns",
           ws.root / "nouns_empty.txt", *PGSEG_ARGS]


@case("an even attention window (train-pgseg --attention-window 4)", "--attention-window 4", "odd number",
      "pass 5 (or 0: global)")
def _pgseg_even_window(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-pgseg", ws.world, "-o", ws.out("out"), *PGSEG_ARGS, "--attention-window", "4"]


@case("captions keyed by nouns without their positives (train-pgseg --same-caption nouns)",
      "--same-caption nouns: needs --multi-positive", "pass both")
def _pgseg_same_caption_alone(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-pgseg", ws.world, "-o", ws.out("out"), *PGSEG_ARGS, "--same-caption", "nouns"]


@case("matched noun prompts without noun prompts (train-pgseg --multi-label-pool match)",
      "--multi-label-pool match", "pass --multi-label K")
def _pgseg_match_without_nouns(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-pgseg", ws.world, "-o", ws.out("out"), *PGSEG_ARGS, "--multi-label-pool", "match"]


@case("more noun prompts than final groups to match them to (train-pgseg --multi-label-pool match)",
      "its own final group", "pass --multi-label 8 or fewer")
def _pgseg_match_too_many_nouns(ws: Workspace) -> Iterator[list[object]]:
    (ws.root / "nouns_match.txt").write_text("circle\nsquare\n")
    yield ["train-pgseg", ws.world, "-o", ws.out("out"), *PGSEG_ARGS, "--multi-label-pool", "match",
           "--multi-label", "9", "--nouns", ws.root / "nouns_match.txt"]


@case("centres seeded from the tokens with the centre residual on (train-pgseg --assign-init tokens)",
      "--assign-init tokens", "pass --no-center-residual --assign-metric distance")
def _pgseg_token_seeds_with_residual(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-pgseg", ws.world, "-o", ws.out("out"), *PGSEG_ARGS, "--assign-init", "tokens",
           "--assign-metric", "distance"]


@case("group counts that rise (train-pgseg --groups)", "--groups 4,8", "largest first, e.g. 8,4")
def _pgseg_rising_groups(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-pgseg", ws.world, "-o", ws.out("out"), *PGSEG_ARGS, "--groups", "4,8"]


@case("group counts for another number of grouping stages (train-pgseg --groups)", "--groups 8",
      "grouping stage(s), so give")
def _pgseg_groups_other_stages(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-pgseg", ws.world, "-o", ws.out("out"), *PGSEG_ARGS, "--groups", "8"]


@case("group counts that are not whole numbers (train-pgseg --groups)", "--groups '8,four'",
      "comma-separated whole numbers")
def _pgseg_groups_not_numbers(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-pgseg", ws.world, "-o", ws.out("out"), *PGSEG_ARGS, "--groups", "8,four"]


@case("a ViT's weights as --init (train-pgseg)", "not a PGSeg checkpoint")
def _pgseg_init_other_architecture(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-pgseg", ws.world, "-o", ws.out("out"), "--init", ws.dino_weights("vit_as_pgseg.safetensors"),
           *PGSEG_ARGS]


@case("a ViT's weights where a PGSeg checkpoint belongs (cam --pgseg)", "not a PGSeg checkpoint")
def _pgseg_cam_other_architecture(ws: Workspace) -> Iterator[list[object]]:
    yield ["cam", ws.world, "--split", "train", "--pgseg", ws.dino_weights("vit_as_pgseg.safetensors"), "-o",
           ws.out("out"), *CPU]


@case("a features file where a PGSeg checkpoint belongs (segment --pgseg)", "not a PGSeg checkpoint")
def _pgseg_wrong_checkpoint(ws: Workspace) -> Iterator[list[object]]:
    yield ["segment", ws.world, "--split", "val", "--pgseg", ws.first_feature_file(), "-o", ws.out("out"), *CPU]


@case("a background word that is also a class (segment --pgseg --background)", "'star' is also a class")
def _pgseg_background_is_a_class(ws: Workspace) -> Iterator[list[object]]:
    yield ["segment", ws.world, "--split", "val", "--pgseg", ws.dino_weights("vit_as_pgseg.safetensors"),
           "--background", "sky,star", "-o", ws.out("out"), *CPU]


@case("segment --model pgseg:FILE, the file missing", "missing.safetensors", "no such checkpoint file")
def _pgseg_model_missing_file(ws: Workspace) -> Iterator[list[object]]:
    yield ["segment", ws.world, "--split", "val", "--model", f"pgseg:{ws.root / 'missing.safetensors'}", "-o",
           ws.out("out"), *CPU]


@case("segment --model pgseg: (no file after the family)", "no checkpoint file after 'pgseg:'",
      "give --model pgseg:FILE")
def _pgseg_model_no_file(ws: Workspace) -> Iterator[list[object]]:
    yield ["segment", ws.world, "--split", "val", "--model", "pgseg:", "-o", ws.out("out"), *CPU]


@case("segment --model pgseg:A --pgseg B (two checkpoints)", "two checkpoints", "alias of --model pgseg:FILE")
def _pgseg_model_and_alias_differ(ws: Workspace) -> Iterator[list[object]]:
    yield ["segment", ws.world, "--split", "val", "--model", f"pgseg:{ws.root / 'a.safetensors'}", "--pgseg",
           ws.root / "b.safetensors", "-o", ws.out("out"), *CPU]


def _pgseg_release(ws: Workspace, name: str, edit: Callable[[dict], None]) -> Path:
    """A seeded tiny PGSeg saved as GroupViT / PGSeg save their releases (``torch.save({"model": state})``, the
    reference's key names), ``edit`` applied to its state dict."""
    import torch

    from vpltool.models.text import pgseg

    state = dict(pgseg.build_model(pgseg.tiny_config(), seed=3).state_dict())
    edit(state)
    path = ws.drop_after_case(ws.root / name)  # 23 MB of the case's own
    torch.save({"model": state}, path)
    return path


@case("a GroupViT/PGSeg release .pth lacking img_encoder.patch_embed.proj.weight (segment --model pgseg:FILE)",
      "release_no_patch.pth: lacks tensor 'img_encoder.patch_embed.proj.weight'", "re-download it")
def _pgseg_release_missing_patch(ws: Workspace) -> Iterator[list[object]]:
    path = _pgseg_release(ws, "release_no_patch.pth", lambda s: s.pop("img_encoder.patch_embed.proj.weight"))
    yield ["segment", ws.world, "--split", "val", "--model", f"pgseg:{path}", "-o", ws.out("out"), *CPU]


@case("a GroupViT/PGSeg release .pth lacking text_encoder.positional_embedding (train-pgseg --init)",
      "release_no_text_pos.pth: lacks tensor 'text_encoder.positional_embedding'")
def _pgseg_release_missing_text(ws: Workspace) -> Iterator[list[object]]:
    path = _pgseg_release(ws, "release_no_text_pos.pth", lambda s: s.pop("text_encoder.positional_embedding"))
    yield ["train-pgseg", ws.world, "-o", ws.out("out"), "--init", path, *PGSEG_ARGS]


@case("a GroupViT/PGSeg release .pth with a NaN in one tensor (segment --model pgseg:FILE)",
      "release_nan.pth: tensor 'img_encoder.pos_embed' holds NaN or inf")
def _pgseg_release_nan(ws: Workspace) -> Iterator[list[object]]:
    path = _pgseg_release(ws, "release_nan.pth", lambda s: s["img_encoder.pos_embed"].view(-1)[0].fill_(float("nan")))
    yield ["segment", ws.world, "--split", "val", "--model", f"pgseg:{path}", "-o", ws.out("out"), *CPU]


@case("train-pgseg --no-npr --init a PGSeg checkpoint (its NPR modules)", "--init: a PGSeg checkpoint (it holds NPR",
      "pass --npr to fine-tune it as PGSeg")
def _pgseg_no_npr_init(ws: Workspace) -> Iterator[list[object]]:
    from vpltool.models.text import pgseg

    path = pgseg.save_checkpoint(ws.drop_after_case(ws.root / "pgseg_npr.safetensors"),
                                 pgseg.build_model(pgseg.tiny_config(), seed=3))
    yield ["train-pgseg", ws.world, "-o", ws.out("out"), "--init", path, "--no-npr", *PGSEG_ARGS]  # 32 px, as tiny


@case("train-pgseg --npr from a model whose last groups all lean one way, where T-NPR keeps no row (its term NaN)",
      "T-NPR had no rows", "the losses logged and shown are the other terms", exit_code=0,
      leaves=("pgseg_npr_run/", "pgseg_npr_run/*", "pgseg_npr_run/checkpoints/*"), numeric=True)
def _pgseg_empty_text_npr(ws: Workspace) -> Iterator[list[object]]:
    # T-NPR matches each last group's mean over its channels, a scalar whose sign is all HRS sees: when every group
    # of an image has the same sign, HRS keeps no row. Small random batches reach that by chance, and which chance
    # follows the CPU and the threads (a 2-thread run kept none where a 1-thread run on an AMX Xeon kept rows), so the
    # premise is built: the last grouping block's post-norm bias moved by +5 makes every group's mean about +5 (its
    # LayerNorm output has zero mean), on every CPU, for the two iterations the run takes
    import torch

    from vpltool.models.text import pgseg

    model = pgseg.build_model(pgseg.tiny_config(), seed=3)
    bias = [p for n, p in model.named_parameters() if n.endswith("pre_assign_attn.norm_post.bias")][-1]
    with torch.no_grad():
        bias.add_(5.0)
    path = pgseg.save_checkpoint(ws.drop_after_case(ws.root / "pgseg_lean.safetensors"), model)
    out = ws.drop_after_case(ws.out("pgseg_npr_run"))  # 82 MB that no later case reads
    yield ["train-pgseg", ws.world, "-o", out, "--init", path, "--npr", "--log-every", "1", *PGSEG_ARGS]


@case("cam --model with a CLIP's name (cam's CLIP is the prototypes file's)", "--model ViT-B-16",
      "cam's CLIP is the one its --prototypes file names")
def _cam_model_clip_name(ws: Workspace) -> Iterator[list[object]]:
    yield ["cam", ws.world, "--split", "train", "--model", "ViT-B-16", "-o", ws.out("out"), *CPU]


# ----------------------------------------------------------------------------------- inputs identified by content
# a run records every input by content ({path, sha256}, vpltool.io.inputs): a resume, the next shard or the next stage
# refuses, in one line naming the input, to go on from other bytes, and takes the same bytes by another path
def _pgseg_run(ws: Workspace, pairs: Path, name: str, stop_after: int | None = None, npr: bool = True) -> Path:
    """A finished (or, ``stop_after``, interrupted) train-pgseg run on ``pairs`` in ``name``, made with PGSEG_ARGS
    (``npr`` False: with --no-npr). On the workspace's own world each kind of run is trained once and copied (a
    training costs seconds; six cases want one); a pairs folder of the case's own is trained on as it is."""
    out = ws.drop_after_case(ws.out(name))  # the case's own: removed once it has run
    if pairs != ws.world:
        return _train_pgseg(pairs, out, stop_after, npr)
    made = ws.root / ".pgseg_runs" / f"stop{stop_after}_npr{int(npr)}"  # hidden: no case's output, never damaged
    if not made.is_dir():
        _train_pgseg(ws.world, made.with_name(made.name + ".part"), stop_after, npr).rename(made)
    shutil.copytree(made, out)
    return out


def _train_pgseg(pairs: Path, out: Path, stop_after: int | None, npr: bool) -> Path:
    """:func:`_pgseg_run`'s training into ``out``."""
    shutil.rmtree(out, ignore_errors=True)
    if stop_after is None:
        cli_ok("train-pgseg", pairs, "-o", out, *PGSEG_ARGS, *([] if npr else ["--no-npr"]))
    else:
        from vpltool.config import RuntimeConfig
        from vpltool.config.pgseg import pgseg_recipe
        from vpltool.stages.train_text import run_train_text

        run_train_text(pairs, out, pgseg_recipe("cpu", batch_size=2, epochs=2, crop_size=32, checkpoint_every=1,
                                                npr=npr),
                       RuntimeConfig(device="cpu", workers=1), stop_after=stop_after)
    return out


@case("train-pgseg --resume after captions.json was edited", "PAIRS:", "pairs_edited/captions.json changed",
      "start again without --resume")
def _pgseg_resume_captions_edited(ws: Workspace) -> Iterator[list[object]]:
    pairs = ws.copy(ws.world, "pairs_edited")
    run = _pgseg_run(ws, pairs, "run_edited")
    table = json.loads((pairs / "captions.json").read_text())
    table[sorted(table)[0]] = "a blue cross"
    (pairs / "captions.json").write_text(json.dumps(table))
    yield ["train-pgseg", pairs, "-o", run, *PGSEG_ARGS, "--resume"]


@case("train-pgseg --resume after a shard was replaced by another of the same name and size", "PAIRS:",
      "pairs_replaced/00000.tar changed")
def _pgseg_resume_shard_replaced(ws: Workspace) -> Iterator[list[object]]:
    pairs = _pgseg_shard(ws, "pairs_replaced", b"a red cross")
    run = _pgseg_run(ws, pairs, "run_replaced")
    size = (pairs / "00000.tar").stat().st_size
    shutil.rmtree(pairs)
    _pgseg_shard(ws, "pairs_replaced", b"a red ring!")
    assert (pairs / "00000.tar").stat().st_size == size
    yield ["train-pgseg", pairs, "-o", run, *PGSEG_ARGS, "--resume"]


@case("train-pgseg --resume with the same pairs moved to another folder (accepted: the same bytes)",
      "✓ train-pgseg", "(resumed)", exit_code=0,
      leaves=("run_moved/*", "run_moved/checkpoints/*", "-run_moved/_run.json"))
def _pgseg_resume_pairs_moved(ws: Workspace) -> Iterator[list[object]]:
    pairs = ws.copy(ws.world, "pairs_before_move")
    # --no-npr: whether T-NPR keeps a row on these tiny batches follows the CPU's rounding (the row's note came and
    # went with the machine), and NPR has no part in what this case shows
    run = _pgseg_run(ws, pairs, "run_moved", stop_after=1, npr=False)
    moved = ws.out("pairs_moved")
    pairs.rename(moved)
    yield ["train-pgseg", moved, "-o", run, *PGSEG_ARGS, "--no-npr", "--epochs", "2", "--checkpoint-every", "1",
           "--resume"]


@case("train-pgseg --resume given another pairs folder, run from the workspace (the files named as typed, relative "
      "to the current folder)", "PAIRS: pairs_other/captions.json differs from the record's pairs_first/captions.json "
      "(sha256 ", "start again without --resume")
def _pgseg_resume_other_pairs(ws: Workspace) -> Iterator[list[object]]:
    first = ws.copy(ws.world, "pairs_first")
    run = _pgseg_run(ws, first, "run_other_pairs", stop_after=1)
    other = ws.copy(ws.world, "pairs_other")
    table = json.loads((other / "captions.json").read_text())
    table[sorted(table)[0]] = "a blue cross"
    (other / "captions.json").write_text(json.dumps(table))
    with contextlib.chdir(ws.root):
        yield ["train-pgseg", other.name, "-o", run.name, *PGSEG_ARGS, "--epochs", "2", "--checkpoint-every", "1",
               "--resume"]


@case("train-pgseg --resume under another world size (its checkpoint made by 2 torchrun processes)",
      "2 process(es) there (global batch 4), 1 here (global batch 2)",
      "resume with the same torchrun --nproc-per-node")
def _pgseg_resume_other_world(ws: Workspace) -> Iterator[list[object]]:
    from safetensors.torch import load_file, save_file

    run = _pgseg_run(ws, ws.world, "run_world2", stop_after=1)
    ckpt = run / "checkpoints" / "last.safetensors"
    _, meta = _tensors_and_meta(ckpt)
    save_file(load_file(str(ckpt)), str(ckpt), metadata={**meta, "vpltool.world_size": "2"})
    yield ["train-pgseg", ws.world, "-o", run, *PGSEG_ARGS, "--epochs", "2", "--checkpoint-every", "1", "--resume"]


@case("train-pgseg --resume --lr 0.5 on a finished run (refused; no record of the refused settings written)",
      "--lr 0.001 there, 0.5 here")
def _pgseg_resume_other_lr(ws: Workspace) -> Iterator[list[object]]:
    run = _pgseg_run(ws, ws.world, "run_lr")
    yield ["train-pgseg", ws.world, "-o", run, *PGSEG_ARGS, "--resume", "--lr", "0.5"]


@case("train-pgseg --resume --crop-size 64 of a run made at 32 (the setting said once, not as \"a file it names "
      "changed\")", "made with other settings or inputs (--crop-size 32 there, 64 here); resume with the same options")
def _pgseg_resume_other_crop(ws: Workspace) -> Iterator[list[object]]:
    run = _pgseg_run(ws, ws.world, "run_crop", stop_after=1)
    args = [*PGSEG_ARGS, "--epochs", "2", "--checkpoint-every", "1", "--resume"]
    args[args.index("--crop-size") + 1] = "64"
    yield ["train-pgseg", ws.world, "-o", run, *args]


@case("train-pgseg -o RUN --init RUN/pgseg.safetensors --overwrite (its own --init)",
      "--init run_init/pgseg.safetensors", "deletes) that file of its --out folder", "pass the copy")
def _pgseg_init_inside_out(ws: Workspace) -> Iterator[list[object]]:
    run = _pgseg_run(ws, ws.world, "run_init")
    yield ["train-pgseg", ws.world, "-o", run, *PGSEG_ARGS, "--init", run / "pgseg.safetensors", "--overwrite"]


@case("train-decoder --recipe weclip --resume after one line of labels.csv was edited",
      "the dataset's images and labels changed", "start again without --resume")
def _weclip_resume_labels_edited(ws: Workspace) -> Iterator[list[object]]:
    world = ws.copy(ws.world, "world_relabelled")
    out = ws.out("decoder_relabelled")
    cli_ok("train-decoder", world, "-p", ws.text, "-o", out, "--recipe", "weclip", *DECODER_ARGS)
    lines = (world / "labels.csv").read_text().splitlines()
    rows = [i for i, line in enumerate(lines) if line.startswith("train_")]
    other = next(i for i in rows if lines[i].split(",", 1)[1] != lines[rows[0]].split(",", 1)[1])
    lines[rows[0]] = lines[rows[0]].split(",", 1)[0] + "," + lines[other].split(",", 1)[1]
    (world / "labels.csv").write_text("\n".join(lines) + "\n")
    yield ["train-decoder", world, "-p", ws.text, "-o", out, "--recipe", "weclip", *DECODER_ARGS, "--resume"]


@case("train-decoder --recipe weclip with prototypes that have no background row (refused before a model loads)",
      "text_no_background.safetensors: no background row", "--background")
def _weclip_no_background_row(ws: Workspace) -> Iterator[list[object]]:
    path = ws.root / "text_no_background.safetensors"
    cli_ok("text-prototypes", ws.features, "-o", path, "--templates", "a photo of a {}.", "--background", "none",
           *CPU)
    yield ["train-decoder", ws.world, "-p", path, "-o", ws.out("decoder_no_bg"), "--recipe", "weclip",
           *DECODER_ARGS]


@case("segment --dense proxyclip: --proxy-weights replaced under its name between --shard 0/2 and 1/2",
      "seg_proxy_shards: an interrupted run made from other inputs (proxy_weights proxy_shards.safetensors: its "
      "content changed (sha256 ", "--overwrite")
def _segment_proxy_weights_replaced(ws: Workspace) -> Iterator[list[object]]:
    path = ws.dino_weights("proxy_shards.safetensors", seed=0)
    out = ws.out("seg_proxy_shards")
    args = ["segment", ws.world, "--split", "val", "-o", out, *SEG_TINY, "--classes", "star,circle", "--dense",
            "proxyclip", "--proxy-model", DINO_MODEL, "--proxy-weights", path]
    cli_ok(*args, "--shard", "0/2")
    ws.dino_weights("proxy_shards.safetensors", seed=1)
    yield [*args, "--shard", "1/2"]


def _region_folder(ws: Workspace, name: str) -> Path:
    """CorrCLIP's region masks for the world's val images: ``<name>/<stem>.npz`` (two regions each), made anew."""
    import numpy as np

    from vpltool import io

    folder = ws.out(name)
    folder.mkdir()
    for image in sorted((ws.world / "images").glob("val_*.png")):
        h, w = io.load_image(image).shape[:2]
        ids = np.ones((h, w), np.int32)
        ids[:, w // 2:] = 2
        np.savez(folder / f"{image.stem}.npz", instance_mask=ids)
    return folder


def _corrclip_args(ws: Workspace, out: Path) -> list[object]:
    return ["segment", ws.world, "--split", "val", "-o", out, *SEG_TINY, "--classes", "star,circle", "--dense",
            "corrclip", "--proxy-model", DINO_MODEL, "--proxy-weights", "none", "--short-side", "64", "--slide-crop",
            "0"]


@case("the same --region-masks folder given by its absolute path to segment --shard 1/2, by a relative one to "
      "--shard 0/2 (accepted: the same bytes)", "✓ segment (corrclip): 1 masks", exit_code=0,
      leaves=("seg_regions_abs/*", "-seg_regions_abs/_run.json", "-seg_regions_abs/_shard.0-of-2.json"))
def _region_folder_absolute(ws: Workspace) -> Iterator[list[object]]:
    folder, out = _region_folder(ws, "regions_rel"), ws.out("seg_regions_abs")
    with contextlib.chdir(ws.root):
        cli_ok(*_corrclip_args(ws, out), "--region-masks", folder.name, "--shard", "0/2")
    yield [*_corrclip_args(ws, out), "--region-masks", folder, "--shard", "1/2"]


@case("a --region-masks file rewritten between segment --shard 0/2 and 1/2 (named as a changed input, not as "
      "\"other parameters\")", "seg_regions_changed: an interrupted run made from other inputs (region_masks: "
      "regions_changed/val_000001.npz changed (sha256 ", "pass --overwrite to redo every item")
def _region_file_changed(ws: Workspace) -> Iterator[list[object]]:
    import numpy as np

    folder, out = _region_folder(ws, "regions_changed"), ws.out("seg_regions_changed")
    cli_ok(*_corrclip_args(ws, out), "--region-masks", folder, "--shard", "0/2")
    path = folder / "val_000001.npz"
    ids = np.load(path)["instance_mask"]
    ids[:2] = 3  # a third region along the top
    np.savez(path, instance_mask=ids)
    yield [*_corrclip_args(ws, out), "--region-masks", folder, "--shard", "1/2"]


@case("segment --dense corrclip --shard 1/2 on a folder whose _run.json an earlier vpltool wrote (the mask folder "
      "as its path, its files' digest in region_source; accepted: the same settings and bytes)",
      "✓ segment (corrclip): 1 masks", exit_code=0,
      leaves=("seg_regions_older/*", "-seg_regions_older/_run.json", "-seg_regions_older/_shard.0-of-2.json"))
def _corrclip_older_record(ws: Workspace) -> Iterator[list[object]]:
    folder, out = _region_folder(ws, "regions_older"), ws.out("seg_regions_older")
    cli_ok(*_corrclip_args(ws, out), "--region-masks", folder, "--shard", "0/2")
    run = json.loads((out / "_run.json").read_text())
    run.pop("record_digest", None)  # that vpltool sealed no record
    params = run["params"]  # as vpltool wrote it before 48b463c
    params["region_source"] = {"generator": "folder", "files_sha256": params["region_masks"]["sha256"]}
    params["region_masks"] = str(folder)
    (out / "_run.json").write_text(json.dumps(run))
    yield [*_corrclip_args(ws, out), "--region-masks", folder, "--shard", "1/2"]


def _prompt_files(ws: Workspace, name: str) -> tuple[Path, Path]:
    """A --templates file and a --background file in a fresh folder ``name`` of the workspace."""
    folder = ws.out(name)
    folder.mkdir()
    (folder / "templates.txt").write_text("a photo of a {}.\na drawing of a {}.\n")
    (folder / "background.txt").write_text("grass\nsky\n")
    return folder / "templates.txt", folder / "background.txt"


def _segment_prompt_args(ws: Workspace, out: Path) -> list[object]:
    return ["segment", ws.world, "--split", "val", "-o", out, *TINY, *CPU, "--classes", "star,circle",
            "--short-side", "64", "--slide-crop", "0"]


@case("--templates and --background files given by relative paths to segment --shard 0/2, then moved and given by "
      "their new absolute paths to --shard 1/2 (accepted: the same bytes)", "✓ segment (naclip): 1 masks",
      exit_code=0, leaves=("seg_prompts_moved/*", "-seg_prompts_moved/_run.json",
                           "-seg_prompts_moved/_shard.0-of-2.json"))
def _prompt_files_moved(ws: Workspace) -> Iterator[list[object]]:
    templates, background = _prompt_files(ws, "prompts_before")
    out = ws.out("seg_prompts_moved")
    with contextlib.chdir(ws.root):
        cli_ok(*_segment_prompt_args(ws, out), "--templates", "prompts_before/templates.txt", "--background",
               "prompts_before/background.txt", "--shard", "0/2")
    moved = ws.out("prompts_moved")
    templates.parent.rename(moved)
    yield [*_segment_prompt_args(ws, out), "--templates", moved / "templates.txt", "--background",
           moved / "background.txt", "--shard", "1/2"]


@case("a --background file rewritten between segment --shard 0/2 and 1/2 (named as a changed input, not as "
      "\"other parameters\")", "seg_background_changed: an interrupted run made from other inputs (background "
      "prompts_bg/background.txt: its content changed (sha256 ", "pass --overwrite to redo every item")
def _background_file_changed(ws: Workspace) -> Iterator[list[object]]:
    templates, background = _prompt_files(ws, "prompts_bg")
    out = ws.out("seg_background_changed")
    args = [*_segment_prompt_args(ws, out), "--templates", templates, "--background", background]
    cli_ok(*args, "--shard", "0/2")
    background.write_text("grass\nwall\n")
    with contextlib.chdir(ws.root):  # the message shows the file as the user would type it from here
        yield [*args, "--shard", "1/2"]


@case("a --templates file rewritten between segment --shard 0/2 and 1/2 (named as a changed input)",
      "seg_templates_changed: an interrupted run made from other inputs (templates prompts_t/templates.txt: its "
      "content changed (sha256 ", "pass --overwrite to redo every item")
def _templates_file_changed(ws: Workspace) -> Iterator[list[object]]:
    templates, background = _prompt_files(ws, "prompts_t")
    out = ws.out("seg_templates_changed")
    args = [*_segment_prompt_args(ws, out), "--templates", templates, "--background", background]
    cli_ok(*args, "--shard", "0/2")
    templates.write_text("a photo of a {}.\n")
    with contextlib.chdir(ws.root):
        yield [*args, "--shard", "1/2"]


@case("segment --dense trident: --sam-weights replaced under its name between --shard 0/2 and 1/2",
      "seg_sam_shards: an interrupted run made from other inputs (sam_weights sam_shards.safetensors: its content "
      "changed (sha256 ", "--overwrite")
def _segment_sam_weights_replaced(ws: Workspace) -> Iterator[list[object]]:
    import torch
    from safetensors.torch import save_file

    from vpltool.models.backbones.sam import SAM_ARCHS, _build

    path = ws.root / "sam_shards.safetensors"

    def write(seed: int) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            save_file({k: v.contiguous() for k, v in _build(SAM_ARCHS["test"]).state_dict().items()}, str(path))

    write(0)
    out = ws.out("seg_sam_shards")
    args = ["segment", ws.world, "--split", "val", "-o", out, *SEG_TINY, "--classes", "star,circle", "--dense",
            "trident", "--proxy-model", DINO_MODEL, "--proxy-weights", "none", "--sam-model", "test",
            "--sam-weights", path]
    cli_ok(*args, "--shard", "0/2")
    write(1)
    yield [*args, "--shard", "1/2"]


# ---- RADSeg's two files: NVlabs/RADIO's checkpoint (--proxy-weights) and SigLIP 2's text folder (--language-model)
def _radseg_files(ws: Workspace) -> tuple[Path, Path]:
    """A tiny C-RADIOv3 as RADIO's hub checkpoint and a tiny SigLIP 2 text folder (parity/radseg_files.py), made
    once per workspace under ``radseg/``."""
    folder = ws.root / "radseg"
    if not (folder / "text" / "model.safetensors").is_file():
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "parity"))
        import radseg_files
        import tiny_towers

        radseg_files.tiny_files(folder, tiny_towers.RADIO, list(SHAPES))
    return folder / "radio.pth.tar", folder / "text"


def _radseg_args(ws: Workspace, name: str, weights: object, language: object | None) -> list[object]:
    import tiny_towers

    return ["segment", ws.world, "--split", "val", "-o", ws.out(name), *CPU, "--classes", "star,circle", "--dense",
            "radseg", "--proxy-model", tiny_towers.RADIO, "--proxy-weights", weights,
            *(["--language-model", language] if language is not None else [])]


@contextlib.contextmanager
def _no_radseg_load() -> Iterator[None]:
    """While the case runs, building RADSeg's model (or a CLIP) fails loudly: its refusal comes before."""
    from vpltool.models.dense import radseg

    with _no_model_load(), mock.patch.object(radseg.Hooks, "backbone", side_effect=AssertionError("a model loaded")):
        yield


@case("segment --dense radseg with a RADIO checkpoint that is not there", "radseg_gone.pth.tar: RADIO checkpoint "
      "not found", "pass an existing file to --proxy-weights")
def _radseg_no_checkpoint(ws: Workspace) -> Iterator[list[object]]:
    _, text = _radseg_files(ws)
    with _no_radseg_load():
        yield _radseg_args(ws, "seg_radseg", ws.root / "radseg_gone.pth.tar", text)


@case("segment --dense radseg with its RADIO checkpoint cut short (a broken download)", "radseg_cut.pth.tar: not a "
      "torch checkpoint (no zip archive: cut short", "re-download NVlabs/RADIO's checkpoint")
def _radseg_cut_checkpoint(ws: Workspace) -> Iterator[list[object]]:
    ckpt, text = _radseg_files(ws)
    cut = ws.root / "radseg_cut.pth.tar"
    cut.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size * 2 // 3])
    with _no_radseg_load():
        yield _radseg_args(ws, "seg_radseg", cut, text)


@case("segment --dense radseg with --proxy-weights a timm weights file (no language adaptor in it)",
      "give NVlabs/RADIO's checkpoint", "the language adaptor RADSeg reads is in it")
def _radseg_timm_weights(ws: Workspace) -> Iterator[list[object]]:
    _, text = _radseg_files(ws)
    with _no_radseg_load():
        yield _radseg_args(ws, "seg_radseg", ws.dino_weights("radseg_timm.safetensors"), text)


@case("segment --dense radseg with a RADIO checkpoint that has no siglip2 adaptor", "radseg_nosiglip.pth.tar: no "
      "adaptor 'siglip2'; its teachers are clip, dino_v2, sam")
def _radseg_no_adaptor(ws: Workspace) -> Iterator[list[object]]:
    import torch

    ckpt, text = _radseg_files(ws)
    chk = torch.load(ckpt, weights_only=False)
    chk["args"].teachers = [t for t in chk["args"].teachers if t["name"] != "siglip2"]
    torch.save(chk, ws.root / "radseg_nosiglip.pth.tar")
    with _no_radseg_load():
        yield _radseg_args(ws, "seg_radseg", ws.root / "radseg_nosiglip.pth.tar", text)


@case("segment --dense radseg without --language-model", "--dense radseg needs SigLIP 2's text tower: pass "
      "--language-model")
def _radseg_no_language_model(ws: Workspace) -> Iterator[list[object]]:
    ckpt, _ = _radseg_files(ws)
    with _no_radseg_load():
        yield _radseg_args(ws, "seg_radseg", ckpt, None)


@case("segment --dense radseg with --language-model a folder that is not there", "--language-model radseg_gone: "
      "not a folder", "pass a local folder of google/siglip2-giant-opt-patch16-384")
def _radseg_language_gone(ws: Workspace) -> Iterator[list[object]]:
    ckpt, _ = _radseg_files(ws)
    with _no_radseg_load():
        yield _radseg_args(ws, "seg_radseg", ckpt, ws.root / "radseg_gone")


@case("segment --dense radseg with a text folder that lacks its tokenizer", "--language-model radseg_notok: lacks "
      "tokenizer.json")
def _radseg_no_tokenizer(ws: Workspace) -> Iterator[list[object]]:
    ckpt, text = _radseg_files(ws)
    folder = ws.copy(text, "radseg_notok")
    (folder / "tokenizer.json").unlink()
    with _no_radseg_load():
        yield _radseg_args(ws, "seg_radseg", ckpt, folder)


@case("segment --dense radseg with the text folder's model.safetensors cut short", "--language-model "
      "radseg_cuttext/model.safetensors: not a readable safetensors file", "re-download it")
def _radseg_cut_text(ws: Workspace) -> Iterator[list[object]]:
    ckpt, text = _radseg_files(ws)
    folder = ws.copy(text, "radseg_cuttext")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with _no_radseg_load():
        yield _radseg_args(ws, "seg_radseg", ckpt, folder)


@case("segment --dense radseg with the text tower of another width than the adaptor's", "its siglip2 head maps "
      "patches to 48-d rows, --language-model radseg_text64's text rows are 64-d", "pass the text tower of that "
      "adaptor's teacher")
def _radseg_other_width(ws: Workspace) -> Iterator[list[object]]:
    ckpt, text = _radseg_files(ws)
    folder = ws.copy(text, "radseg_text64")
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["projection_size"] = 64
    (folder / "config.json").write_text(json.dumps(config))
    with _no_radseg_load():
        yield _radseg_args(ws, "seg_radseg", ckpt, folder)


@case("segment --dense radseg --scra-scale 0", "--scra-scale 0.0: must be a number above 0")
def _radseg_scale_zero(ws: Workspace) -> Iterator[list[object]]:
    ckpt, text = _radseg_files(ws)
    with _no_radseg_load():
        yield [*_radseg_args(ws, "seg_radseg", ckpt, text), "--scra-scale", "0"]


@case("segment --dense naclip with RADSeg's --language-model (warned, ignored, not recorded)", "--language-model "
      "radseg/text has no effect without --dense radseg", exit_code=0, leaves=("seg_radseg_naclip/*",))
def _radseg_option_elsewhere(ws: Workspace) -> Iterator[list[object]]:
    _, text = _radseg_files(ws)
    yield ["segment", ws.world, "--split", "val", "-o", ws.out("seg_radseg_naclip"), *SEG_TINY, "--classes",
           "star,circle", "--dense", "naclip", "--language-model", text]


@case("benchmark radseg on VOC21 (RADSeg's configs are VOC20, Context59, COCO-Stuff, Cityscapes, ADE20K)",
      "RADSeg-OVSS/RADSeg@05ec86f has no config for voc21", "give one of those, or run segment --dense radseg")
def _radseg_benchmark_voc21(ws: Workspace) -> Iterator[list[object]]:
    import tiny_towers

    ckpt, text = _radseg_files(ws)
    with _no_radseg_load():
        yield ["benchmark", "radseg", "--root", f"voc21={ws.world}", "-o", ws.out("bench_radseg"), *CPU,
               "--proxy-model", tiny_towers.RADIO, "--proxy-weights", ckpt, "--language-model", text]


@case("vpltool.segmenter('radseg') with RADIO's checkpoint and no language_model", "VplError: method radseg needs "
      "SigLIP 2's text tower: pass language_model", python=True)
def _radseg_python_no_language(ws: Workspace) -> Iterator[list[str]]:
    import tiny_towers

    _radseg_files(ws)  # the case runs in the workspace folder
    ws.segmenter()  # every Python case's seg, made before loading is forbidden
    with _no_radseg_load():
        yield [f"vpltool.segmenter('radseg', proxy_model={tiny_towers.RADIO!r}, "
               "proxy_weights='radseg/radio.pth.tar')"]


@case("eval --data of a copy of the dataset whose ground-truth masks alone differ", "--data",
      "a ground-truth mask differs under the same id", "an identical copy")
def _eval_copy_other_masks(ws: Workspace) -> Iterator[list[object]]:
    import numpy as np

    from vpltool import io

    copy = ws.copy(ws.world, "world_other_masks")
    mask = sorted((copy / "masks").glob("train_*.png"))[0]
    io.write_mask(mask, np.zeros_like(io.read_mask(mask)))
    yield ["eval", ws.pseudo, "--data", copy]


# --------------------------------------------------------------------------------------------- plain photos
@case("a text file where a photo belongs (segment PHOTO)", "notes.txt: not an image", "pass a photo")
def _segment_not_a_photo(ws: Workspace) -> Iterator[list[object]]:
    notes = ws.root / "notes.txt"
    notes.write_text("not a photo")
    yield ["segment", notes, "--classes", "star", "-o", ws.out("out"), *SEG_TINY]


@case("an empty folder where photos belong (segment FOLDER)", "is empty: no image", "a folder of photos")
def _segment_empty_folder(ws: Workspace) -> Iterator[list[object]]:
    (ws.root / "no_photos").mkdir()
    yield ["segment", ws.root / "no_photos", "--classes", "star", "-o", ws.out("out"), *SEG_TINY]


@case("a photo that is no image inside (segment PHOTO)", "broken.jpg")
def _segment_unreadable_photo(ws: Workspace) -> Iterator[list[object]]:
    broken = ws.root / "photos" / "broken.jpg"
    broken.parent.mkdir()
    broken.write_bytes(b"\xff\xd8 cut short")
    yield ["segment", broken.parent, "--classes", "star", "-o", ws.out("out"), *SEG_TINY]


def _tif(path: Path, seed: int = 0) -> Path:
    """A 48x64 RGB TIFF photo (Pillow writes it)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path, format="TIFF")
    return path


@case("a TIFF photo (segment PHOTO; once refused as no image)", "✓ segment (maskclip): 1 masks", exit_code=0,
      leaves=("out_tif/", "out_tif/*"))
def _segment_tif_photo(ws: Workspace) -> Iterator[list[object]]:
    photo = _tif(ws.root / "photo.tif")
    yield ["segment", photo, "--classes", "star", "-o", ws.out("out_tif"), "--dense", "maskclip", *TINY,
           *TEXT_ARGS, *CPU]


@case("a folder of 2 PNGs and a TIFF (segment FOLDER; the TIFF was skipped without a word)",
      "✓ segment (maskclip): 3 masks", exit_code=0, leaves=("out_tifs/", "out_tifs/*"))
def _segment_tif_in_folder(ws: Workspace) -> Iterator[list[object]]:
    folder = ws.root / "photos_tif"
    folder.mkdir()
    for src in sorted((ws.world / "images").glob("val_*.png"))[:2]:
        shutil.copy(src, folder / src.name)
    _tif(folder / "c.tif")
    yield ["segment", folder, "--classes", "star", "-o", ws.out("out_tifs"), "--dense", "maskclip", *TINY,
           *TEXT_ARGS, *CPU]


@case("a folder of photos holding a .heic and a .txt (segment FOLDER: what is skipped is named)",
      "2 files skipped (d.heic, notes.txt), not an image vpltool reads", exit_code=0,
      leaves=("out_heic/", "out_heic/*"))
def _segment_skipped_files(ws: Workspace) -> Iterator[list[object]]:
    folder = ws.root / "photos_heic"
    folder.mkdir()
    shutil.copy(sorted((ws.world / "images").glob("val_*.png"))[0], folder / "a.png")
    (folder / "d.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    (folder / "notes.txt").write_text("holiday photos\n")
    yield ["segment", folder, "--classes", "star", "-o", ws.out("out_heic"), "--dense", "maskclip", *TINY,
           *TEXT_ARGS, *CPU]


@case("segment --dense naclp (a typo)", "--dense 'naclp': did you mean 'naclip'?")
def _segment_dense_typo(ws: Workspace) -> Iterator[list[object]]:
    yield ["segment", ws.world / "images", "--classes", "star", "-o", ws.out("out"), "--dense", "naclp", *SEG_TINY]


# the Python door (docs/api.md): every check of the CLI, with its line
@case("Python: an 8x8 array given to a segmenter", "image (a ndarray): 8x8 pixels, too small to segment",
      "use the full-size image or pass a larger image",
      python=True)
def _py_tiny_array(ws: Workspace) -> Iterator[list[object]]:
    yield ["seg(np.zeros((8, 8, 3), np.uint8), ['star'])"]


@case("Python: a 1x500 strip given to a segmenter", "image (a ndarray): 1x500 pixels, too small to segment",
      python=True)
def _py_strip_array(ws: Workspace) -> Iterator[list[object]]:
    yield ["seg(np.zeros((1, 500, 3), np.uint8), ['star'])"]


@case("Python: a 0x0 array given to a segmenter (once a ZeroDivisionError)",
      "image (a ndarray): 0x0 pixels, too small to segment", python=True)
def _py_empty_array(ws: Workspace) -> Iterator[list[object]]:
    yield ["seg(np.zeros((0, 0, 3), np.uint8), ['star'])"]


@case("Python: a float tensor of 0..255 values in a list of photos", "images[1] (a Tensor): float values from 0 "
      "to 255; a float photo is in [0, 1]", python=True)
def _py_float_tensor_255(ws: Workspace) -> Iterator[list[object]]:
    yield ["photo = torch.arange(3 * 32 * 32.0).reshape(3, 32, 32) % 256",
           "seg([np.zeros((32, 32, 3), np.uint8), photo], ['star'])"]


@case("Python: a text file given to a segmenter", "notes_py.txt: not an image", "pass a photo", python=True)
def _py_not_a_photo(ws: Workspace) -> Iterator[list[object]]:
    (ws.root / "notes_py.txt").write_text("not a photo")
    yield ["seg('notes_py.txt', ['star'])"]


@case("Python: a [3, H, W] uint8 tensor and a TIFF path in one list (once both refused)", "2 (48, 64)",
      exit_code=0, python=True)
def _py_tensor_and_tif(ws: Workspace) -> Iterator[list[object]]:
    _tif(ws.root / "photo_py.tif")
    yield ["photo = torch.zeros(3, 48, 64, dtype=torch.uint8)",
           "results = seg([photo, 'photo_py.tif'], ['star'])",
           "print(len(results), results[1].labels.shape)"]


@case("Python: vpltool.segmenter('naclp') (a typo)", "method 'naclp': did you mean 'naclip'?",
      "vpltool.list_methods()", python=True)
def _py_method_typo(ws: Workspace) -> Iterator[list[object]]:
    yield ["vpltool.segmenter('naclp', model='vpl-test-vit', pretrained='none')"]


@case("Python: a mistyped option (slide_crp)", "unknown option 'slide_crp'; did you mean 'slide_crop'?",
      python=True)
def _py_option_typo(ws: Workspace) -> Iterator[list[object]]:
    yield ["vpltool.segmenter('naclip', model='vpl-test-vit', pretrained='none', slide_crp=224)"]


@case("Python: api.segment(..., dense='maskclip') (once NACLIP ran, and was recorded)", "maskclip", exit_code=0,
      leaves=("out_py_dense/", "out_py_dense/*"), python=True)
def _py_segment_dense(ws: Workspace) -> Iterator[list[object]]:
    photo = sorted((ws.world / "images").glob("val_*.png"))[0].relative_to(ws.root)
    ws.out("out_py_dense")
    yield [f"vpltool.api.segment({str(photo)!r}, 'out_py_dense', ['star'], dense='maskclip', "
           "model='vpl-test-vit', pretrained='none', templates='a photo of a {}.', background='grass,sky', "
           "device='cpu', progress=False)",
           "import json; print(json.load(open('out_py_dense/_stage.json'))['params']['dense'])"]


@case("Python: api.segment with method= and dense= that differ", "method='naclip' and dense='maskclip'; give one",
      python=True)
def _py_segment_two_methods(ws: Workspace) -> Iterator[list[object]]:
    yield ["vpltool.api.segment('world/images', 'out', ['star'], method='naclip', dense='maskclip')"]


# the Python door's second pass: transformers', open_clip's and SAM's habits, and a Python caller's lines
_PY_TOY = ("vpltool.segmenter('maskclip', model='vpltool-toy', pretrained='none', device='cpu', short_side=112, "
           "templates='a photo of a {}.', background='grass,sky,wall,water')")


@case("Python: vpltool.segmenter(device=0) on a machine without CUDA (once an AttributeError)",
      "device cuda:0 asked for, but CUDA is not available; use device auto or cpu", python=True)
def _py_device_index(ws: Workspace) -> Iterator[list[object]]:
    with mock.patch("torch.cuda.is_available", return_value=False):  # the case's machine, whatever runs the table
        yield ["vpltool.segmenter('maskclip', model='vpl-test-vit', pretrained='none', device=0)"]


@case("Python: vpltool.segmenter(device=-1) and device=torch.device('cpu') (once AttributeErrors)", "cpu cpu",
      exit_code=0, python=True)
def _py_device_minus_one(ws: Workspace) -> Iterator[list[object]]:
    yield ["a = vpltool.segmenter('maskclip', model='vpl-test-vit', pretrained='none', device=-1)",
           "b = vpltool.segmenter('maskclip', model='vpl-test-vit', pretrained='none', device=torch.device('cpu'))",
           "print(a.device, b.device)"]


@case("Python: seg(photo, None) (once a TypeError)", "classes: give the class names", python=True)
def _py_classes_none(ws: Workspace) -> Iterator[list[object]]:
    yield ["seg(np.zeros((32, 32, 3), np.uint8), None)"]


@case("Python: a class named '' (the CLI refuses it; once dropped, shifting the indices)",
      "classes: an empty class name", python=True)
def _py_empty_class(ws: Workspace) -> Iterator[list[object]]:
    yield ["seg(np.zeros((32, 32, 3), np.uint8), ['star', ''])"]


@case("Python: a set of class names (its order, the class indices, changes from run to run)",
      "classes: a set has no order", "give a list, e.g. sorted(names)", python=True)
def _py_classes_set(ws: Workspace) -> Iterator[list[object]]:
    yield ["seg(np.zeros((32, 32, 3), np.uint8), {'star', 'circle'})"]


@case("Python: batch_size=0 in a call (the line names the keyword, not --batch-size)", "batch_size 0: must be",
      python=True)
def _py_batch_size_zero(ws: Workspace) -> Iterator[list[object]]:
    yield ["seg(np.zeros((32, 32, 3), np.uint8), ['star'], batch_size=0)"]


@case("Python: a stage function's bad option (api.crf(..., confidence=2.0): the line names the keyword, not "
      "--confidence)", "VplError: confidence 2.0: must be in [0, 1]", python=True)
def _py_stage_keyword(ws: Workspace) -> Iterator[list[object]]:
    yield ["vpltool.api.crf('cams', 'out_py_crf', confidence=2.0)"]


@case("Python: a stage function's bad device (api.cam(..., device='gpu7'): the line names device, not --device)",
      "VplError: device 'gpu7' not understood", python=True)
def _py_stage_device(ws: Workspace) -> Iterator[list[object]]:
    yield ["vpltool.api.cam('features', 'text.safetensors', 'out_py_cam', device='gpu7')"]


@case("Python: a name the toy CLIP does not know in a later call (once said for the first list only)",
      "does not know 'giraffe'", exit_code=0, python=True)
def _py_toy_later_unknown(ws: Workspace) -> Iterator[list[object]]:
    yield [f"toy = {_PY_TOY}", "toy(np.zeros((32, 32, 3), np.uint8), ['star'])",
           "print(toy(np.zeros((32, 32, 3), np.uint8), ['giraffe', 'star']).classes)"]


@case("Python: a URL while offline (once 'image not found', https:// shown as https:/)",
      "https://127.0.0.1:", "/photo.jpg: could not download it", "download the photo and pass its path", python=True)
def _py_url_offline(ws: Workspace) -> Iterator[list[object]]:
    yield ["seg('https://127.0.0.1:9/photo.jpg', ['star'])"]  # port 9 (discard): nothing listens


@case("Python: image_format='BGR' with a file (its order is its own)", "image_format='BGR' is for arrays and "
      "tensors", python=True)
def _py_bgr_file(ws: Workspace) -> Iterator[list[object]]:
    photo = sorted((ws.world / "images").glob("val_*.png"))[0].relative_to(ws.root)
    yield [f"seg({str(photo)!r}, ['star'], image_format='BGR')"]


@case("Python: torch_dtype=torch.float16 (transformers' name)", "torch_dtype=torch.float16: vpltool names the "
      "compute dtype precision=; pass precision='fp16'", python=True)
def _py_torch_dtype(ws: Workspace) -> Iterator[list[object]]:
    yield ["vpltool.segmenter('maskclip', model='vpl-test-vit', pretrained='none', torch_dtype=torch.float16)"]


@case("Python: a mistyped per-call option (treshold)", "unknown option 'treshold'; did you mean 'threshold'?",
      python=True)
def _py_call_option_typo(ws: Workspace) -> Iterator[list[object]]:
    yield ["seg(np.zeros((32, 32, 3), np.uint8), ['star'], treshold=0.5)"]


@case("Python: seg.embed on a method whose window logits read the names (CASS)", "embed: method 'cass' reads the "
      "class names inside its own window logits", "call seg(photo, names) for each class list", python=True)
def _py_embed_cass(ws: Workspace) -> Iterator[list[object]]:
    yield [f"cass = vpltool.segmenter('cass', model='vpl-test-vit', pretrained='none', device='cpu', "
           f"proxy_model={DINO_MODEL!r}, proxy_weights='none')", "cass.embed(np.zeros((32, 32, 3), np.uint8))"]


@case("Python: result.save('mask.jpg') (a mask is lossless)", "mask_py.jpg: a mask is saved as a .png",
      python=True)
def _py_save_jpg(ws: Workspace) -> Iterator[list[object]]:
    yield ["seg(np.zeros((32, 32, 3), np.uint8), ['star']).save('mask_py.jpg')"]


# vpltool app: refused before the page is served (and before Gradio is imported)
@case("app --port 70000", "--port 70000: a TCP port is at most 65535")
def _app_port(ws: Workspace) -> Iterator[list[object]]:
    yield ["app", "--port", "70000"]


@case("app --method naclp (a typo)", "method 'naclp': did you mean 'naclip'?")
def _app_method_typo(ws: Workspace) -> Iterator[list[object]]:
    yield ["app", "--method", "naclp"]


@case("app --model with weights that are not there", "missing_app.safetensors")
def _app_missing_weights(ws: Workspace) -> Iterator[list[object]]:
    yield ["app", "--model", "vpl-test-vit", "--pretrained", ws.root / "missing_app.safetensors"]


@case("plain photos segmented without class names (segment FOLDER)", "plain photos name no classes",
      "--classes")
def _segment_photos_no_classes(ws: Workspace) -> Iterator[list[object]]:
    yield ["segment", ws.world / "images", "-o", ws.out("out"), *SEG_TINY]


@case("eval of masks made from plain photos (no ground truth)", "plain photos", "cannot be scored",
      "vpltool report")
def _eval_plain_photos(ws: Workspace) -> Iterator[list[object]]:
    out = ws.root / "photos_seg"
    cli_ok("segment", ws.world / "images", "--classes", "star,circle", "-o", out, *TINY, *TEXT_ARGS, *CPU)
    yield ["eval", out]


@case("report on a segment folder of plain photos, one photo changed since (names `segment`, not `extract`)",
      "photos_changed_seg: made from", "re-run `vpltool segment` and the stages after it with --overwrite")
def _report_changed_photo(ws: Workspace) -> Iterator[list[object]]:
    photos = ws.copy(ws.world / "images", "photos_changed")
    out = ws.out("photos_changed_seg")
    cli_ok("segment", photos, "--classes", "star,circle", "-o", out, *TINY, *TEXT_ARGS, *CPU)
    first = sorted(photos.glob("*.png"))[0]
    from PIL import Image

    Image.open(first).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(first)
    yield ["report", out, "-o", ws.out("report_changed"), "--workers", "1"]


# --------------------------------------------------------------------------------------------- a CAM's labels
@case("crf --backend torch of a CAM folder where one file holds its id but another image's labels",
      "CAMs for classes", "but the image is labelled", "re-run `vpltool cam`")
def _crf_torch_relabelled_cam(ws: Workspace) -> Iterator[list[object]]:
    yield ["crf", _relabelled(ws, "cams_relabelled_torch"), "-o", ws.out("out"), "--backend", "torch", *CPU]


# --------------------------------------------------------------------------------------------- parsing and options
# one mechanism a class: split names and listings as every --split (pairs reuse data.voc.split_file / split_ids),
# class files as the references split them and checked as --classes, a table of which options apply under which
# mode (vpltool.cli.applies), every float option finite (config.checks.finite_numbers), pairs never dropped or picked
def _pairs_folder(ws: Workspace, name: str, captions: dict[str, str] | None = None) -> Path:
    """A caption folder of the world's first four train images (``images/``, ``captions.json``), no listings."""
    folder = ws.root / name
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "images").mkdir(parents=True)
    table = json.loads((ws.world / "captions.json").read_text())
    ids = sorted(k for k in table if k.startswith("train_"))[:4]
    for i in ids:
        shutil.copy(ws.world / "images" / f"{i}.png", folder / "images" / f"{i}.png")
    (folder / "captions.json").write_text(json.dumps(captions if captions is not None else
                                                     {i: table[i] for i in ids}))
    return folder


def _pairs_tar(ws: Workspace, name: str, members: dict[str, bytes]) -> Path:
    import io as _io
    import tarfile

    folder = ws.root / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    with tarfile.open(folder / "00000.tar", "w") as tar:
        for member, data in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, _io.BytesIO(data))
    return folder


def _picture(ws: Workspace) -> bytes:
    return (ws.world / "images" / "train_000000.png").read_bytes()


@case("train-pgseg --split tset (a typo) on the demo world", "splits/tset.txt: no split 'tset' here",
      "found: train, val")
def _pgseg_split_typo(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-pgseg", ws.world, "--split", "tset", "-o", ws.out("out"), *PGSEG_ARGS]


@case("train-pgseg --split on shards, which have no split listings", "--split val:", "a folder of shards: "
      "nothing to split", "drop --split")
def _pgseg_split_on_shards(ws: Workspace) -> Iterator[list[object]]:
    folder = _pairs_tar(ws, "pairs_split", {"k.png": _picture(ws), "k.txt": b"a red star"})
    yield ["train-pgseg", folder, "--split", "val", "-o", ws.out("out"), *PGSEG_ARGS]


@case("train-pgseg --split on a caption folder without split listings", "--split train:",
      "a caption folder without split listings")
def _pgseg_split_no_listing(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-pgseg", _pairs_folder(ws, "pairs_nolist"), "--split", "train", "-o", ws.out("out"), *PGSEG_ARGS]


@case("train-pgseg: an id listed twice in splits/train.txt", "train.txt: id 'train_000000' is listed 2 times")
def _pgseg_split_twice(ws: Workspace) -> Iterator[list[object]]:
    folder = ws.copy(ws.world, "world_split_twice")
    listing = folder / "splits" / "train.txt"
    listing.write_text(listing.read_text() + "train_000000\n")
    yield ["train-pgseg", folder, "-o", ws.out("out"), *PGSEG_ARGS]


@case("train-pgseg: an id twice in captions.tsv", "captions.tsv: id 'train_000001' on lines 2 and 5")
def _pgseg_tsv_twice(ws: Workspace) -> Iterator[list[object]]:
    folder = _pairs_folder(ws, "pairs_tsv_twice")
    table = json.loads((folder / "captions.json").read_text())
    (folder / "captions.json").unlink()
    rows = [f"{k}\t{v}" for k, v in table.items()] + ["train_000001\ta blue ring"]
    (folder / "captions.tsv").write_text("\n".join(rows) + "\n")
    yield ["train-pgseg", folder, "-o", ws.out("out"), *PGSEG_ARGS]


@case("train-pgseg: captions.tsv saved as Latin-1", "captions.tsv: not UTF-8 text (byte 0xe9 on line 1)",
      "iconv -f latin1")
def _pgseg_tsv_latin1(ws: Workspace) -> Iterator[list[object]]:
    folder = _pairs_folder(ws, "pairs_latin1")
    table = json.loads((folder / "captions.json").read_text())
    (folder / "captions.json").unlink()
    text = "\n".join(f"{k}\t{v} near a café" for k, v in table.items()) + "\n"
    (folder / "captions.tsv").write_bytes(text.encode("latin-1"))
    yield ["train-pgseg", folder, "-o", ws.out("out"), *PGSEG_ARGS]


@case("train-pgseg: captions.tsv saved as UTF-16", "captions.tsv: UTF-16 text", "iconv -f utf-16")
def _pgseg_tsv_utf16(ws: Workspace) -> Iterator[list[object]]:
    folder = _pairs_folder(ws, "pairs_utf16")
    table = json.loads((folder / "captions.json").read_text())
    (folder / "captions.json").unlink()
    (folder / "captions.tsv").write_text("\n".join(f"{k}\t{v}" for k, v in table.items()) + "\n", encoding="utf-16")
    yield ["train-pgseg", folder, "-o", ws.out("out"), *PGSEG_ARGS]


@case("train-pgseg: captions.json beside a captions.tsv that says otherwise", "captions.tsv: disagrees with "
      "captions.json", "remove one of them")
def _pgseg_two_caption_files(ws: Workspace) -> Iterator[list[object]]:
    folder = _pairs_folder(ws, "pairs_two_tables")
    table = json.loads((folder / "captions.json").read_text())
    (folder / "captions.tsv").write_text("\n".join(f"{k}\ta photo of grass" for k in table) + "\n")
    yield ["train-pgseg", folder, "-o", ws.out("out"), *PGSEG_ARGS]


@case("train-pgseg: a .jpg beside the .png of the same id", "a second image of id 'train_000000'")
def _pgseg_two_images(ws: Workspace) -> Iterator[list[object]]:
    folder = _pairs_folder(ws, "pairs_two_images")
    from PIL import Image

    Image.open(folder / "images" / "train_000000.png").convert("RGB").save(folder / "images" / "train_000000.jpg")
    yield ["train-pgseg", folder, "-o", ws.out("out"), *PGSEG_ARGS]


@case("train-pgseg: shard keys with a dot (webdataset cuts a key at its first dot)", "00000.tar:a.1.png: a key "
      "with a dot", "rename its files without a dot")
def _pgseg_dotted_keys(ws: Workspace) -> Iterator[list[object]]:
    picture = _picture(ws)
    folder = _pairs_tar(ws, "pairs_dots", {"a.1.png": picture, "a.1.txt": b"a red star", "a.2.png": picture,
                                           "a.2.txt": b"a blue ring"})
    yield ["train-pgseg", folder, "-o", ws.out("out"), *PGSEG_ARGS]


@case("train-pgseg: a shard sample with both .txt and .text", "00000.tar:k: two captions (.text, .txt)")
def _pgseg_txt_and_text(ws: Workspace) -> Iterator[list[object]]:
    folder = _pairs_tar(ws, "pairs_two_texts", {"k.png": _picture(ws), "k.txt": b"a red star",
                                                "k.text": b"a blue ring"})
    yield ["train-pgseg", folder, "-o", ws.out("out"), *PGSEG_ARGS]


@case("train-pgseg: a Latin-1 caption in a shard", "00000.tar:k.txt: the caption is not UTF-8 text (byte 0xe9)")
def _pgseg_shard_latin1(ws: Workspace) -> Iterator[list[object]]:
    folder = _pairs_tar(ws, "pairs_shard_latin1", {"k.png": _picture(ws), "k.txt": "a café".encode("latin-1")})
    yield ["train-pgseg", folder, "-o", ws.out("out"), *PGSEG_ARGS]


@case("train-pgseg: an animated PNG in a shard", "00000.tar:k: the image does not decode (an animated PNG of 2 "
      "frames)")
def _pgseg_shard_animated(ws: Workspace) -> Iterator[list[object]]:
    import io as _io

    from PIL import Image

    frames = [Image.new("RGB", (64, 64), (i * 100, 0, 0)) for i in range(2)]
    buf = _io.BytesIO()
    frames[0].save(buf, "PNG", save_all=True, append_images=frames[1:])
    folder = _pairs_tar(ws, "pairs_animated", {"j.png": _picture(ws), "j.txt": b"a red star",
                                               "k.png": buf.getvalue(), "k.txt": b"a blue ring"})
    yield ["train-pgseg", folder, "-o", ws.out("out"), *PGSEG_ARGS]


@case("train-pgseg --batch-size 1 (the projectors' BatchNorm needs two)", "--batch-size 1: must be >= 2")
def _pgseg_batch_one(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-pgseg", ws.world, "-o", ws.out("out"), *PGSEG_ARGS, "--batch-size", "1"]


@case("train-pgseg --crop-size 7 (below the model's 8-pixel patch)", "--crop-size 7: smaller than the model's "
      "patch (8 px)")
def _pgseg_crop_below_patch(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-pgseg", ws.world, "-o", ws.out("out"), *PGSEG_ARGS, "--crop-size", "7"]


@case("cam --pgseg FILE --pgseg-side 1", "--pgseg-side 1: must be >= 32")
def _pgseg_cam_side_one(ws: Workspace) -> Iterator[list[object]]:
    yield ["cam", ws.world, "--split", "train", "--pgseg", ws.dino_weights("vit_as_pgseg.safetensors"),
           "--pgseg-side", "1", "-o", ws.out("out"), *CPU]


@case("segment --sam-refine with a method other than trident", "--sam-refine: Trident's SAM prompt refinement "
      "needs SAM's image encoder", "pass --dense trident")
def _sam_refine_not_trident(ws: Workspace) -> Iterator[list[object]]:
    yield _segment(ws, "seg_sam_refine", "--classes", "star,circle", "--sam-refine")


@case("segment --cos-fac nan", "--cos-fac nan: not a finite number")
def _cos_fac_nan(ws: Workspace) -> Iterator[list[object]]:
    yield _segment(ws, "seg_nan", "--classes", "star,circle", "--dense", "trident", "--cos-fac", "nan")


@case("segment --bg-thresh without --pgseg (warned, not recorded)", "--bg-thresh 0.5 has no effect without "
      "--pgseg", exit_code=0, leaves=("seg_bg_thresh/", "seg_bg_thresh/*"))
def _bg_thresh_without_pgseg(ws: Workspace) -> Iterator[list[object]]:
    yield _segment(ws, "seg_bg_thresh", "--classes", "star,circle", "--bg-thresh", "0.5")


@case("segment --pgseg FILE --class-file FILE (the file would be ignored whole)", "--class-file", "not used with "
      "--pgseg", "drop one of them")
def _pgseg_class_file(ws: Workspace) -> Iterator[list[object]]:
    (ws.root / "cls_pgseg.txt").write_text("star\ncircle\n")
    yield ["segment", ws.world, "--split", "val", "--pgseg", ws.dino_weights("vit_as_pgseg.safetensors"),
           "--class-file", ws.root / "cls_pgseg.txt", "-o", ws.out("out"), *CPU]


@case("segment --pgseg FILE --classes with synonyms (they would be dropped)", "--classes star|sun,circle: not "
      "used with --pgseg", "give one name a class")
def _pgseg_synonyms(ws: Workspace) -> Iterator[list[object]]:
    yield ["segment", ws.world, "--split", "val", "--pgseg", ws.dino_weights("vit_as_pgseg.safetensors"),
           "--classes", "star|sun,circle", "-o", ws.out("out"), *CPU]


@case("cam --pgseg FILE -p PROTOTYPES", "--prototypes", "not used with --pgseg")
def _pgseg_cam_prototypes(ws: Workspace) -> Iterator[list[object]]:
    yield ["cam", ws.world, "--split", "train", "--pgseg", ws.dino_weights("vit_as_pgseg.safetensors"), "-p",
           ws.text, "-o", ws.out("out"), *CPU]


@case("a class file in ProxyCLIP's and Trident's format ('; ' between queries) with --background as well",
      "--background sky: --class-file", "gives the background's queries on its first line")
def _class_file_semicolons_and_background(ws: Workspace) -> Iterator[list[object]]:
    root = _miniature(ws, "voc21")
    from vpltool.config.presets import VOC_CLASSES
    from vpltool.data.class_files import read_class_file

    path = ws.root / "cls_voc21_proxyclip.txt"
    path.write_text("; ".join(read_class_file("sclip:voc21")[0]) + "\n" + "\n".join(VOC_CLASSES))
    yield ["segment", f"voc21={root}", "-o", ws.out("out"), "--class-file", path, "--background", "sky", *TINY,
           *CPU]


@case("a class file querying one word for two classes", "'dog' is named twice", "give each class and synonym "
      "once")
def _class_file_query_twice(ws: Workspace) -> Iterator[list[object]]:
    root = _miniature(ws, "voc21")
    from vpltool.config.presets import VOC_CLASSES

    path = ws.root / "cls_twice.txt"
    path.write_text("\n".join(["dog", *VOC_CLASSES[1:]]) + "\n")
    yield ["segment", f"voc20={root}", "-o", ws.out("out"), "--class-file", path, *SEG_TINY]


@case("a class file with '|' (--classes' synonym mark)", "holds '|', --classes' synonym mark")
def _class_file_bar(ws: Workspace) -> Iterator[list[object]]:
    root = _miniature(ws, "voc21")
    from vpltool.config.presets import VOC_CLASSES

    path = ws.root / "cls_bar.txt"
    path.write_text("\n".join(["aeroplane|jet", *VOC_CLASSES[1:]]) + "\n")
    yield ["segment", f"voc20={root}", "-o", ws.out("out"), "--class-file", path, *SEG_TINY]


def _world_class_file(ws: Workspace, name: str, lines: Callable[[list[str]], list[str]]) -> Path:
    """A class file for the demo world: ``lines(class names)`` written one a line."""
    from vpltool.data import open_dataset

    path = ws.root / name
    path.write_text("\n".join(lines(list(open_dataset(ws.world, "val").classes[1:]))) + "\n")
    return path


@case("a class file one line short: the background's line kept, the last class dropped (segment)",
      "cls_short.txt: 8 lines for 8 classes, the first not marked as the background's",
      "mark that line 'background: WORDS'")
def _class_file_one_short(ws: Workspace) -> Iterator[list[object]]:
    path = _world_class_file(ws, "cls_short.txt", lambda names: ["grass, sky, wall, water", *names[:-1]])
    yield ["segment", ws.world, "--split", "val", "-o", ws.out("out"), "--class-file", path, *SEG_TINY]


@case("a class file without its first class: the background's line kept, unmarked (segment; once read with the "
      "background's words as the first class's)", "cls_no_first.txt: 8 lines for 8 classes, the first not marked",
      "--background WORDS, voc or coco")
def _class_file_no_first_class(ws: Workspace) -> Iterator[list[object]]:
    path = _world_class_file(ws, "cls_no_first.txt", lambda names: ["grass, sky, wall, water", *names[1:]])
    yield ["segment", ws.world, "--split", "val", "-o", ws.out("out"), "--class-file", path, *SEG_TINY]


@case("a class file without its first class, its lines of synonyms (segment; no line asks only another class's "
      "name)", "cls_synonyms_short.txt: 8 lines for 8 classes, the first not marked")
def _class_file_synonyms_short(ws: Workspace) -> Iterator[list[object]]:
    path = _world_class_file(ws, "cls_synonyms_short.txt",
                             lambda names: ["grass, sky", *(f"{n}, a {n} shape" for n in names[1:])])
    yield ["segment", ws.world, "--split", "val", "-o", ws.out("out"), "--class-file", path, *SEG_TINY]


@case("Python: a class file without its first class, the background's line unmarked",
      "cls_py_short.txt: 2 lines for 2 classes, the first not marked", python=True)
def _py_class_file_short(ws: Workspace) -> Iterator[list[object]]:
    (ws.root / "cls_py_short.txt").write_text("grass, sky\nstar\n")
    yield ['s = vpltool.segmenter("maskclip", model="vpl-test-vit", pretrained="none", device="cpu", '
           'templates="a photo of a {}.", class_file="cls_py_short.txt")',
           "s(np.zeros((32, 32, 3), np.uint8), ['circle', 'star'])"]


@case("a class file whose first line is marked 'background:', one class short (segment)",
      "cls_marked_short.txt: 8 lines for the background and 8 classes: one class line is missing")
def _class_file_marked_short(ws: Workspace) -> Iterator[list[object]]:
    path = _world_class_file(ws, "cls_marked_short.txt", lambda names: ["background: grass, sky", *names[:-1]])
    yield ["segment", ws.world, "--split", "val", "-o", ws.out("out"), "--class-file", path, *SEG_TINY]


@case("benchmark --class-file: VOC21's file without its last line (20 lines)",
      "cls_voc21_short.txt: 20 lines for 20 classes and the background, which this benchmark scores")
def _benchmark_class_file_short(ws: Workspace) -> Iterator[list[object]]:
    from vpltool.data.class_files import class_file_path

    root = _miniature(ws, "voc21")
    path = ws.root / "cls_voc21_short.txt"
    path.write_text("\n".join(class_file_path("sclip:voc21").read_text().splitlines()[:-1]) + "\n")
    yield ["benchmark", "naclip", "--root", f"voc21={root}", "--class-file", path, "-o", ws.out("out"), *TINY, *CPU]


@case("a class file of one line a class and no --background (segment): which it is is not guessed",
      "cls_no_background.txt: 8 lines for 8 classes, the first not marked", "--background WORDS, voc or coco")
def _class_file_no_background(ws: Workspace) -> Iterator[list[object]]:
    path = _world_class_file(ws, "cls_no_background.txt", lambda names: names)
    yield ["segment", ws.world, "--split", "val", "-o", ws.out("out"), "--class-file", path, *SEG_TINY]


@case("a class file of one line a class with --background none (segment): read as one line a class", "✓ segment",
      exit_code=0, leaves=("seg_no_background/", "seg_no_background/*"))
def _class_file_background_given(ws: Workspace) -> Iterator[list[object]]:
    path = _world_class_file(ws, "cls_no_background.txt", lambda names: names)
    yield ["segment", ws.world, "--split", "val", "-o", ws.out("seg_no_background"), "--class-file", path,
           "--background", "none", *SEG_TINY]


@case("benchmark --class-file FILE for two benchmarks", "--class-file sclip:voc21: one file for 2 benchmarks",
      "give a set name")
def _benchmark_one_class_file(ws: Workspace) -> Iterator[list[object]]:
    root = _miniature(ws, "voc21")
    yield ["benchmark", "naclip", "--root", f"voc21={root}", "--root", f"voc20={root}", "--class-file",
           "sclip:voc21", "-o", ws.out("out"), *TINY, *CPU]


@case("benchmark naclip,naclip", "method 'naclip' is named 2 times")
def _benchmark_method_twice(ws: Workspace) -> Iterator[list[object]]:
    root = _miniature(ws, "voc21")
    yield ["benchmark", "naclip,naclip", "--root", f"voc21={root}", "-o", ws.out("out"), *TINY, *CPU]


@case("make-world --train 2147483648", "--train 2147483648 --val 200: at most 1,000,000 scenes")
def _world_too_many(ws: Workspace) -> Iterator[list[object]]:
    yield ["make-world", ws.out("world_huge"), "--train", "2147483648"]


@case("train-toy-clip --batch-size 2147483648 (each step renders its batch in memory)",
      "--batch-size 2147483648: at most 4,096 scenes per step", "give a smaller batch")
def _toy_clip_batch_too_big(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-toy-clip", ws.out("toy_huge_batch"), "--steps", "1", "--batch-size", "2147483648"]


@case("train-toy-dino OUT where OUT is the toy DINO vpltool ships (no --overwrite; a link to it in the workspace)",
      "shipped_dino.safetensors: is the toy model vpltool ships (vpltool/assets/toy-dino/model.safetensors), so it "
      "is not replaced")
def _toy_dino_over_shipped(ws: Workspace) -> Iterator[list[object]]:
    import vpltool

    link = ws.root / "shipped_dino.safetensors"
    link.unlink(missing_ok=True)
    link.symlink_to(Path(vpltool.__file__).parent / "assets" / "toy-dino" / "model.safetensors")
    yield ["train-toy-dino", link, "--data", ws.world, "--epochs", "1", "--batch-size", "2"]


@case("train-decoder -o a train-pgseg folder whose records are gone (its checkpoints and log have a decoder's names)",
      "run_pgseg_bare: holds `train-pgseg` output; choose another --out")
def _decoder_into_bare_pgseg_run(ws: Workspace) -> Iterator[list[object]]:
    run = _pgseg_run(ws, ws.world, "run_pgseg_bare")
    for record in ("_stage.json", "_run.json"):
        (run / record).unlink(missing_ok=True)
    yield ["train-decoder", ws.pseudo, "-p", ws.text, "-o", run, *DECODER_ARGS]


@case("train-pgseg --nouns FILE that matches no caption", "none of its words is in any of the 4 captions")
def _pgseg_nouns_match_nothing(ws: Workspace) -> Iterator[list[object]]:
    (ws.root / "nouns_none.txt").write_text("zebra\ngiraffe\n")
    yield ["train-pgseg", ws.world, "-o", ws.out("out"), "--multi-label", "3", "--nouns",
           ws.root / "nouns_none.txt", *PGSEG_ARGS]


@case("train-decoder --recipe weclip --dino-model (WeCLIP+'s two-branch decoder)", "--dino-model",
      "pass --recipe weclip+")
def _weclip_with_dino(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-decoder", ws.world, "-p", ws.text, "-o", ws.out("out"), "--recipe", "weclip", "--dino-model",
           DINO_MODEL, *DECODER_ARGS]



# ---- SAM 3's two methods: its weights (--sam3-weights), ActiveSAM's WordNet (nltk's data), their knobs
def _sam3_weights(ws: Workspace) -> Path:
    """The sam3 family's tiny seeded SAM 3 in Hugging Face's layout, made once per workspace under ``sam3/``."""
    folder = ws.root / "sam3"
    if not (folder / "model.safetensors").is_file():
        from vpltool.models.backbones.sam3_files import write_tiny

        write_tiny(folder, "hf")
    return folder


def _sam3_args(ws: Workspace, method: str, name: str, *more: object) -> list[object]:
    return ["segment", ws.world, "--split", "val", "-o", ws.out(name), *CPU, "--classes", "star,circle", "--dense",
            method, *more]


@contextlib.contextmanager
def _no_sam3_load() -> Iterator[None]:
    """While the case runs, building SAM 3's model fails loudly: its refusal comes before."""
    from vpltool.models.dense import sam3

    with _no_model_load(), mock.patch.object(sam3, "load_sam3", side_effect=AssertionError("a model loaded")):
        yield


@case("segment --dense sam3 without --sam3-weights", "--dense sam3 needs SAM 3's weights: pass --sam3-weights")
def _sam3_no_weights(ws: Workspace) -> Iterator[list[object]]:
    with _no_sam3_load():
        yield _sam3_args(ws, "sam3", "seg_sam3")


@case("segment --dense sam3 with --sam3-weights a torch file of another model", "sam3_other.pt: holds no "
      "detector.* tensors", "pass SAM 3's weights")
def _sam3_other_file(ws: Workspace) -> Iterator[list[object]]:
    import torch

    torch.save({"weight": torch.zeros(2)}, ws.root / "sam3_other.pt")
    with _no_sam3_load():
        yield _sam3_args(ws, "sam3", "seg_sam3", "--sam3-weights", ws.root / "sam3_other.pt")


@case("segment --dense activesam where nltk finds no WordNet data (offline, never downloaded)", "nltk finds no "
      "WordNet data", "python -m nltk.downloader wordnet", "--hypernym-tokens 0")
def _activesam_no_wordnet(ws: Workspace) -> Iterator[list[object]]:
    saved = dict(os.environ)  # nltk's import sets OpenMP's variables (vpltool puts them back: so does the case)
    import nltk
    from nltk.corpus.reader import WordNetCorpusReader
    from nltk.corpus.util import LazyCorpusLoader

    from vpltool.models.dense.activesam import vocabulary

    os.environ.clear()
    os.environ.update(saved)

    empty = ws.root / "nltk_data_empty"
    empty.mkdir(exist_ok=True)
    vocabulary.wordnet.cache_clear()
    with _no_sam3_load(), mock.patch.object(nltk.data, "path", [str(empty)]), \
            mock.patch("nltk.corpus.wordnet", LazyCorpusLoader("wordnet", WordNetCorpusReader, None)):
        yield _sam3_args(ws, "activesam", "seg_activesam", "--sam3-weights", _sam3_weights(ws))
    vocabulary.wordnet.cache_clear()


@case("segment --dense activesam --quantile-alpha 1.5", "--quantile-alpha 1.5: must be in [0, 1]")
def _activesam_alpha(ws: Workspace) -> Iterator[list[object]]:
    with _no_sam3_load():
        yield _sam3_args(ws, "activesam", "seg_activesam", "--sam3-weights", _sam3_weights(ws),
                         "--quantile-alpha", "1.5")


@case("segment --dense sam3 --sam3-heads mask", "--sam3-heads 'mask': give one of instance, semantic, both")
def _sam3_heads(ws: Workspace) -> Iterator[list[object]]:
    with _no_sam3_load():
        yield _sam3_args(ws, "sam3", "seg_sam3", "--sam3-weights", _sam3_weights(ws), "--sam3-heads", "mask")


@case("cam --dense sam3 (SAM 3 is a model only segment takes)", "cam --dense sam3: the method needs SAM 3",
      "which only `vpltool segment` takes")
def _sam3_cam(ws: Workspace) -> Iterator[list[object]]:
    with _no_sam3_load():
        yield ["cam", ws.world, "-p", ws.text, "-o", ws.out("cam_sam3"), *CPU, "--dense", "sam3"]


# ---- a foreign item in a finished folder: each item records the digest of the run that wrote it (its stage,
# parameters and inputs); every reader compares it with the folder's record (vpltool.io.provenance)
def _foreign(ws: Workspace, source: Path, name: str, other: Path, suffix: str) -> Path:
    """A copy of the finished folder ``source`` whose first item is replaced by the same image's item of ``other``,
    another run of the same stage (its id and labels fit; its parameters do not)."""
    folder = ws.copy(source, name)
    first = sorted(p.name for p in folder.glob(f"*{suffix}") if not p.name.startswith(("_", ".")))[0]
    shutil.copyfile(other / first, folder / first)
    return folder


def _other_cams(ws: Workspace) -> Path:
    """`cam` of the workspace features with other prototypes (other templates) and --refine none, made once."""
    out, text = ws.root / "cams_other_run", ws.root / "text_other_run.safetensors"
    if not (out / "_stage.json").is_file():
        cli_ok("text-prototypes", ws.features, "-o", text, "--templates", "a picture of a {}.", "--background",
               "grass,sky,wall,water", *CPU)
        cli_ok("cam", ws.features, "-p", text, "-o", out, "--refine", "none", *CPU)
    return out


@case("eval of a finished CAM folder where one file is the same image's CAM of another cam run (other prototypes, "
      "--refine none)", "cams_foreign_eval/train_000000.safetensors: made by another run than its folder's",
      "remove it and re-run `vpltool cam` with the folder's options", "or pass --overwrite")
def _eval_foreign_cam(ws: Workspace) -> Iterator[list[object]]:
    yield ["eval", _foreign(ws, ws.cams, "cams_foreign_eval", _other_cams(ws), ".safetensors")]


@case("crf of a finished CAM folder where one file is the same image's CAM of another cam run",
      "cams_foreign_crf/train_000000.safetensors: made by another run than its folder's")
def _crf_foreign_cam(ws: Workspace) -> Iterator[list[object]]:
    folder = _foreign(ws, ws.cams, "cams_foreign_crf", _other_cams(ws), ".safetensors")
    yield ["crf", folder, "-o", ws.out("pseudo_of_foreign"), "--workers", "1"]


@case("cam of a features folder where one file is the same image's features of another extract run (--cache "
      "light)", "features_foreign/train_000000.safetensors: made by another run than its folder's",
      "re-run `vpltool extract`")
def _cam_foreign_features(ws: Workspace) -> Iterator[list[object]]:
    other = ws.root / "features_light_run"
    if not (other / "_stage.json").is_file():
        cli_ok("extract", ws.world, "--split", "train", "-o", other, *TINY, *CPU, "--workers", "1", "--cache",
               "light")
    folder = _foreign(ws, ws.features, "features_foreign", other, ".safetensors")
    yield ["cam", folder, "-p", ws.text, "-o", ws.out("cams_of_foreign"), *CPU]


@case("train-decoder on a pseudo-mask folder where one mask is the same image's mask of another crf run (--no-crf)",
      "pseudo_foreign/train_000000.png: made by another run than its folder's", "re-run `vpltool crf`")
def _decoder_foreign_mask(ws: Workspace) -> Iterator[list[object]]:
    other = ws.root / "pseudo_no_crf_run"
    if not (other / "_stage.json").is_file():
        cli_ok("crf", ws.cams, "-o", other, "--no-crf", "--workers", "1")
    folder = _foreign(ws, ws.pseudo, "pseudo_foreign", other, ".png")
    yield ["train-decoder", folder, "-p", ws.text, "-o", ws.out("decoder_foreign"), *DECODER_ARGS]


@case("eval of a segment folder where one mask is the same image's mask of another segment run (--dense naclip)",
      "seg_foreign/val_000000.png: made by another run than its folder's", "re-run `vpltool segment`")
def _eval_foreign_segment_mask(ws: Workspace) -> Iterator[list[object]]:
    mine, other = ws.root / "seg_maskclip_run", ws.root / "seg_naclip_run"
    for out, dense in ((mine, "maskclip"), (other, "naclip")):
        if not (out / "_stage.json").is_file():
            cli_ok("segment", ws.world, "--split", "val", "-o", out, *SEG_TINY, "--dense", dense, "--classes",
                   ",".join(SHAPES))
    yield ["eval", _foreign(ws, mine, "seg_foreign", other, ".png")]


# ---- small ones: a refused run's new parents, the fix a photo's message gives, the toy's warning, PGSeg's groups
@contextlib.contextmanager
def _no_model_load() -> Iterator[None]:
    """While the case runs, loading a CLIP fails loudly (a traceback, which the case test refuses): what the case
    refuses must be refused before any model loads."""
    import open_clip

    with mock.patch.object(open_clip, "create_model", side_effect=AssertionError("a model loaded")):
        yield


def _cut_jpeg(ws: Workspace, path: Path) -> Path:
    """A world image saved as a JPEG, then cut to two thirds of its bytes (a broken download)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.open(ws.world / "images" / "train_000000.png").convert("RGB").save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) * 2 // 3])
    return path


@case("segment of one truncated JPEG into runs_new/photo, where runs_new/ is new (found from the file before a "
      "model loads; the new parent removed again)", "cut_photo.jpg: cut short (no end-of-image marker after its "
      "image data): the file is truncated", "re-download it or pass another photo")
def _segment_cut_photo(ws: Workspace) -> Iterator[list[object]]:
    photo = _cut_jpeg(ws, ws.root / "cut_photo.jpg")
    shutil.rmtree(ws.root / "runs_new", ignore_errors=True)
    with _no_model_load():
        yield ["segment", photo, "--classes", "star", "-o", ws.root / "runs_new" / "photo", *SEG_TINY]


@case("segment of a folder of photos, one a truncated JPEG", "photos_cut/b.jpg: cut short", "re-download it or "
      "move it out of the folder")
def _segment_folder_cut_photo(ws: Workspace) -> Iterator[list[object]]:
    folder = ws.root / "photos_cut"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    shutil.copyfile(ws.world / "images" / "train_000001.png", folder / "a.png")
    _cut_jpeg(ws, folder / "b.jpg")
    with _no_model_load():
        yield ["segment", folder, "--classes", "star", "-o", ws.out("out"), *SEG_TINY]


@case("extract of a truncated PNG in a dataset's split (the fix: the split)", "world_cut_png/images/"
      "train_000000.png: cut short (its IDAT chunk runs past the end of the file)", "re-download it or remove it "
      "from the split")
def _extract_cut_png(ws: Workspace) -> Iterator[list[object]]:
    world = ws.copy(ws.world, "world_cut_png")
    path = world / "images" / "train_000000.png"
    path.write_bytes(path.read_bytes()[:-200])
    with _no_model_load():
        yield ["extract", world, "--split", "train", "-o", ws.out("out"), *TINY, *CPU]


@case("segment of a 8x8 photo alone (the fix names no split)", "tiny_photo.png: 8x8 pixels, too small to segment",
      "use the full-size image or pass another photo")
def _segment_tiny_photo(ws: Workspace) -> Iterator[list[object]]:
    from PIL import Image

    Image.new("RGB", (8, 8), (200, 30, 30)).save(ws.root / "tiny_photo.png")
    yield ["segment", ws.root / "tiny_photo.png", "--classes", "star", "-o", ws.out("out"), *SEG_TINY]


@case("segment FOLDER whose photos are in sub-folders (they are named sub-folders, not other files)",
      "photos_nested: holds 2 sub-folders (a, b) and 1 other file (notes.txt)", "its sub-folders are not read: pass "
      "the one that holds the photos")
def _segment_nested_photos(ws: Workspace) -> Iterator[list[object]]:
    folder = ws.root / "photos_nested"
    shutil.rmtree(folder, ignore_errors=True)
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True)
        shutil.copyfile(ws.world / "images" / "train_000000.png", folder / name / "x.png")
    (folder / "notes.txt").write_text("holiday\n")
    yield ["segment", folder, "--classes", "star", "-o", ws.out("out"), *SEG_TINY]


@case("train-pgseg --groups 1,1 (a one-group model gives every pixel one class)", "--groups 1,1: the last stage's "
      "groups are the segments the model names", "pass at least 2 last")
def _pgseg_one_group(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-pgseg", ws.world, "-o", ws.out("out"), *PGSEG_ARGS, "--groups", "1,1"]


@case("train-pgseg --resume --groups 16,8 of a run made without --groups (the preset's own 16, 8: no change)",
      "(resumed)", exit_code=0, leaves=("run_pgseg_own_groups/*",))
def _pgseg_resume_own_groups(ws: Workspace) -> Iterator[list[object]]:
    run = _pgseg_run(ws, ws.world, "run_pgseg_own_groups")
    yield ["train-pgseg", ws.world, "-o", run, *PGSEG_ARGS, "--resume", "--groups", "16,8"]


@case("segment --model pgseg:FILE with one tensor of another shape (both shapes named whole)",
      "pgseg_bad_shape.safetensors: tensor 'img_encoder.layers.0.blocks.0.attn.proj.weight' is [64, 63], this "
      "model's is [64, 64]; pass a checkpoint of this model")
def _pgseg_bad_shape(ws: Workspace) -> Iterator[list[object]]:
    from safetensors import safe_open
    from safetensors.torch import save_file

    run = ws.root / "run_pgseg_own_groups"  # the run of the case before, or one made here
    if not (run / "pgseg.safetensors").is_file():
        _pgseg_run(ws, ws.world, "run_pgseg_own_groups")
    with safe_open(str(run / "pgseg.safetensors"), framework="pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    key = "img_encoder.layers.0.blocks.0.attn.proj.weight"
    tensors[key] = tensors[key][:, :-1].contiguous()
    save_file(tensors, str(ws.drop_after_case(ws.root / "pgseg_bad_shape.safetensors")), metadata=meta)
    yield ["segment", ws.world, "--split", "val", "--model", f"pgseg:{ws.root / 'pgseg_bad_shape.safetensors'}",
           "--classes", "star", "-o", ws.out("out"), *CPU]


@case("report on a folder of run folders, as `benchmark -o` of two methods leaves it (one a method)",
      "bench_two: holds 2 run folders (maskclip, naclip), not stage folders; pass one of them")
def _report_benchmark_folder(ws: Workspace) -> Iterator[list[object]]:
    out = ws.out("bench_two")
    for method in ("naclip", "maskclip"):  # each a run folder: a stage folder (as benchmark's <method>/voc21/)
        shutil.copytree(ws.cams, out / method / "voc21")
    yield ["report", out, "-o", ws.out("report_bench"), "--workers", "1"]

# ---- the dtype and numeric mode a file was made in (vpltool.runtime.numerics): a later stage never mixes them unsaid
@case("cam on features made at bf16 by --precision auto on a CPU with AMX, on a CPU without (auto follows the "
      "features: bf16; once refused, 'this run is at fp32')", "✓ cam: 4 images", exit_code=0,
      leaves=("cams_of_amx/", "cams_of_amx/*"), shows_env=("VPLTOOL_ASSUME_AMX",))
def _cam_on_amx_features(ws: Workspace) -> Iterator[list[object]]:
    features = ws.root / "features_amx"
    if not (features / "_stage.json").is_file():
        with mock.patch.dict(os.environ, {"VPLTOOL_ASSUME_AMX": "1"}):  # as an AMX machine makes them
            cli_ok("extract", ws.world, "--split", "train", "-o", features, *TINY, *CPU, "--workers", "1")
    with mock.patch.dict(os.environ, {"VPLTOOL_ASSUME_AMX": "0"}):  # this run: a CPU without AMX, whatever runs it
        yield ["cam", features, "-p", ws.text, "-o", ws.out("cams_of_amx"), *CPU]


@case("cam (fast mode) on features made by `vpltool --reproducible extract`",
      "features_reproducible: made in reproducible mode; this run is in fast mode: run this command in reproducible "
      "mode too (vpltool --reproducible ..., or VPLTOOL_REPRODUCIBLE=1), or re-run `vpltool extract` without it",
      shows_env=("VPLTOOL_ASSUME_AMX",))
def _cam_on_reproducible_features(ws: Workspace) -> Iterator[list[object]]:
    features = ws.root / "features_reproducible"
    if not (features / "_stage.json").is_file():  # a process of its own: the mode pins libraries before they load
        env = {k: v for k, v in os.environ.items() if k != "VPLTOOL_ASSUME_AMX"}
        subprocess.run([sys.executable, "-m", "vpltool", "--reproducible", "extract", ws.world, "--split", "train",
                        "-o", features, *TINY, *CPU, "--workers", "1"], check=True, env=env, capture_output=True)
    with mock.patch.dict(os.environ, {"VPLTOOL_ASSUME_AMX": "0"}):  # fp32 as the features, whatever CPU runs it: the
        yield ["cam", features, "-p", ws.text, "-o", ws.out("cams_of_reproducible"), *CPU]  # mode alone differs


@case("segment --dense corrclip at --precision auto on a CPU with AMX (bf16: DBSCAN reads its distances widened "
      "exactly to fp32)", "✓ segment (corrclip): 2 masks", exit_code=0, leaves=("corrclip_amx/", "corrclip_amx/*"))
def _corrclip_at_bf16(ws: Workspace) -> Iterator[list[object]]:
    import numpy as np

    masks = ws.root / "corrclip_regions"
    if not masks.is_dir():  # each val image: its left and right halves, and an unsegmented top band
        masks.mkdir()
        for image in sorted((ws.world / "images").glob("val_*")):
            ids = np.ones((96, 96), np.int32)
            ids[:, 48:], ids[:24] = 2, 0
            np.savez(masks / f"{image.stem}.npz", instance_mask=ids)
    dino = ws.root / "dino_corrclip.safetensors"
    shutil.copy(Path(__file__).resolve().parents[1] / "vpltool" / "assets" / "toy-dino" / "model.safetensors", dino)
    with mock.patch.dict(os.environ, {"VPLTOOL_ASSUME_AMX": "1"}):
        yield ["segment", ws.world, "--split", "val", "-o", ws.out("corrclip_amx"), *SEG_TINY, "--dense", "corrclip",
               "--classes", ",".join(SHAPES), "--proxy-model", "test_vit", "--proxy-weights", dino, "--region-masks",
               masks, "--short-side", "64", "--slide-crop", "64", "--slide-stride", "32"]


# --------------------------------------------------------------------------------------------- the page
HEADER = """# Bad input: what the user sees

Generated by `python docgen/robustness_table.py` from the cases in `tests/robustness_cases.py`; the test
`tests/test_robustness.py` runs the same cases and checks, for each, the exit code (2 and one `error:` line, or 0
where the input has a documented meaning), the words of the message, and everything the run left on disk (the
scratch folder is compared before and after); it fails when this page is out of date. Each case runs the real CLI
on a 4-image demo world and the tiny random test CLIP `vpl-test-vit`; paths are relative to that scratch folder.
A command after `>>>` is Python (the front door, docs/api.md), run in that folder with `seg` =
`vpltool.segmenter("maskclip", model="vpl-test-vit", pretrained="none")` (the templates and background words of the
CLI cases): it shows the exception it raises, or the last line it prints, and exit code 2 stands for a `VplError`.
Faults marked *simulated* are injected in-process (the tests run as root, where `chmod` denies nothing, and a disk
cannot be filled on demand); the file-system error itself is real Python `OSError`, and the vpltool code that
handles it is the shipped one.

A failed run never leaves a half-written or temporary file behind and never writes `_stage.json`; a refused run
leaves nothing (an output folder it created is removed again); finished items are kept, with the folder's lock
file and `_run.json`, and re-running the same command resumes (Ctrl-C exits 130, SIGTERM 143, each with one line).
Every path a run writes (`--out`, `--save-overlays`, `--save-debug`, `--plot`, `--json`, `--log`, the decoder's
checkpoint, `make-world`'s folder) passes one guard before any model loads (`io.check_outputs`,
docs/file-formats.md): never an input of the run, inside an input folder or inside the dataset, never another
stage's folder or a non-empty folder vpltool did not make (`--overwrite` included). Records are checked like input,
one lock per folder serves plain runs and shards alike and dies with its run, an option without effect is warned
about and not recorded, and a resume whose inputs changed since the folder's record is refused before any item is
skipped. A command shown with `VAR=value` (or `env -u VAR`) ran with that environment. A figure that follows the
CPU's float arithmetic (an mIoU, a loss: the dtype `--precision auto` picks and the kernels each CPU runs) is shown
as `·`, so that the page is the same on every machine.
"""


def _cell(text: str) -> str:
    """``text`` verbatim as a code span in a table cell (double backticks when it holds backticks)."""
    text = text.replace("|", "\\|")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _stable(text: str) -> str:
    """``text`` with each shortened sha256 shown as ``…``: ``sha256 1c9daaf6d13e… there, 474521d14289… here``
    becomes ``sha256 … there, … here``. A digest of a file the workspace wrote (prototypes, checkpoints carry their
    own digests and times) differs from run to run, and the page must not."""
    import re

    text = re.sub(r"\b[0-9a-f]{12}…", "…", text)
    return _keyed_names(text)


def _keyed_names(text: str) -> str:
    """``text`` with each file named by a sha256 key shown as ``<key>``, and its two-digit shard folder as ``<kk>``
    (a Talk2DINO feature-cache entry: ``cache/image/00/008e…b8ef.safetensors`` is
    ``cache/image/<kk>/<key>.safetensors``).
    The key hashes the cache's identity, which holds the run's dtype and the DINO's matrix products: another CPU
    (bf16 at --precision auto on AMX) names the same entry otherwise, and the page must not follow the CPU."""
    import re

    text = re.sub(r"(cache/(?:image|text)/)[0-9a-f]{2}/", r"\1<kk>/", text)
    return re.sub(r"(cache/(?:image|text)/<kk>/)[0-9a-f]{64}\b", r"\1<key>", text)


def keyed_left(left: list[str]) -> list[str]:
    """``left`` (:func:`disk_changes`) as no machine changes it: each keyed name as :func:`_keyed_names` shows it,
    the ``<kk>/`` shard folders themselves left out, the changed paths then the removed ones (``-path``), each
    sorted, as :func:`disk_changes` gives them.
    A key follows the CPU (:func:`_keyed_names`), so which entries share a shard folder, whether a re-made entry's
    shard folder was already there, and where ``<kk>/`` sorts beside ``_layout.json`` (a digit before ``_``, a letter
    after) all do too; the entries themselves, and what happened to each, do not."""
    import re

    keyed = [p for p in map(_keyed_names, left) if not re.search(r"cache/(?:image|text)/<kk>/$", p)]
    return sorted(p for p in keyed if not p.startswith("-")) + sorted(p for p in keyed if p.startswith("-"))


def without_scores(text: str) -> str:
    """``text`` with each mIoU and loss figure shown as ``·`` (``mIoU 14.68`` → ``mIoU ·``, ``loss 2.06 → 4.62`` →
    ``loss · → ·``, ``loss (CE + RSC) 4.3757 → 2.5353`` → ``loss (CE + RSC) · → ·``, ``(2.984e+28 → 2.984e+28 nats)``
    → ``(· → · nats)``). These come from float sums whose last
    bits follow the machine's BLAS and CPU (CI printed 14.67 where this machine printed 14.68) and from the dtype
    ``--precision auto`` resolves to (bf16 on a CPU with AMX: 2.997e+28 nats where fp32 gives 2.984e+28), so the
    page shows neither (:func:`render`) and is the same on every machine."""
    import re

    text = re.sub(r"\b(mIoU|loss)( \([^()]*\))? [0-9]+\.[0-9]+((?: → [0-9]+\.[0-9]+)*)",
                  lambda m: f"{m.group(1)}{m.group(2) or ''} ·" + " → ·" * m.group(3).count("→"), text)
    return re.sub(r"\(([0-9.]+(?:e[+-]?[0-9]+)?(?: → )?)+ nats\)",
                  lambda m: "(" + " → ".join("·" for _ in m.group(0).split("→")) + " nats)", text)


def render(rows: list[tuple[Case, str, Outcome]]) -> str:
    """The markdown page: one row per case, in the order of :data:`CASES`."""
    lines = [HEADER, "| case | command | exit code | what the user sees | left on disk |", "|---|---|---|---|---|"]
    for c, command, outcome in rows:
        left = _cell(describe_left(keyed_left(outcome.left))) if outcome.left else "nothing"
        seen = without_scores(_stable(outcome.seen))
        name = f"{c.name} (`{c.tsv}`)" if c.tsv else c.name
        lines.append(f"| {name} | {_cell(command)} | {outcome.exit_code} | {_cell(seen)} | {left} |")
    return "\n".join(lines) + "\n"


def run_all(ws: Workspace) -> list[tuple[Case, str, Outcome]]:
    rows = []
    ws._after_case.clear()  # what was named before the first case (a fixture's) is not the first case's to remove
    for c in CASES:
        args, outcome = c.run(ws)
        rows.append((c, c.command(ws, args, outcome.env), outcome))
        ws.end_case()
    missed = ws.missed_by_watch()
    assert not missed, f"the workspace's inotify watch missed a change: {missed[:20]}"  # every row's 'left' then
    return rows


# ---- found by the fuzz on a Xeon with AMX (another hypothesis drew them): an empty --data, a NUL byte in a path
@case("train-toy-dino --data '' (read as the current folder, and the line named a --split the command lacks)",
      "no images/ folder; pass a folder written by make-world")
def _toy_dino_empty_data(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-toy-dino", ws.out("dino_empty_data") / "dino.safetensors", "--data", ""]


# ---- the tenth round's rows, in their own module (its rows after these)
import robustness_round10  # noqa: E402, F401  (tests/ is on sys.path; registers its cases)
import robustness_round11_export  # noqa: E402, F401  (the export rows: `export`, `segment --onnx`)
import robustness_round11_ledger  # noqa: E402, F401  (the eleventh round: model files by content)
import robustness_round11_licences  # noqa: E402, F401  (tests/ is on sys.path; registers its cases)
import robustness_round11_plugins  # noqa: E402, F401  (the eleventh round's plugin and save rows)
import robustness_round11_r81a  # noqa: E402, F401  (the trainers that build beside: --overwrite keeps the last)
import robustness_round11_r81b  # noqa: E402, F401  (the rows the generators of test_fuzz found)
import robustness_round11_records  # noqa: E402, F401  (the eleventh round's records rows)
import robustness_round11_round11  # noqa: E402, F401  (the review list's rows no other module answers)

# ---- the eleventh round's rows for a new user of SAM 3, in their own module
import robustness_round11_sam3  # noqa: E402, F401  (tests/ is on sys.path; registers its cases)
import robustness_round11_toysam3  # noqa: E402, F401  (the toy SAM 3's rows: train-toy-sam3)

# ---- the twelfth round's rows: SAM 3's region generator's --confidence-threshold
import robustness_round12_regions  # noqa: E402, F401  (tests/ is on sys.path; registers its cases)

# ---- sam-pseudo --start FOLDER (crf --start-out): a start folder it may not start from, crf --start-out refused
import robustness_round12_sampseudo  # noqa: E402, F401  (tests/ is on sys.path; registers its cases)

# ---- SAM 3's sam3.pt cut short while it loads into half precision: one line, not SIGBUS
import robustness_round13_s3half  # noqa: E402, F401  (tests/ is on sys.path; registers its cases)
import robustness_round15_toyradio  # noqa: E402, F401  (the toy RADIO's rows: train-toy-radio)
import robustness_round16_demo  # noqa: E402, F401  (train-decoder and predict --feature-store)
