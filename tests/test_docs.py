"""The docs and the CLI agree: docs/cli.md is the commands' own --help, every `--option` the README and docs/ quote
exists in that command, and --help reads well at 80 columns."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from vpltool.cli import reference

ROOT = Path(__file__).resolve().parent.parent
CLI_MD = ROOT / "docs" / "cli.md"
# every page a user reads for commands; cli.md is checked against --help itself, robustness.md is generated from runs
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "cli.md")]
# vpltool spells options with dashes; `--eval_only` (CLIP-ES's argparse) is another program's
OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*\*?)(?![\w])")
BENCHLIB = ROOT / "bench" / "benchlib.py"
# a script beside the package, quoted in a doc: a speed benchmark, a study, a parity runner or a doc generator
SCRIPT = re.compile(r"(\S*/)?(bench|studies|parity|docgen)/\w+\.py")
# commands of other tools whose options the docs quote (their options are theirs, not vpltool's)
FOREIGN = {"make", "pytest", "pip", "ruff", "torchrun", "iconv", "git", "nohup", "sbatch", "srun", "typer"}


def command_options(hidden: bool = True) -> dict[str, set[str]]:
    """``{command: {--option, ...}}`` from the click commands typer builds (``""`` = the root); ``hidden``: with
    the options --help does not show."""
    from typer.main import get_command

    from vpltool.cli import app

    group = get_command(app)

    def names(params) -> set[str]:
        return {o for p in params if hidden or not getattr(p, "hidden", False) for o in (*p.opts, *p.secondary_opts)}

    table = {"": names(group.params) | {"--help", "-h"}}
    for name, cmd in group.commands.items():
        table[name] = names(cmd.params) | {"--help", "-h"}
    return table


def code_spans(text: str) -> list[str]:
    """The fenced code blocks and inline code spans of a markdown page, backslash continuations joined."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
    spans = blocks + re.findall(r"``(.+?)``|`([^`\n]+)`", prose)
    spans = [s if isinstance(s, str) else s[0] or s[1] for s in spans]
    return [re.sub(r"\\\n\s*", " ", s) for s in spans]


def segments(span: str) -> list[list[str]]:
    """Each shell command of a span (lines, then `&&`, `|`, `;`) as tokens; comments dropped."""
    out = []
    for line in span.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line)
        for part in re.split(r"&&|\|\||(?<![\w-])\|(?![\w-])|;", line):
            try:
                tokens = shlex.split(part)
            except ValueError:
                tokens = part.split()
            if tokens and (assigned := re.fullmatch(r"[A-Za-z_]\w*=(.* .*)", tokens[0], flags=re.S)):
                tokens = shlex.split(assigned.group(1)) + tokens[1:]  # T="srun torchrun ...": that command
            if tokens:
                out.append(tokens)
    return out


def _known(option: str, allowed: set[str]) -> bool:
    option = option.split("=")[0]
    if option.endswith("*"):  # `--crf-*`: a family of options
        return any(a.startswith(option[:-1]) for a in allowed)
    return option in allowed


def unknown_options(page: Path, table: dict[str, set[str]]) -> list[str]:
    """``"page: --option (where)"`` for every quoted option no command (or no script) has."""
    every = set().union(*table.values())
    bad = []
    for span in code_spans(page.read_text()):
        for tokens in segments(span):
            words = [t for t in tokens if not t.startswith("$")]
            if "vpltool" in words:  # `vpltool CMD ...`, also after torchrun ... -m
                i = words.index("vpltool")
                cmd = words[i + 1] if i + 1 < len(words) and words[i + 1] in table else ""
                allowed, options, where = table[cmd], words[i + 1:], f"vpltool {cmd}".strip()
            elif script := next((w for w in words if SCRIPT.fullmatch(w)), None):
                # the script's own options, and benchlib's shared --device / --quick
                source = (ROOT / Path(script).parent.name / Path(script).name).read_text() + BENCHLIB.read_text()
                allowed = set(re.findall(r"[\"'](--[a-z][a-z0-9-]*)[\"']", source)) | {"--help"}
                options, where = words[words.index(script) + 1:], script
            elif Path(words[0]).name in FOREIGN or words[:3] == ["python", "-m", "pytest"]:
                continue
            else:  # options quoted in prose (`--dim` 256, `--flip/--no-flip`): some command must have them, up to
                # a foreign command named inside the span (an error message's "the same torchrun --nproc-per-node")
                foreign = next((i for i, w in enumerate(words) if w in FOREIGN), len(words))
                allowed, options, where = every, words[:foreign], "any command"
            for word in options:
                for option in OPTION.findall(word):
                    if not _known(option, allowed):
                        bad.append(f"{page.name}: {option} ({where}: {' '.join(tokens)[:80]})")
    return bad


def test_every_option_the_readme_and_docs_quote_exists():
    table = command_options()
    bad = [line for page in PAGES for line in unknown_options(page, table)]
    assert not bad, "options the CLI does not have:\n" + "\n".join(bad)


def test_the_option_check_catches_what_the_issue_found(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("Read with `-m/--manifest`; labels with `--labels FILE`.\n\n```bash\nvpltool predict D "
                    "--overlays X -o O\nvpltool crf C -o P --confidence 0\n```\n")
    bad = unknown_options(page, command_options())
    assert [b.split(" (")[0] for b in bad] == ["page.md: --overlays", "page.md: --manifest", "page.md: --labels"]


def test_docs_cli_md_is_the_commands_help():
    assert CLI_MD.read_text() == reference.render(), (
        "docs/cli.md is out of date: run .venv/bin/python docgen/cli_docs.py (make docs)")
    assert not re.search(r"&#x?\w+;|&lt;|&gt;|&amp;|<span", CLI_MD.read_text())  # no HTML


@pytest.mark.parametrize("command", reference.command_names())
def test_help_at_80_columns_shows_every_option_whole(command):
    """At 80 columns typer's rich panels cut names ("--rsc-temperat…") and showed flags as "<bool>"."""
    text = reference.help_text(command, width=80)
    options = command_options(hidden=False)[command]
    missing = [o for o in options if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", text)]
    assert not missing, missing
    assert "…" not in text and "<bool>" not in text
    assert not re.search(r"\[/?(dim|bold|green|red|yellow)\]|\[/\]", text), "rich markup printed as text"


def test_train_decoder_help_shows_each_recipes_defaults_and_the_cpu_recipe():
    text = " ".join(reference.help_text("train-decoder", width=200).split())
    assert "On a CPU pass --recipe cpu" in text
    for default in ("[default: 30000 (vpl/weclip/weclip+), 600 (cpu)]",
                    "[default: 320 (vpl/weclip/weclip+), 224 (cpu)]",
                    "[default: 6 (vpl), 4 (weclip/weclip+), 8 (cpu)]"):
        assert default in text, default
