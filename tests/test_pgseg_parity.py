"""parity/pgseg_parity.py without the clone: its plumbing (``--quick``: vpltool against itself, then a reference
changed on purpose), the runner's stubs, and the committed JSON's figures against the bars."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "parity"), str(ROOT / "bench")]

import pgseg_parity  # noqa: E402
import pgseg_ref_runner  # noqa: E402

RESULT = ROOT / "parity" / "results" / "pgseg_parity.json"


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One ``--quick`` run (2 photos, tiny model): its JSON and the reference dict it compared."""
    import io
    from contextlib import redirect_stdout

    work = tmp_path_factory.mktemp("pgseg_parity")
    buf = io.StringIO()
    with redirect_stdout(buf):
        pgseg_parity.main(["--quick", "--work", str(work)])
    inputs = torch.load(work / "inputs.pt")
    return json.loads(buf.getvalue()), work, inputs


def test_quick_self_comparison_is_exact(quick):
    result, _, _ = quick
    assert result["quick"] is True and result["tokens_equal"]
    assert all(v == 0.0 for v in result["eval"].values())
    train = result["train"]
    for key in ("npr_prototypes", "group_centers", "text_prototypes", "closs", "npr_loss", "contrastive_loss",
                "total_loss", "grads", "after_adamw_step"):
        assert train[key] == 0.0, key
    assert train["matched_pairs_equal"] and train["grad_params_same"] and train["state_keys_same"]
    assert result["zero_shot"]["labels_equal"] == 1.0 and all(result["bar_met"].values())


def test_a_changed_reference_shows_up_in_each_figure(quick):
    _, work, inputs = quick
    ckpt = work / "ref" / "ref_checkpoint.pth"
    ref = pgseg_parity.self_reference(work, inputs)
    vt = pgseg_parity.vpltool_side(ckpt, inputs, ref["tokens"], ref["class_tokens"])
    internals = pgseg_parity.vpltool_train_internals(ckpt, inputs["images"], ref["tokens"])
    bad = copy.deepcopy(ref)
    bad["eval"]["maps"][1]["soft"][0, 0, 0, 0] += 1e-3
    bad["train"]["grads"]["logit_scale"] = bad["train"]["grads"]["logit_scale"] + 1e-3
    bad["train"]["match"][0] = bad["train"]["match"][0].flip(0)
    bad["train"]["closs"][2] = torch.tensor(float("nan"))  # NaN on one side only
    bad["zero_shot"]["photos"][0]["labels"] = bad["zero_shot"]["photos"][0]["labels"] + 1
    out = pgseg_parity.compare(bad, vt, internals)
    assert out["eval"]["maps"] == pytest.approx(1e-3, rel=1e-3) and not out["bar_met"]["eval"]
    assert out["train"]["grads"] == pytest.approx(1e-3, rel=1e-3) and out["train"]["grad_worst_param"] == "logit_scale"
    assert not out["train"]["matched_pairs_equal"] and out["train"]["closs"] == float("inf")
    assert not out["bar_met"]["train"]
    assert out["zero_shot"]["labels_equal"] < 1.0 and out["zero_shot"]["labels_equal_min_photo"] == 0.0


def test_nan_in_the_same_place_on_both_sides_compares_equal():
    nan = float("nan")
    assert pgseg_parity.max_abs(torch.tensor([1.0, nan]), torch.tensor([1.5, nan])) == 0.5
    assert pgseg_parity.max_abs(torch.tensor([1.0, nan]), torch.tensor([1.0, 2.0])) == float("inf")
    assert pgseg_parity.max_abs(torch.zeros(2), torch.zeros(3)) == float("inf")


def test_runner_stubs_give_the_one_process_collective():
    saved = {k: sys.modules.get(k) for k in ("mmcv", "mmcv.utils", "mmcv.image", "mmseg", "mmseg.models",
                                             "omegaconf", "matplotlib", "matplotlib.pyplot", "diffdist",
                                             "diffdist.functional", "utils")}
    import torch.distributed as dist

    world, rank = dist.get_world_size, dist.get_rank
    try:
        pgseg_ref_runner.install_stubs()
        x = torch.randn(3, 2, requires_grad=True)
        assert sys.modules["diffdist.functional"].all_gather([torch.zeros_like(x)], x)[0] is x
        assert dist.get_world_size() == 1 and dist.get_rank() == 0
        registry = sys.modules["mmcv.utils"].Registry("m")

        @registry.register_module()
        class Thing:
            def __init__(self, a):
                self.a = a

        assert registry.build({"type": "Thing", "a": 3}).a == 3
    finally:
        dist.get_world_size, dist.get_rank = world, rank
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def test_committed_result_meets_the_bars():
    result = json.loads(RESULT.read_text())
    assert result["benchmark"] == "pgseg-parity" and result["quick"] is False
    assert result["reference"].startswith("Ferenas/PGSeg@9f167cd") and result["images"] == 12
    assert result["tokens_equal"]
    bar = result["bars"]["max_abs_diff"]
    assert bar == 1e-5 and max(result["eval"].values()) <= bar
    train = result["train"]
    for key in ("npr_prototypes", "group_centers", "text_prototypes", "closs", "npr_loss", "contrastive_loss",
                "total_loss", "grads", "after_adamw_step"):
        assert train[key] <= bar, key
    assert train["matched_pairs_equal"] and train["grad_params_same"] and train["state_keys_same"]
    assert result["zero_shot"]["labels_equal"] >= 0.999
    slide = result["zero_shot_slide"]  # mmseg's sliding window, as the reference's VOC config evaluates
    assert (slide["crop"], slide["stride"]) == (448, 224) and slide["labels_equal"] >= 0.999
    assert slide["logits"] <= bar
    groupvit = result["groupvit"]  # npr=False against NVlabs/GroupViT's own code and checkpoint layout
    assert groupvit["reference"].startswith("NVlabs/GroupViT") and groupvit["key_map_npr_inferred"] is False
    assert max(groupvit["eval"].values()) <= bar
    assert max(groupvit["train"][k] for k in ("contrastive_loss", "grads", "after_adamw_step")) <= bar
    assert all(result["bar_met"].values()) and set(result["bar_met"]) >= {"eval", "train", "zero_shot",
                                                                          "zero_shot_slide", "groupvit"}
