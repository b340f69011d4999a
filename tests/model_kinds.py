"""Every model family the registry knows, as the generators draw it: a tiny clean model file of the family, the
command that reads it, and the ways a model file is damaged (test_fuzz.py's damaged-model generator).

:data:`KINDS` is keyed by family name and checked against :func:`vpltool.models.registry.families`, so that a new
family is drawn as soon as it is registered and a family with no entry here fails a test (add its row: a clean
file and a command that reads it). Each row's model is tiny and seeded (the shipped toy DINO and SAM, the toy
CLIP, a tiny PGSeg, a Talk2DINO projection over the toy backbones, a tiny random SAM 3, the workspace's decoder),
and made once per workspace.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import robustness_cases as rc

ASSETS = Path(__file__).resolve().parents[1] / "vpltool" / "assets"
TOY_DINO = ASSETS / "toy-dino" / "model.safetensors"  # timm's test_vit, trained on the demo world
TOY_SAM = ASSETS / "toy-sam" / "model.safetensors"  # --sam-model toy, a whole Sam
SEG = ["--split", "val", *rc.CPU, "--classes", "star,circle"]
# the world's photos at their own size (96 px), not the method's short side (336-448: 12-22 times the pixels): the
# generators' runs (Kind.args). The clean and the replaced model's masks still differ there for clip, dino, sam3 and
# pgseg, as at their own side (the sam row's were the same at both: checked when this was set)
SIDE = ("--short-side", "96")
# the trained toy CLIP, so that a command's masks tell one set of another family's weights from another
TOY = ["--model", "vpltool-toy", *rc.TEXT_ARGS]

# a model file damaged as a broken download, a careless edit or a copy over it leaves it
DAMAGES = ("every weight NaN", "one value NaN", "one value inf", "cut short", "a tensor missing",
           "a tensor reshaped", "another architecture", "every weight 0")
# the bytes changed under the same name: another model of the same architecture copied over the file
# ("a run and its resume": --shard 0/2, then --shard 1/2; "a kill": the run ended as kill -9 ends it, before its folder
# is finished, then the same command again)
REPLACED = ("replaced between a run and its resume", "replaced between a kill and its re-run",
            "replaced between check and load", "replaced while it loads")


@dataclass(frozen=True)
class Kind:
    """One family's generator: ``clean(ws)`` the model (a file, or a folder: ``weights`` names its file to damage),
    ``command(ws, model, out)`` the CLI arguments that read it and write ``out`` (its images split in two shards
    by ``--shard``); ``fast``: options :meth:`args` adds, the generators' runs (the same property, cheaper)."""

    clean: Callable[[rc.Workspace], Path]
    command: Callable[[rc.Workspace, Path, Path], list[object]]
    weights: str | None = None
    noise: float = 0.5  # the other model's distance (in each tensor's spread), enough that the command's masks differ
    fast: tuple[str, ...] = ()

    def weights_file(self, model: Path) -> Path:
        return model / self.weights if self.weights else model

    def args(self, ws: rc.Workspace, model: Path, out: Path) -> list[object]:
        """:attr:`command` with :attr:`fast`: what test_fuzz.py's generators run."""
        return [*self.command(ws, model, out), *self.fast]


def _once(ws: rc.Workspace, name: str, make: Callable[[Path], None]) -> Path:
    """``ws.root/kinds/name``, made by ``make(path)`` the first time."""
    path = ws.root / "kinds" / name
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        make(path)
    return path


def _toy_clip(ws: rc.Workspace) -> Path:
    from vpltool.models.backbones.loading import registered_folder

    return _once(ws, "clip", lambda p: shutil.copytree(registered_folder("vpltool-toy"), p))


def _talk2dino(ws: rc.Workspace) -> Path:
    """A Talk2DINO projection over the toy DINO (its own copy, so a damage elsewhere never touches it) and the toy
    CLIP, seeded."""
    from vpltool.models.text.family import text_family

    def make(path: Path) -> None:
        fam = text_family("talk2dino")
        dino = shutil.copy(TOY_DINO, path.parent / "talk2dino_dino.safetensors")
        cfg = fam.model_config(fam.TrainConfig.recipe_config("demo", dino_weights=str(dino), crop_size=64))
        fam.save_checkpoint(path, fam.build_model(cfg, 0))

    return _once(ws, "talk2dino.safetensors", make)


def _pgseg(ws: rc.Workspace) -> Path:
    """A tiny GroupViT / PGSeg release (``torch.save({"model": state})``, the reference's format), seeded."""
    return _once(ws, "pgseg_release.pth", lambda p: rc._pgseg_release(ws, "kinds/pgseg_release.pth", lambda s: None))


def _sam3(ws: rc.Workspace) -> Path:
    """A tiny seeded random SAM 3 in Hugging Face's layout (config.json + model.safetensors)."""
    from vpltool.models.backbones.sam3_files import write_tiny

    return _once(ws, "sam3", lambda p: write_tiny(p, "hf"))


