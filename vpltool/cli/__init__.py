"""The `vpltool` command line: a thin typer layer over the library, one function per command, assembled here.

Each command is a plain function in the module of its stage (:mod:`.pipeline`, :mod:`.cam`, :mod:`.segment`,
:mod:`.training`, :mod:`.report`, :mod:`.app`, :mod:`.demo`, :mod:`.benchmark`, :mod:`.train_text`,
:mod:`.pgseg`, :mod:`.sam_pseudo`, :mod:`.export`, :mod:`.doctor`); what they share is split by job:
:mod:`.options` (option types and blocks, with the dense methods' in :mod:`.dense_options`), :mod:`.errors` (one-line
errors, signals, ranks) and :mod:`.output` (lines, progress, ``--log``). Heavy imports happen inside the commands, so
``vpltool --help`` stays fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..plugins import entry_points

# the options below are made from the method tables, the plugins' rows with them: a broken plugin's line is shown
# per command, as one warning line (friendly_errors), not by Python's display while this module imports
entry_points.hold_warnings()

# the options that name a plugin's method or family: --model only as FAMILY:SPEC (a plain --model is an open_clip
# name, looked up among the plugins by no command)
_NAMING = ("--dense", "--family", "--model")


def _plugins_named(args: list[str]) -> None:
    """Load, before the options below are made, the plugins this command line runs: the one that registers each
    name given to ``--dense``, ``--family`` or ``--model FAMILY:SPEC``, or as ``benchmark``'s methods, that is not
    vpltool's own. A help (``--help``, ``help``, no command) and ``benchmark --presets`` list the plugins, each in a
    child process (:func:`vpltool.plugins.entry_points.listed`), and load none here (a help that names a plugin's
    method shows that one's options: it is loaded). A command that names only vpltool's own methods runs none of a
    plugin's code."""
    words = [a for a in args if not a.startswith("-")]
    if not args or (words and words[0] == "help") or any(a in ("-h", "--help", "--presets") for a in args):
        entry_points.listed()
    if words and words[0] == "benchmark" and "--presets" not in args:  # its methods: `benchmark NAME[,NAME]`
        for word in words[1:]:
            for name in word.split(","):
                if name.strip() and "/" not in name and "=" not in name:
                    entry_points.want(name.strip())
    for i, arg in enumerate(args):
        option, eq, value = arg.partition("=")
        if option not in _NAMING:
            continue
        value = value if eq else (args[i + 1] if i + 1 < len(args) else "")
        if option == "--model":
            value, colon, _ = value.partition(":")
            value = value if colon else ""
        entry_points.want(value)


def _as_program() -> bool:
    """Whether this process is the `vpltool` command (its script, or ``python -m vpltool``), whose command line
    says which plugins it needs; a program that imports this module loads a plugin when it names one
    (:func:`vpltool.plugins.load`)."""
    first = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    return first.name == "vpltool" or (first.name == "__main__.py" and first.parent.name == "vpltool")


if _as_program():
    _plugins_named(sys.argv[1:])

from . import app as app_command  # noqa: E402
from . import (  # noqa: E402
    benchmark,
    cam,
    demo,
    doctor,
    export,
    methods,
    pgseg,
    pipeline,
    report,
    sam_pseudo,
    segment,
    train_text,
    training,
)
from .errors import friendly_errors  # noqa: E402
from .options import option_blocks  # noqa: E402
from .root import Command, app, help_cmd  # noqa: E402

DEMO = "Demo world"
# name, function, help panel; `vpltool --help` lists them in this order: the stages in pipeline order, then the demo
# world's, then the benchmarks and the text-supervised families' trainer (and PGSeg's alias of it)
COMMANDS = (
    ("extract", pipeline.extract_cmd, None),
    ("text-prototypes", pipeline.text_prototypes_cmd, None),
    ("cam", cam.cam_cmd, None),
    ("learn-prototypes", pipeline.learn_prototypes_cmd, None),
    ("crf", pipeline.crf_cmd, None),
    ("sam-pseudo", sam_pseudo.sam_pseudo_cmd, None),
    ("segment", segment.segment_cmd, None),
    ("train-decoder", training.train_decoder_cmd, None),
    ("predict", training.predict_cmd, None),
    ("eval", training.eval_cmd, None),
    ("diagnose", training.diagnose_cmd, None),
    ("report", report.report_cmd, None),
    ("export", export.export_cmd, None),
    ("app", app_command.app_cmd, None),
    ("make-world", demo.make_world_cmd, DEMO),
    ("make-pairs", demo.make_pairs_cmd, DEMO),
    ("train-toy-clip", demo.train_toy_clip_cmd, DEMO),
    ("train-toy-dino", demo.train_toy_dino_cmd, DEMO),
    ("train-toy-sam", demo.train_toy_sam_cmd, DEMO),
    ("train-toy-sam3", demo.train_toy_sam3_cmd, DEMO),
    ("train-toy-radio", demo.train_toy_radio_cmd, DEMO),
    ("choose-pseudo", demo.choose_pseudo_cmd, DEMO),
    ("demo-report", demo.demo_report_cmd, DEMO),
    ("benchmark", benchmark.benchmark_cmd, None),
    ("doctor", doctor.doctor_cmd, None),
    ("train-text", train_text.train_text_cmd, None),
    ("train-pgseg", pgseg.train_pgseg_cmd, None),
    ("list-methods", methods.list_methods_cmd, None),
)
for _name, _command, _panel in COMMANDS:
    # option_blocks: a block parameter becomes its options; friendly_errors: one line and exit 2 for a user's mistake
    app.command(_name, rich_help_panel=_panel, cls=Command)(friendly_errors(option_blocks(_command)))
app.command("help", cls=Command)(help_cmd)  # last in the list: `vpltool help` and `vpltool help COMMAND`


COMPLETE_VAR = "_VPLTOOL_COMPLETE"
_SHELLS = ("bash", "zsh", "fish", "powershell", "pwsh")


def _click_style_completion() -> None:
    """Accept click's spelling of the completion variable (``bash_source``, as click's docs write it) as well as
    typer's (``source_bash``): typer answered the former with "Shell source not supported"."""
    shell, _, instruction = os.environ.get(COMPLETE_VAR, "").partition("_")
    if shell in _SHELLS and instruction in ("source", "complete"):
        os.environ[COMPLETE_VAR] = f"{instruction}_{shell}"


def main() -> None:
    """The ``vpltool`` command. Its process's exit leaves what the command made to the operating system: the
    interpreter's last garbage collections over everything torch and the stage loaded are skipped (gc.freeze as
    an atexit hook; ~0.4-1 CPU-s a command on a 2-core CPU); the atexit hooks themselves all run. The command's
    files are written and closed by then, and nothing of vpltool's waits on a collection to finish."""
    import atexit
    import gc

    atexit.register(gc.freeze)
    _click_style_completion()
    app()


__all__ = ["COMMANDS", "app", "main"]
