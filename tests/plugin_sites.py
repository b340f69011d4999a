"""Plugins installed for a test, outside this process: the example package (tests/plugin_example, pip-installed
offline into a folder) and broken ones (a distribution's metadata and modules written by hand), and a Python run
that sees them (``PYTHONPATH``), since a plugin's options join the command line when vpltool.cli is imported."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

TESTS = Path(__file__).parent
EXAMPLE = TESTS / "plugin_example"
TINY = ["--model", "vpl-test-vit", "--pretrained", "none", "--model-config-dir",
        str(TESTS / "assets" / "model_configs")]


def install_example(root: Path) -> Path:
    """pip-install tests/plugin_example into ``root/site`` offline (no index, no build isolation, its dependency
    vpltool already here); the source is copied first, so that the build leaves nothing in tests/."""
    source, site = root / "source", root / "site"
    shutil.copytree(EXAMPLE, source)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--no-index", "--target", str(site), str(source)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return site


def fake_dist(site: Path, name: str, entry: str, modules: dict[str, str]) -> None:
    """A distribution ``name`` 0.1.0 installed in ``site`` by hand: its metadata, its ``vpltool.plugins`` entry
    point ``entry`` (``module:function``) and its ``modules`` (name -> source)."""
    info = site / f"{name.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[vpltool.plugins]\n{name} = {entry}\n")
    for module, text in modules.items():
        (site / f"{module}.py").write_text(text)


SPEC = ("from vpltool.plugins import DenseMethodSpec, register_dense_method\n"
        "from vpltool.config import DENSE_SEGMENTORS\n")
# each broken plugin: its distribution, what it does wrong, and the words of its one line
BROKEN = {
    "vpltool-broken-import": ("broken_import:register", {"broken_import": "import no_such_package_xyz\n"
                                                         "def register():\n    pass\n"}),
    "vpltool-clash": ("clash:register", {"clash": SPEC + "def register():\n    register_dense_method('naclip', "
                                         "DenseMethodSpec(DENSE_SEGMENTORS['naclip'], module='clash'))\n"}),
    "vpltool-misspelt": ("misspelt:register", {
        "misspelt": SPEC + "def register():\n    register_dense_method('misspelt', DenseMethodSpec("
                           "DENSE_SEGMENTORS['naclip'], module='misspelt_method'))\n",
        "misspelt_method": "from vpltool.models.dense import DenseHooks, DENSE_PRESETS\n"
                           "class Hooks(DenseHooks, method='misspelt', preset=DENSE_PRESETS['naclip']):\n"
                           "    def dense_logit(self, bb, pixels, text, sizes, settings, extras):\n"
                           "        return []\n"}),
    "vpltool-bad-knob": ("bad_knob:register", {"bad_knob": SPEC + (
        "from dataclasses import dataclass\n"
        "from vpltool.plugins import MethodKnobs, knob\n"
        "@dataclass(frozen=True)\n"
        "class Knobs(MethodKnobs):\n"
        "    spread: float | None = knob('--overlay', 'an option segment has already')\n"
        "def register():\n    register_dense_method('badknob', DenseMethodSpec(DENSE_SEGMENTORS['naclip'], "
        "module='bad_knob', knobs_class=Knobs))\n")}),
    "vpltool-numpy-hooks": ("numpy_hooks:register", {
        "numpy_hooks": SPEC + "def register():\n    register_dense_method('numpy-hooks', DenseMethodSpec("
                              "DENSE_SEGMENTORS['naclip'], module='numpy_hooks_method'))\n",
        "numpy_hooks_method": "from vpltool.models.dense import DenseHooks, DENSE_PRESETS\n"
                              "class Hooks(DenseHooks, method='numpy-hooks', preset=DENSE_PRESETS['naclip']):\n"
                              "    def postprocess(self, bb, probs, labels, extras, settings):\n"
                              "        return probs.numpy(), labels.numpy()\n"}),
    "vpltool-bad-text": ("bad_text:register", {
        "bad_text": "from vpltool.plugins import TextFamilyRow, register_text_family\n"
                    "def register():\n    register_text_family('badtext', TextFamilyRow('bad_text_family', "
                    "'bad_text_config:Config', ('badtext',), 'a broken family', 'a file'))\n",
        "bad_text_config": "raise RuntimeError('its configuration does not import')\n"}),
}


def write_broken(site: Path) -> Path:
    for name, (entry, modules) in BROKEN.items():
        fake_dist(site, name, entry, modules)
    return site


def run_with(sites: list[Path], script: str, *args: str, timeout: float = 600) -> dict:
    """Run ``script`` (Python source, reading ``sys.argv[1:] = args``) in a fresh interpreter that sees the
    plugins in ``sites``; it prints one JSON object last, which is returned."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, sites), str(TESTS),
                                                         os.environ.get("PYTHONPATH", "")])}
    # its last line: the interpreter's exit leaves out its final collections (~0.5-1 CPU-s once torch is in)
    done = subprocess.run([sys.executable, "-c", script + "\nimport gc\ngc.freeze()\n", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# plugins whose own code would end, or take over, the process that loads them: each is one line and left out (the
# first two), or loads without touching the command line or vpltool's output (the last two)
RUDE = {
    "vpltool-exits": ("exits:register", {"exits": SPEC + (
        "import sys\n"
        "def register():\n    register_dense_method('exits', DenseMethodSpec(DENSE_SEGMENTORS['naclip'], "
        "module='exits'))\n    sys.exit(0)\n")}),
    "vpltool-interrupts": ("interrupts:register", {"interrupts": "def register():\n    raise KeyboardInterrupt\n"}),
    "vpltool-argparse": ("argparse_plugin:register", {"argparse_plugin": SPEC + (
        "import argparse\n"
        "parser = argparse.ArgumentParser(prog='argparse-plugin')\n"
        "parser.add_argument('--plugin-level', type=int, default=1)\n"
        "ARGS = parser.parse_args()  # at import: it would read (and refuse, or answer --help to) vpltool's own\n"
        "def register():\n    register_dense_method('argparsed', DenseMethodSpec(DENSE_SEGMENTORS['naclip'], "
        "module='argparse_plugin'))\n")}),
    "vpltool-prints": ("prints:register", {"prints": "def register():\n    print('hello from a plugin')\n"}),
}


def write_rude(site: Path) -> Path:
    for name, (entry, modules) in RUDE.items():
        fake_dist(site, name, entry, modules)
    return site


# plugins whose register() ends or stalls the process that calls it, past what plugin_code can catch: each is listed
# in a child process and costs only itself (one line); a program that does not name them never runs them
ENDING = {
    "vpltool-os-exit": ("os_exit:register", {"os_exit": "import os\ndef register():\n    os._exit(0)\n"}),
    "vpltool-hangs": ("hangs:register", {"hangs": "import time\ndef register():\n    time.sleep(3600)\n"}),
    "vpltool-crashes": ("crashes:register", {"crashes": "import os, signal\ndef register():\n"
                                                        "    os.kill(os.getpid(), signal.SIGSEGV)\n"}),
}
# the words of each one's line
ENDING_WORDS = {"vpltool-os-exit": "failed (it ended the process with exit code 0)",
                "vpltool-hangs": "failed (it did not return within ",
                "vpltool-crashes": "failed (it crashed with SIGSEGV)"}
SHORT_TIMEOUT = "5"  # seconds, the plugins' timeout in these tests (VPLTOOL_PLUGIN_TIMEOUT): the hanging one's cost


def write_ending(site: Path) -> Path:
    for name, (entry, modules) in ENDING.items():
        fake_dist(site, name, entry, modules)
    return site


# a plugin that lists cleanly (its method, `marked`) and says where its register() ran: it appends its process id to
# the file VPLTOOL_TEST_MARKS names; a process that only lists the plugins must never find its own id there
MARKED = {"vpltool-marked": ("marked:register", {"marked": SPEC + (
    "import os\n"
    "def register():\n    register_dense_method('marked', DenseMethodSpec(DENSE_SEGMENTORS['naclip'], "
    "module='marked'))\n"
    "    with open(os.environ['VPLTOOL_TEST_MARKS'], 'a') as f:\n        f.write(f'{os.getpid()}\\n')\n")})}


def write_marked(site: Path) -> Path:
    for name, (entry, modules) in MARKED.items():
        fake_dist(site, name, entry, modules)
    return site


@contextlib.contextmanager
def fresh_plugin_state(quiet: bool) -> Iterator[None]:
    """vpltool's plugin state (``vpltool.plugins.entry_points``) as in a process that has read no plugin yet (its own
    entry points as they were), ``quiet`` or not; afterwards, all of it as before."""
    from vpltool.plugins import entry_points as ep

    saved = dict(ep._STATE), set(ep._LOADED), set(ep._WANTED), list(ep._PROBLEMS)
    ep._STATE.update(loaded=False, group=None, survey=None, quiet=quiet)
    try:
        yield
    finally:
        ep._STATE.clear()
        ep._STATE.update(saved[0])
        for now, before in zip((ep._LOADED, ep._WANTED), saved[1:3]):
            now.clear()
            now.update(before)
        ep._PROBLEMS[:] = saved[3]
