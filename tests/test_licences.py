"""Every method and family declares the licence of the code it follows and of the weights it loads, where it
registers; `vpltool list-methods --licences`, `vpltool.list_methods(licences=True)` and docs/licences.md print them,
and a plugin declares its own (one that declares none is listed as undeclared)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from plugin_sites import install_example, run_with
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docgen"))


def _built_in_families() -> list[str]:
    from vpltool.models.registry import families, own_family

    # vpltool's own: a family another test of the same worker registered (basetoy, toytext) is none of them
    return [n for n in families() if own_family(n)]


def test_every_built_in_method_and_family_declares_a_licence_read_at_a_commit():
    from vpltool.config.dense import DENSE_SPECS
    from vpltool.config.licences import Licence
    from vpltool.models.registry import TEXT_FAMILIES, family, own_family

    declared = {**{f"--dense {n}": s.licence for n, s in DENSE_SPECS.items() if not s.plugin},
                **{f"text family {n}": r.licence for n, r in TEXT_FAMILIES.items() if own_family(n)},
                **{f"model family {n}": family(n).licence for n in _built_in_families()}}
    missing = [name for name, lic in declared.items() if not isinstance(lic, Licence)]
    assert not missing, f"declare a Licence where these register (vpltool/config/licences.py): {missing}"
    # a reference repository is read at a commit; only vpltool's own code names none
    unread = [n for n, lic in declared.items() if not lic.repo and "vpltool's own" not in lic.code]
    assert not unread
    assert len(declared) >= 15 + 2 + 7


def test_the_flags_a_user_asked_about():
    from vpltool import list_methods

    got = list_methods(licences=True)
    for name in ("sclip", "clearclip", "proxyclip", "sc-clip", "cass", "corrclip", "pgseg", "talk2dino"):
        assert got[name].code.startswith("none: no licence file, at commit "), name
        assert got[name].flagged, name
    assert got["sam3"].weights.startswith("SAM License") and got["activesam"].flagged
    assert got["naclip"].code == "MIT" and not got["naclip"].flagged
    assert "non-commercial" in got["pgseg"].weights  # GroupViT's release
    from vpltool.api.methods import family_licences

    fams = family_licences()
    assert "MetaCLIP: CC-BY-NC-4.0" in fams["clip"].weights and "DINOv3: DINOv3 License" in fams["dino"].weights
    assert "C-RADIOv3: NVIDIA Open Model License" in fams["dino"].weights


def test_a_licence_is_checked_where_it_is_written():
    from vpltool.config.licences import Licence, checked
    from vpltool.errors import VplError

    with pytest.raises(VplError, match="owner/name and the commit read"):
        Licence("MIT", "unknown", "CLIP", "d05afc4")
    with pytest.raises(VplError, match="owner/name and the commit read"):
        Licence("MIT", "unknown", "openai/CLIP", "main")
    with pytest.raises(VplError, match="names its code's licence"):
        Licence("MIT", "")
    with pytest.raises(VplError, match="licence= takes a vpltool.plugins.Licence, not a str"):
        checked("MIT", "--dense x")
    assert checked(None, "--dense x") is None


def test_the_docs_page_is_the_registry():
    import licences_page

    page = (ROOT / "docs" / "licences.md").read_text()
    assert page == licences_page.render(), "docs/licences.md is out of date: run python docgen/licences_page.py"
    from vpltool import list_methods

    for name in [*list_methods(), *_built_in_families()]:
        assert f"| `{name}` |" in page, name


def test_list_methods_licences_prints_each_method_and_family():
    from vpltool.cli import app

    out = CliRunner().invoke(app, ["list-methods", "--licences"], prog_name="vpltool")
    assert out.exit_code == 0, out.output
    assert "sclip  [read first]\n  code: none: no licence file, at commit b56bd30" in out.output
    assert "naclip\n  code: MIT (sinahmr/NACLIP@0cac3a6)" in out.output
    assert "model families:" in out.output and "  sam3  [read first]" in out.output
    one = CliRunner().invoke(app, ["list-methods", "sam*", "--licences"], prog_name="vpltool")
    assert one.exit_code == 0 and one.output.startswith("sam3  [read first]") and "model families" not in one.output
    plain = CliRunner().invoke(app, ["list-methods", "*clip*"], prog_name="vpltool")
    assert plain.output.split() == ["maskclip", "sclip", "clearclip", "naclip", "sc-clip", "proxyclip", "corrclip"]
    typo = CliRunner().invoke(app, ["list-methods", "naclp", "--licences"], prog_name="vpltool")
    assert typo.exit_code == 2 and "did you mean 'naclip'?" in typo.output  # never an empty listing


PLUGIN = """
import json
from typer.testing import CliRunner
from vpltool import list_methods
from vpltool.cli import app
got = list_methods("example*", licences=True)
out = CliRunner().invoke(app, ["list-methods", "--licences"]).output
print(json.dumps({"smooth": got["example-smooth"].row(), "listing": out}))
"""


def test_a_plugin_declares_its_own_and_one_that_does_not_is_undeclared(tmp_path):
    got = run_with([install_example(tmp_path)], PLUGIN)
    assert got["smooth"]["code"] == "MIT (the example's own)" and got["smooth"]["repo"] == "vpltool"
    assert "example-mean\n    code: MIT (the example's own)" in got["listing"]
    # its CLIP family declares none (register_family without licence=)
    assert "example-clip  [read first]\n    code: undeclared" in got["listing"]
