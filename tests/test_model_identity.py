"""A model whose weights come from local bytes is identified by their digest; each file is hashed once.

The CLI stories (weights replaced between two shards, or between `extract` and a later stage) are rows of
robustness_cases.py; here the mechanism: the digest cache, and the identity a record keeps.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from vpltool.errors import VplError
from vpltool.io import digests
from vpltool.models import ModelSpec
from vpltool.models.backbones.loading import registered_folder


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A private digest cache, and a count of the files actually read."""
    monkeypatch.setenv(digests.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(digests, "_MEMO", {})
    monkeypatch.setattr(digests, "RACY_S", -1.0)  # files written by the test count as settled
    reads: list[str] = []
    real = digests._hash
    monkeypatch.setattr(digests, "_hash", lambda path: reads.append(str(path)) or real(path))
    return tmp_path / "cache" / digests.CACHE_NAME, reads


def _big(path: Path, byte: int = 0) -> Path:
    path.write_bytes(bytes([byte]) * (digests.CACHED_BYTES + 10))
    return path


def test_a_large_file_is_hashed_once_and_again_only_when_it_changes(cache, tmp_path, monkeypatch):
    where, reads = cache
    f = _big(tmp_path / "w.bin")
    first = digests.sha256_file(f)
    assert digests.sha256_file(f) == first and len(reads) == 1
    monkeypatch.setattr(digests, "_MEMO", {})  # a later command: from the cache file
    assert digests.sha256_file(f) == first and len(reads) == 1 and where.is_file()
    before = os.stat(f)
    with open(f, "r+b") as fh:  # other bytes, same size, same inode, and the old modification time put back
        fh.write(b"\x01")  # (as `cp -p` does): the change time still tells
    os.utime(f, ns=(before.st_atime_ns, before.st_mtime_ns))
    monkeypatch.setattr(digests, "_MEMO", {})
    assert digests.sha256_file(f) != first and len(reads) == 2


def test_a_file_changed_moments_ago_is_not_cached_and_an_unwritable_cache_is_no_error(cache, tmp_path,
                                                                                      monkeypatch):
    where, reads = cache
    monkeypatch.setattr(digests, "RACY_S", 3600.0)  # "just written": another write could keep every stamp
    f = _big(tmp_path / "w.bin")
    digests.sha256_file(f)
    digests.sha256_file(f)
    assert len(reads) == 2 and not where.exists()
    monkeypatch.setattr(digests, "RACY_S", -1.0)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv(digests.CACHE_ENV, str(blocker / "sub"))
    assert digests.sha256_file(f).startswith("sha256:")
    monkeypatch.setenv(digests.CACHE_ENV, "")  # turned off
    assert digests.cache_file() is None and digests.sha256_file(_big(tmp_path / "x.bin", 2)).startswith("sha256:")


def _perturbed(folder: Path) -> None:
    path = folder / "open_clip_model.safetensors"
    state = load_file(path)
    key = sorted(state)[0]
    state[key] = state[key] + 0.5
    save_file(state, str(path), metadata={"format": "pt"})


def test_a_record_names_local_weights_by_content(cache, tmp_path):
    toy = registered_folder("vpltool-toy")
    folder = tmp_path / "clip"
    shutil.copytree(toy, folder)
    shipped, copy = ModelSpec("vpltool-toy").identity(), ModelSpec(f"local-dir:{folder}").identity()
    assert shipped["weights"] == copy["weights"]  # the same bytes, whatever the name
    (folder / "README.md").write_text("not part of the model")
    assert ModelSpec(f"local-dir:{folder}").identity() == copy
    ModelSpec.from_identity(copy, "feats")  # unchanged: accepted
    _perturbed(folder)
    assert ModelSpec(f"local-dir:{folder}").identity()["weights"] != copy["weights"]
    with pytest.raises(VplError) as e:
        ModelSpec.from_identity(copy, "feats")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("feats: made with the CLIP local-dir:") and "weights changed" in msg
    old = {k: v for k, v in copy.items() if k != "weights"}  # a record of an older vpltool: by path, as made
    assert ModelSpec.from_identity(old, "feats").weights is None
    shutil.rmtree(folder)
    with pytest.raises(VplError, match="not there any more"):
        ModelSpec.from_identity(copy, "feats")
    # a weights file (--pretrained FILE) too; a tag or random weights have no local bytes
    f = tmp_path / "w.safetensors"
    shutil.copy(toy / "open_clip_model.safetensors", f)
    assert ModelSpec("ViT-B-16", str(f)).identity()["weights"].startswith("sha256:")
    assert "weights" not in ModelSpec("ViT-B-16", "openai").identity()
    assert "weights" not in ModelSpec("ViT-B-16", "none").identity()


def test_identities_compare_weights_where_both_record_them():
    from vpltool.io import changed_keys, same_model

    a = {"model": "local-dir:m", "pretrained": "none", "weights": "sha256:aa"}
    b = {**a, "weights": "sha256:bb"}
    old = {"model": "local-dir:m", "pretrained": "none"}
    assert not same_model(a, b) and same_model(a, old) and same_model(a, dict(a))
    assert changed_keys({"model": a}, {"model": b}) == ["model (its weights' content)"]
    assert changed_keys({"model": old}, {"model": b}) == []  # an older record: compared by name
    assert changed_keys({"model": old}, {"model": {**b, "model": "local-dir:n"}}) == ["model"]


def test_a_local_dir_clip_through_a_symlink_or_renamed_is_the_same_model(cache, tmp_path):
    """The same bytes by another path (a symlink to the folder, the folder renamed, a --pretrained file moved)
    are the same model wherever identities are compared (a resume, the next shard, a later stage); other bytes
    under the same name are a changed input, said so, not "other parameters"."""
    from vpltool.io import by_content, changed_keys, param_changes, same_model

    folder = tmp_path / "clip"
    shutil.copytree(registered_folder("vpltool-toy"), folder)
    made = ModelSpec(f"local-dir:{folder}").identity()
    (tmp_path / "link").symlink_to(folder, target_is_directory=True)
    linked = ModelSpec(f"local-dir:{tmp_path / 'link'}").identity()
    folder.rename(tmp_path / "renamed")
    renamed = ModelSpec(f"local-dir:{tmp_path / 'renamed'}").identity()
    for other in (linked, renamed):
        assert other["model"] != made["model"] and by_content(other) == by_content(made)
        assert same_model(made, other) and param_changes({"model": made}, {"model": other}) == ([], [])
    shutil.copy(registered_folder("vpltool-toy") / "open_clip_model.safetensors", tmp_path / "w.safetensors")
    moved = ModelSpec("vpl-test-vit", str(tmp_path / "w.safetensors")).identity()
    (tmp_path / "w.safetensors").rename(tmp_path / "w2.safetensors")
    assert same_model(moved, ModelSpec("vpl-test-vit", str(tmp_path / "w2.safetensors")).identity())
    assert not same_model(moved, {**moved, "model": "ViT-B-16"})  # a file's architecture is no location
    _perturbed(tmp_path / "renamed")
    changed = ModelSpec(f"local-dir:{tmp_path / 'renamed'}").identity()
    assert not same_model(made, changed)
    settings, [(key, said)] = param_changes({"model": made}, {"model": changed})
    assert settings == [] and key == "model" and said.startswith("model ") and "its weights' content changed" in said
    assert changed_keys({"model": made}, {"model": changed}) == ["model (its weights' content)"]


def test_a_later_stage_takes_a_recorded_clip_where_it_lies_now_by_its_bytes(cache, tmp_path):
    """A record names local-dir:A; A was renamed to B. Given B (a later stage's --model), the recorded model is
    rebuilt from B when B holds the recorded bytes; a folder of other weights, or one without weights under the
    recorded name, is one line naming the folder given. A --pretrained file moved likewise."""
    folder = tmp_path / "A"
    shutil.copytree(registered_folder("vpltool-toy"), folder)
    made = ModelSpec(f"local-dir:{folder}").identity()
    folder.rename(tmp_path / "B")
    with pytest.raises(VplError, match="not there any more"):
        ModelSpec.from_identity(made, "feats")
    at = ModelSpec.from_identity(made, "feats", ModelSpec(f"local-dir:{tmp_path / 'B'}"))
    assert at.model == f"local-dir:{tmp_path / 'B'}" and at.weights == made["weights"]
    (tmp_path / "A").mkdir()  # the recorded name again, without the weights
    with pytest.raises(VplError, match=f"^local-dir:{tmp_path / 'A'}: other weights than the CLIP feats was made "
                                       "with .*no weights here"):
        ModelSpec.from_identity(made, "feats", ModelSpec(f"local-dir:{tmp_path / 'A'}"))
    # another record of the same bytes made at B since (cam's prototypes beside its features): B is taken
    at_b = ModelSpec(f"local-dir:{tmp_path / 'B'}").identity()
    assert ModelSpec.from_identity(made, "feats", also=[at_b]).model == f"local-dir:{tmp_path / 'B'}"
    with pytest.raises(VplError, match="whose weights are not there any more"):  # a record of other bytes: not
        ModelSpec.from_identity(made, "feats", also=[{**at_b, "weights": "sha256:" + "0" * 64}])  # taken
    _perturbed(tmp_path / "B")
    with pytest.raises(VplError) as e:
        ModelSpec.from_identity(made, "feats", ModelSpec(f"local-dir:{tmp_path / 'B'}"))
    assert "\n" not in str(e.value) and str(e.value).startswith(f"local-dir:{tmp_path / 'B'}: other weights")
    f = tmp_path / "w.safetensors"
    shutil.copy(registered_folder("vpltool-toy") / "open_clip_model.safetensors", f)
    moved = ModelSpec("vpl-test-vit", str(f)).identity()
    f.rename(tmp_path / "w2.safetensors")
    assert ModelSpec.from_identity(moved, "t.safetensors", ModelSpec("vpl-test-vit", str(tmp_path / "w2.safetensors"))
                                   ).pretrained == str(tmp_path / "w2.safetensors")
    with pytest.raises(VplError, match="ViT-B-16 --pretrained"):  # the same bytes on another architecture
        ModelSpec.from_identity(moved, "t.safetensors",
                                ModelSpec("ViT-B-16", str(tmp_path / "w2.safetensors")))
    tag = ModelSpec("vpl-test-vit", "none").identity()  # no local bytes: the same name only
    assert ModelSpec.from_identity(tag, "t", ModelSpec("vpl-test-vit", "none")).model == "vpl-test-vit"
    with pytest.raises(VplError, match="not the CLIP t was made with"):
        ModelSpec.from_identity(tag, "t", ModelSpec("ViT-B-16", "none"))
