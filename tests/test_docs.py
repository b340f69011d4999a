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
FOREIGN = {"make", "pytest", "pip", "ruff", "torchrun", "iconv", "git", "nohup", "sbatch", "srun", "typer",
           "huggingface-cli", "hf"}


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


def _example_plugin_options() -> set[str]:
    """The options tests/plugin_example adds to `segment` and `benchmark` when it is installed (its knobs class,
    read from its light module)."""
    import sys

    sys.path.insert(0, str(ROOT / "tests" / "plugin_example"))
    try:
        from vpltool_example import SmoothKnobs
    finally:
        sys.path.remove(str(ROOT / "tests" / "plugin_example"))
    return {part for row in SmoothKnobs.rows() for part in row.option.split("/")}


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


# a word that ends a clause of a message: options after it are again the command's own
_CLAUSE_END = re.compile(r"[);]$|,$")
_PUNCT = "`'\"(),;:."


def misnamed_options(command: str, message: str, table: dict[str, set[str]]) -> list[str]:
    """``"--option (of CMD)"`` for each option an error or warning line of ``vpltool COMMAND`` names that its
    command does not have. An option belongs to ``COMMAND``, or to the vpltool command the message names just before
    it (```vpltool crf` with a lower --confidence``, ``(make-pairs --scenes)``) up to the end of that clause (``)``,
    ``;``, or a comma before a word that is not an option); one after a foreign program's name (torchrun) is
    its."""
    bad = []
    owner: str | None = command
    words = message.split()
    for i, raw in enumerate(words):
        word, after = raw.strip(_PUNCT), words[i + 1] if i + 1 < len(words) else ""
        if word in FOREIGN:
            owner = None
        elif word == "vpltool" and after.strip(_PUNCT) in table:
            owner = after.strip(_PUNCT)
        elif word == "vpltool" and after.startswith("--"):  # `vpltool --reproducible ...`: the root's own option
            owner = ""
        elif word in table and word and after.startswith("--") and not _CLAUSE_END.search(raw):
            owner = word
        for option in OPTION.findall(raw):
            if owner is not None and not _known(option, table[owner]):
                bad.append(f"{option} (of {owner})")
        if _CLAUSE_END.search(raw.rstrip("`")) and not after.startswith("--"):
            owner = command
    return bad


def test_the_hint_check_tells_another_commands_options_from_a_wrong_one():
    table = command_options()
    wrong = {  # as printed before the fix
        "predict": "error: --classes: prompt 'a zebra.': words ['zebra'] are not in the toy CLIP's vocabulary; use "
                   "it on the demo world, or change --templates / --background to those words",
        "eval": "error: seg_half: no _stage.json yet: `vpltool segment` runs in 2 shards and only shard(s) 0 "
                "finished; run the pending --shard 1/2 (or wait for them) to complete it",
        "crf": "error: x.csv: the label file dataset world was read with (--labels-file) is gone; restore it",
        "train-decoder": "error: out: pass --overwritten or choose another --out",
    }
    assert {cmd: misnamed_options(cmd, line, table) for cmd, line in wrong.items()} == {
        "predict": ["--templates (of predict)", "--background (of predict)"], "eval": ["--shard (of eval)"],
        "crf": ["--labels-file (of crf)"], "train-decoder": ["--overwritten (of train-decoder)"]}
    right = {
        "train-decoder": "error: p: every pixel is 255; re-run `vpltool crf` with a lower --confidence (default 0.95)",
        "train-toy-clip": "error: w: 4 pairs; write more (make-pairs --scenes) or lower --batch-size",
        "eval": "error: x: re-run `vpltool extract` and the stages after it with --overwrite, or pass --data D",
        "train-pgseg": "error: rank 1: re-run the same torchrun --nproc-per-node 2 with --resume",
        "report": "error: m.json: re-make it with `vpltool eval FOLDER --json m.json`",
    }
    assert {cmd: misnamed_options(cmd, line, table) for cmd, line in right.items()} == dict.fromkeys(right, [])


def test_every_option_the_readme_and_docs_quote_exists():
    table = command_options()
    for name in ("segment", "benchmark"):  # docs/architecture.md's example plugin, installed: its knobs' options
        table[name] |= _example_plugin_options()
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


def test_install_md_names_each_package_of_an_extra():
    """docs/install.md's row of each extra names every package pyproject.toml puts in it (its test row left out
    gradio, transformers and segment-anything)."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    page = (ROOT / "docs" / "install.md").read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([a-z0-9]+)` \| (.*) \|$", page, flags=re.M)}
    missing = {}
    for extra, packages in extras.items():
        names = [re.split(r"[<>=!~\[ ;]", p, maxsplit=1)[0] for p in packages]
        row = rows.get(extra, "").lower()
        missing.update({f"{extra}: {n}": row for n in names if n.lower().replace("_", "-") not in row})
    assert not missing, missing


def test_the_readme_s_toy_photo_example_runs_offline(tmp_path, monkeypatch):
    """The README's offline variant of its first photo example runs as written (the world made smaller), on the
    toy CLIP, and finds the photo's triangle and cross."""
    import numpy as np
    from typer.testing import CliRunner

    from vpltool import io
    from vpltool.cli import app

    block = next(b for b in re.findall(r"^```bash\n(.*?)^```", (ROOT / "README.md").read_text(), flags=re.S | re.M)
                 if "vpltool-toy" in b)
    lines = [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VPLTOOL_DEVICE", "cpu")
    for words in lines:
        assert words[0] == "vpltool", words
        extra = ["--train", "1", "--val", "2"] if words[1] == "make-world" else []
        r = CliRunner().invoke(app, [*words[1:], *extra])
        assert r.exit_code == 0, (words, r.output)
    found = np.unique(io.read_mask(tmp_path / "runs" / "toy" / "val_000000.png"))
    assert set(found) >= {1, 2} and (tmp_path / "runs" / "toy" / "overlays" / "val_000000.jpg").is_file()
