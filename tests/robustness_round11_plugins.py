"""The eleventh round's plugin and ``Segmentation.save`` rows of the table of ``robustness_cases.py`` (which imports
this module after round ten's): each row fails with its fix reverted.

* Plugins are loaded only when named or listed, and listed in a child process: a plugin whose register() calls
  ``os._exit(0)``, hangs or dies of SIGSEGV once ended every command (``segment``, ``eval``, ``import vpltool``'s
  ``segmenter``) with exit 0, having done nothing.
* ``result.save(path)`` checks its path as the command line does: it once wrote over the photo it segmented, or
  over a user's own file, without a word.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import sys
from collections.abc import Iterator
from unittest import mock

from plugin_sites import fresh_plugin_state, write_ending  # tests/ is on sys.path

from robustness_cases import SEG_TINY, Workspace, case

SEG_VAL = ["--split", "val", *SEG_TINY, "--classes", "star,circle"]
TIMEOUT = "5"  # seconds: the plugins' timeout these rows set (VPLTOOL_PLUGIN_TIMEOUT), the hanging plugin's cost


# ---- H: a plugin's register() that ends the process (os._exit), hangs or crashes costs only that plugin
@contextlib.contextmanager
def _ending_plugins(ws: Workspace) -> Iterator[None]:
    """The plugins of ``plugin_sites.ENDING`` installed (a folder on ``sys.path``) as if this process had just
    started: none of the plugins read yet (vpltool's own entry points as they were); afterwards, all as before."""
    site = ws.root / "plugins_ending"
    if not site.is_dir():
        write_ending(site)
    with fresh_plugin_state(quiet=False):  # a process that has read no plugin
        sys.path.insert(0, str(site))
        importlib.invalidate_caches()
        try:
            with mock.patch.dict(os.environ, {"VPLTOOL_PLUGIN_TIMEOUT": TIMEOUT}):
                yield
        finally:
            sys.path.remove(str(site))
            importlib.invalidate_caches()


@case("segment --dense naclip with plugins installed whose register() calls os._exit(0), hangs or dies of SIGSEGV "
      "(once: exit 0 and nothing done, or a hang)", "✓ segment (naclip): 2 masks", exit_code=0,
      leaves=("seg_ending_plugins/", "seg_ending_plugins/*"), tsv="plugin_os_exit_segment")
def _segment_beside_ending_plugins(ws: Workspace) -> Iterator[list[object]]:
    with _ending_plugins(ws):
        yield ["segment", ws.world, "-o", ws.out("seg_ending_plugins"), *SEG_VAL, "--dense", "naclip"]


@case("eval with plugins installed whose register() calls os._exit(0), hangs or dies of SIGSEGV (once: exit 0, no "
      "score)", "mIoU", exit_code=0)
def _eval_beside_ending_plugins(ws: Workspace) -> Iterator[list[object]]:
    predictions = ws.predictions()
    with _ending_plugins(ws):
        yield ["eval", predictions]


@case("Python: vpltool.segmenter('naclip') and a photo segmented, with those plugins installed (once: the program "
      "ended at the segmenter, exit 0)", "[96, 96]", exit_code=0, python=True)
def _py_builtin_beside_ending_plugins(ws: Workspace) -> Iterator[list[object]]:
    with _ending_plugins(ws):
        yield ["s = vpltool.segmenter('naclip', model='vpl-test-vit', pretrained='none', device='cpu')",
               "print(list(s('world/images/val_000000.png', ['star']).labels.shape))"]


@case("Python: vpltool.plugins.problems() (a listing, as --help and list_methods() list) with those plugins installed "
      "(once: the program ended, exit 0)",
      "plugin vpltool-os-exit 0.1.0: its entry point vpltool-os-exit = os_exit:register failed (it ended the "
      "process with exit code 0); it is not loaded", "pip uninstall vpltool-os-exit",
      "plugin vpltool-hangs 0.1.0: its entry point vpltool-hangs = hangs:register failed (it did not return within "
      f"{TIMEOUT} s, the plugins' timeout, set by VPLTOOL_PLUGIN_TIMEOUT)",
      "plugin vpltool-crashes 0.1.0: its entry point vpltool-crashes = crashes:register failed (it crashed with "
      "SIGSEGV)", exit_code=0, python=True, tsv="plugin_os_exit_python")
def _py_listing_ending_plugins(ws: Workspace) -> Iterator[list[object]]:
    with _ending_plugins(ws):
        yield ["print(len(vpltool.plugins.problems()), 'plugins failed')"]


@case("Python: vpltool.segmenter() of a name no plugin registers, with those plugins installed (once: the program "
      "ended, exit 0)", "method 'r11-no-such-method': choose one of none, ", python=True)
def _py_unknown_beside_ending_plugins(ws: Workspace) -> Iterator[list[object]]:
    with _ending_plugins(ws):
        yield ["vpltool.segmenter('r11-no-such-method', model='vpl-test-vit', pretrained='none', device='cpu')"]


# ---- H: result.save(path) never writes over the photo it segmented, nor over a file it did not write
PHOTO = "photo_save.png"  # a copy of a world photo: the one the rows segment (a PNG, as a mask is)


def _photo(ws: Workspace) -> None:
    """The photo the rows segment, and a symbolic and a hard link to it (made once)."""
    photo = ws.root / PHOTO
    if not photo.is_file():
        shutil.copy(sorted((ws.world / "images").glob("val_*.png"))[0], photo)
        (ws.root / "link_to_photo.png").symlink_to(PHOTO)
        os.link(photo, ws.root / "hard_link_to_photo.png")


def _save_case(name: str, target: str, *expect: str, overwrite: bool = False, made: str | None = None,
               exit_code: int = 2, leaves: tuple[str, ...] = (), tsv: str = "") -> None:
    """A row: the photo segmented by ``seg``, then ``r.save(target)``; ``made``: the bytes of a file of the user's
    at ``target`` first."""
    @case(f"Python: result.save({target!r}{', overwrite=True' if overwrite else ''}): {name}", *expect,
          exit_code=exit_code, leaves=leaves, python=True, tsv=tsv)
    def _row(ws: Workspace) -> Iterator[list[object]]:
        _photo(ws)
        if made is not None:
            (ws.root / target).write_text(made)
        yield [f"r = seg({PHOTO!r}, ['star'])", f"print(r.save({target!r}{', overwrite=True' if overwrite else ''}))"]


_INPUT = "is also this run's input (the photo this result segmented); writing there would destroy it: choose " \
         "another path"
_save_case("the photo it segmented (once written over)", PHOTO, f"{PHOTO}: {_INPUT}", overwrite=True,
           tsv="api_save_over_photo")
_save_case("a symbolic link to the photo (once written through)", "link_to_photo.png", f"link_to_photo.png: {_INPUT}",
           overwrite=True)
_save_case("a hard link to the photo, the same file under another name (once written over)",
           "hard_link_to_photo.png", f"hard_link_to_photo.png: is the photo this result segmented ({PHOTO}), the "
           "same file under another name; writing there would destroy it: choose another path", overwrite=True)
_save_case("a file of the user's (once replaced without a word)", "notes_save.png", "notes_save.png: exists and was "
           "not written by vpltool, so it is not replaced; move it away, or pass overwrite=True to replace it",
           made="my notes", tsv="api_save_over_user_file")
_save_case("a file of the user's, overwrite=True (replaced, as the user asked)", "notes_replaced.png",
           "notes_replaced.png", made="my notes", overwrite=True, exit_code=0, leaves=("notes_replaced.png",))
_save_case("inside a `crf` folder", "pseudo/mine.png", "pseudo/mine.png: lies inside pseudo, a `crf` folder whose "
           "files only that stage writes; choose another path", overwrite=True)
