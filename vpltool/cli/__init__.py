"""The `vpltool` command line: a thin typer layer over the library, one function per command, assembled here.

Each command is a plain function in the module of its stage (:mod:`.pipeline`, :mod:`.cam`, :mod:`.segment`,
:mod:`.training`, :mod:`.report`, :mod:`.app`, :mod:`.demo`, :mod:`.benchmark`, :mod:`.train_text`,
:mod:`.pgseg`, :mod:`.sam_pseudo`, :mod:`.doctor`); what they share is split by job:
:mod:`.options` (option types and blocks, with the dense methods' in :mod:`.dense_options`), :mod:`.errors` (one-line
errors, signals, ranks) and :mod:`.output` (lines, progress, ``--log``). Heavy imports happen inside the commands, so
``vpltool --help`` stays fast.
"""

from __future__ import annotations

import os

from ..plugins import entry_points

# the options below are made from the method tables, the plugins' rows with them: a broken plugin's line is shown
# per command, as one warning line (friendly_errors), not by Python's display while this module imports
entry_points.hold_warnings()

from . import app as app_command  # noqa: E402
from . import (  # noqa: E402
    benchmark,
    cam,
    demo,
    doctor,
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
    ("app", app_command.app_cmd, None),
    ("make-world", demo.make_world_cmd, DEMO),
    ("make-pairs", demo.make_pairs_cmd, DEMO),
    ("train-toy-clip", demo.train_toy_clip_cmd, DEMO),
    ("train-toy-dino", demo.train_toy_dino_cmd, DEMO),
    ("train-toy-sam", demo.train_toy_sam_cmd, DEMO),
    ("choose-pseudo", demo.choose_pseudo_cmd, DEMO),
    ("demo-report", demo.demo_report_cmd, DEMO),
    ("benchmark", benchmark.benchmark_cmd, None),
    ("doctor", doctor.doctor_cmd, None),
    ("train-text", train_text.train_text_cmd, None),
    ("train-pgseg", pgseg.train_pgseg_cmd, None),
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
    _click_style_completion()
    app()


__all__ = ["COMMANDS", "app", "main"]
