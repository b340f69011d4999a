"""Every model file loaded from outside gets one scrutiny (io.check_weights): keys, shapes, dtypes, finite values;
a GroupViT / PGSeg release lacking a tensor is one line naming the file and the key, never a KeyError."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from vpltool.errors import VplError
from vpltool.io import check_weights


def test_the_checker_names_the_file_and_the_tensor():
    want = {"a.weight": torch.ones(2, 3), "b.bias": torch.ones(2)}  # not all zeros: that is a line of its own
    cases = [({"a.weight": torch.ones(2, 3)}, "lacks tensor 'b.bias'"),
             ({**want, "c": torch.ones(1)}, "holds tensor 'c', which this model does not have"),
             ({**want, "b.bias": torch.ones(3)}, "tensor 'b.bias' is \\[3\\], this model's is \\[2\\]"),
             ({**want, "b.bias": torch.ones(2, dtype=torch.int64)}, "tensor 'b.bias' is int64, not the float"),
             ({**want, "a.weight": torch.full((2, 3), float("inf"))}, "tensor 'a.weight' holds NaN or inf"),
             ({k: torch.zeros_like(v) for k, v in want.items()}, "every weight is 0")]
    for state, message in cases:
        with pytest.raises(VplError, match=f"^m.pth: {message}"):
            check_weights("m.pth", state, want, fix="fix it")
    check_weights("m.pth", {k: v.half() for k, v in want.items()}, want)  # fp16 weights of an fp32 model: fine


@pytest.mark.parametrize("key", ["img_encoder.patch_embed.proj.weight", "text_encoder.positional_embedding",
                                 "img_encoder.layers.0.downsample.mlp_inter.fc2.weight",
                                 "img_projector.linear_out.weight"])
def test_a_release_lacking_a_tensor_it_is_read_by_is_one_line(tmp_path, key):
    from vpltool.models.text import pgseg

    state = dict(pgseg.build_model(pgseg.tiny_config(), seed=3).state_dict())
    assert key in state
    del state[key]
    path = tmp_path / "release.pth"
    torch.save({"model": state}, path)
    with pytest.raises(VplError, match=f"release.pth: lacks tensor '{key}'") as e:
        pgseg.load_checkpoint(path)
    assert "\n" not in str(e.value)


def test_a_clip_folder_with_a_nan_weight_is_refused(tmp_path):
    from vpltool.models import ModelSpec, load_model
    from vpltool.models.backbones.loading import registered_folder

    folder = tmp_path / "clip"
    shutil.copytree(registered_folder("vpltool-toy"), folder)
    weights = folder / "open_clip_model.safetensors"
    state = load_file(weights)
    key = sorted(state)[-1]
    state[key].view(-1)[0] = float("nan")
    save_file(state, str(weights), metadata={"format": "pt"})
    with pytest.raises(VplError, match=f"clip: tensor '{key}' holds NaN or inf"):
        load_model("clip", ModelSpec(f"local-dir:{folder}"))


def test_a_loaded_clip_holds_its_own_copy_of_the_weights(tmp_path):
    """safetensors maps a file's pages into the tensors it reads: a model that kept them (fp32 weights of an fp32
    model, taken as they are) changed with the file when the file was rewritten in place during a run (and died of
    SIGBUS when it was cut short). What the registry checked and the run recorded must be what it computes with."""
    from vpltool.models import ModelSpec, load_model
    from vpltool.models.backbones.loading import registered_folder

    folder = tmp_path / "clip32"
    shutil.copytree(registered_folder("vpltool-toy"), folder)
    weights = folder / "open_clip_model.safetensors"
    save_file({k: v.float().contiguous() for k, v in load_file(weights).items()}, str(weights),
              metadata={"format": "pt"})
    model = load_model("clip", ModelSpec(f"local-dir:{folder}")).model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = weights.read_bytes()
    head = 8 + int.from_bytes(data[:8], "little")
    with open(weights, "r+b") as fh:  # the same name and size, every weight zero: written over in place
        fh.write(data[:head] + bytes(len(data) - head))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