KINDS: dict[str, Kind] = {
    "clip": Kind(_toy_clip, lambda ws, m, out: [
        "segment", ws.world, *SEG, "-o", out, "--model", f"local-dir:{m}", "--dense", "maskclip", *rc.TEXT_ARGS],
        weights="open_clip_model.safetensors", fast=SIDE),
    "dino": Kind(lambda ws: _once(ws, "dino.safetensors", lambda p: shutil.copy(TOY_DINO, p)),
                 lambda ws, m, out: ["segment", ws.world, *SEG, "-o", out, *TOY, "--dense", "proxyclip",
                                     "--proxy-model", "test_vit", "--proxy-weights", m], fast=SIDE),
    # CorrCLIP's regions from SAM's automatic mask generator: masks that move with SAM's weights (Trident's
    # affinity barely does on the toy world)
    "sam": Kind(lambda ws: _once(ws, "sam.safetensors", lambda p: shutil.copy(TOY_SAM, p)),
                lambda ws, m, out: ["segment", ws.world, *SEG, "-o", out, *TOY, "--dense", "corrclip",
                                    "--proxy-model", "test_vit", "--proxy-weights", TOY_DINO, "--region-masks", "sam",
                                    "--sam-model", "toy", "--sam-weights", m], fast=SIDE),
    # CorrCLIP's regions from SAM 3 prompted with the run's words: a tiny seeded SAM 3 in Hugging Face's layout
    "sam3": Kind(_sam3,
                 lambda ws, m, out: ["segment", ws.world, *SEG, "-o", out, *TOY, "--dense", "corrclip",
                                     "--proxy-model", "test_vit", "--proxy-weights", TOY_DINO, "--region-masks",
                                     "sam3", "--sam-weights", m], weights="model.safetensors", fast=SIDE),
    # --bg-thresh 0: every pixel a class, so that the masks tell one set of weights from another
    "pgseg": Kind(_pgseg, lambda ws, m, out: ["segment", ws.world, *SEG, "-o", out, "--model", f"pgseg:{m}",
                                              "--bg-thresh", "0"], fast=SIDE),
    "talk2dino": Kind(_talk2dino, lambda ws, m, out: ["segment", ws.world, *SEG, "-o", out, "--model",
                                                      f"talk2dino:{m}", "--short-side", "64", "--slide-crop", "0"]),
    "decoder": Kind(lambda ws: _once(ws, "decoder.safetensors",
                                     lambda p: shutil.copy(ws.decoder / "decoder.safetensors", p)),
                    lambda ws, m, out: ["predict", m, "--split", "val", "-o", out, *rc.CPU], noise=1.0),
}


def damage(path: Path, how: str, pick: int = 0, cut: float = 0.5) -> None:
    """``path`` (safetensors, or a ``torch.save`` of a state dict or of ``{"model": state}``) damaged ``how``
    (:data:`DAMAGES`), its header kept where the file is re-saved: ``pick`` chooses the tensor and the value,
    ``cut`` where a file is cut short."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    if how == "cut short":
        data = path.read_bytes()
        path.write_bytes(data[:int(len(data) * cut)])
        return
    release = path.suffix != ".safetensors"
    if release:
        saved = torch.load(path, weights_only=True)
        state, meta = (saved["model"] if "model" in saved else saved), None
    else:
        with safe_open(str(path), framework="pt") as f:
            state, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    floats = sorted(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    key = floats[pick % len(floats)]
    if how == "every weight NaN":  # H1: every floating-point tensor times NaN, the same header
        state = {k: v * float("nan") if v.is_floating_point() else v for k, v in state.items()}
    elif how == "every weight 0":  # a placeholder, or a save that wrote no values (an all-zero DINOv3 was taken)
        state = {k: v * 0 if v.is_floating_point() else v for k, v in state.items()}
    elif how == "another architecture":  # every matrix 16 wider (a text tower of another width: open_clip asserted)
        state = {k: torch.nn.functional.pad(v, (0, 16)) if v.is_floating_point() and v.ndim >= 2 else v
                 for k, v in state.items()}
    elif how == "a tensor missing":
        del state[key]
    elif how == "a tensor reshaped":
        state[key] = state[key].reshape(-1)[:-1].clone()
    else:
        state[key] = state[key].clone()
        state[key].view(-1)[pick % state[key].numel()] = float("nan" if how == "one value NaN" else "inf")
    if release:
        torch.save({**saved, "model": state} if "model" in saved else state, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=meta)


def replace_with_another(path: Path, noise: float = 0.5, seed: int = 7) -> None:
    """Another model of the same architecture saved over ``path`` (each float tensor moved by seeded noise of
    ``noise`` times its spread, the header kept): what a retrained model copied over the file looks like."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)

    def moved(t):
        if not t.is_floating_point() or t.numel() < 2:
            return t
        return (t.float() + noise * (t.float().std() + 1e-3) * torch.randn(t.shape, generator=gen)).to(t.dtype)

    if path.suffix != ".safetensors":
        saved = torch.load(path, weights_only=True)
        state = saved["model"] if "model" in saved else saved
        state = {k: moved(v) for k, v in state.items()}
        torch.save({**saved, "model": state} if "model" in saved else state, path)
        return
    with safe_open(str(path), framework="pt") as f:
        state, meta = {k: moved(f.get_tensor(k)).contiguous() for k in f.keys()}, f.metadata()
    save_file(state, str(path), metadata=meta)


def fresh_copy(ws: rc.Workspace, family: str, name: str) -> Path:
    """A private copy of ``family``'s clean model at ``ws.root/name`` (a file, with the clean one's suffix, or its
    folder)."""
    clean = KINDS[family].clean(ws)
    copy = ws.root / (name + clean.suffix)
    shutil.rmtree(copy, ignore_errors=True) if copy.is_dir() else copy.unlink(missing_ok=True)
    (shutil.copytree if clean.is_dir() else shutil.copyfile)(clean, copy)
    return copy
