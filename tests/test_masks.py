"""The check every --dense method's output passes before a mask is written (vpltool.stages._masks), on tensors alone:
a clean output and the mask format's 255 pass; each damage of tests/bad_output_method.py is one line naming the
method, its plugin and the photo."""

from __future__ import annotations

import bad_output_method as bom  # tests/ is on sys.path
import pytest
import torch

from vpltool.errors import VplError
from vpltool.stages._masks import Producer, check_output


def _output(c: int = 3, h: int = 6, w: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    probs = torch.rand(c, h, w, generator=torch.Generator().manual_seed(0)).softmax(0)
    return probs, probs.argmax(0)


def test_a_clean_output_and_ignore_pass():
    probs, labels = _output()
    check_output(Producer("--dense naclip", 3), "a.png", (6, 8), probs, labels)
    labels[0, 0] = 255  # the mask format's ignore
    check_output(Producer("--dense naclip", 3), "a.png", (6, 8), None, labels.to(torch.uint8))


@pytest.mark.parametrize("damage", sorted(bom.DAMAGES))
def test_each_damage_is_one_line_naming_the_method_and_its_plugin(damage):
    probs, labels = bom.DAMAGES[damage](*_output())
    with pytest.raises(VplError) as info:
        check_output(Producer("--dense x", 3, "vpltool-x 0.1.0"), "a.png", (6, 8), probs, labels)
    line = str(info.value)
    assert line.startswith("--dense x (plugin vpltool-x 0.1.0): its output for a.png ") and "\n" not in line
    assert line.endswith("fix the plugin, or remove it (pip uninstall vpltool-x)"), line


def test_a_hook_that_returns_no_tensor_is_named():
    probs, labels = _output()
    with pytest.raises(VplError, match=r"is a ndarray of labels, not a torch tensor"):
        check_output(Producer("--dense x", 3), "a.png", (6, 8), probs, labels.numpy())
    with pytest.raises(VplError, match=r"this is a vpltool bug"):  # vpltool's own method: no plugin to fix
        check_output(Producer("--dense x", 3), "a.png", (6, 8), probs, labels.numpy())
