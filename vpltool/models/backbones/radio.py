"""C-RADIOv3 as NVlabs/RADIO's hub code loads it (``hubconf.py`` ``radio_model``), with its language adaptor: the
pieces RADSeg (:mod:`vpltool.models.dense.radseg`) reads beside the ``dino`` family's image tower.

* **The checkpoint** (:func:`read_checkpoint`): the file RADIO's hub entry downloads (``c-radio_v3-b_half.pth.tar``):
  a pickled dict of ``args`` (an ``argparse.Namespace``: the timm model, the teachers, the adaptor MLP version) and
  ``state_dict`` (``state_dict_ema`` when present, as the hub code prefers): the backbone under ``base_model.``,
  the input conditioner, one summary head per teacher (``_heads.<index>.``), one feature head per teacher
  (``_feature_projections.<index>.``) and, in some releases, a feature normaliser (``_feature_normalizer.``). It
  is read with ``weights_only`` (no pickled code runs; ``argparse.Namespace`` is the one class allowed besides
  tensors).
* **The backbone** (:func:`backbone_state`): RADIO's CPE ViT as timm's ``naflexvit_*_radio_v3`` holds it (the
  mapping of timm's ``_convert_radio`` and NaFlexViT's checkpoint filter, written out: the bias-free patch
  projection in NaFlexViT's (row, column, channel) order with a zero bias, the 128x128 position table as a grid,
  the first summary token as the class token and the other summary tokens and the registers as registers, the
  layer scale's ``grandma`` as ``gamma``). The ``dino`` family reads such a file through it
  (:func:`vpltool.models.backbones.dino_weights.file_weights`), so ``--proxy-weights c-radio_v3-b_half.pth.tar``
  loads anywhere a C-RADIOv3 goes.
* **The language adaptor** (:class:`AdaptorMLP`, :func:`summary_head`): the summary head of the teacher named
  ``adaptor`` (C-RADIOv3's ``siglip2``: SigLIP 2 g/16-384's image embedding), RADIO's ``MLP2`` (``mlp_version``
  ``v2``: ``fc1``, residual ``LayerNorm``-``GELU``-``Linear`` blocks, a ``LayerNorm``-``GELU``-``Linear`` head) or
  ``MLP`` (``v1``), restated; RADSeg runs it on every patch token.
* **SigLIP 2's text tower** (:class:`SigLIP2Text`): what RADIO's ``SigLIP2Adaptor`` loads, Hugging Face's model
  and processor of ``google/siglip2-giant-opt-patch16-384``, here from a local folder of that repository
  (``config.json``, ``model.safetensors``, the tokenizer's files; offline, its text half alone), each prompt
  canonicalised (big_vision's lower-case, punctuation-free text) and padded to 64 tokens, its ``pooler_output``.
  It needs ``pip install -e '.[radio]'`` in vpltool's checkout (transformers, sentencepiece).

Every file problem is one line naming the file, before any model is built.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import VplError, install_extra

RADIO_FIX = ("pass NVlabs/RADIO's checkpoint as its hub entry downloads it (e.g. c-radio_v3-b_half.pth.tar, a "
             "dict of 'args' and 'state_dict')")
TEXT_LENGTH = 64  # SigLIP2WrappedTokenizer: max_length=64, padding='max_length', truncation=True


@dataclass(frozen=True)
class RadioCheckpoint:
    """A RADIO hub checkpoint: ``args`` (the training arguments, a dict) and ``state`` (name -> tensor, or shape
    tuple when read ``shapes_only``)."""

    path: Path
    args: dict
    state: dict

    def teacher_index(self, name: str) -> int:
        """The index of teacher ``name`` in ``args['teachers']`` (its heads' key); one line for an unknown one."""
        teachers = [t.get("name") for t in self.args.get("teachers", [])]
        if name not in teachers:
            raise VplError(f"{self.path}: no adaptor {name!r}; its teachers are {', '.join(map(str, teachers))}")
        return teachers.index(name)

    def prefixed(self, prefix: str) -> dict:
        return {k[len(prefix):]: v for k, v in self.state.items() if k.startswith(prefix)}


def is_radio_file(path: str | Path) -> bool:
    """Whether ``path`` is a torch zip checkpoint holding RADIO's ``args`` beside its weights (a cheap look at the
    archive's member names; the file is not unpickled)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
        if pkl is None:
            return False
        with zipfile.ZipFile(path) as z:
            body = z.read(pkl)
    except (OSError, zipfile.BadZipFile):
        return False
    return b"argparse" in body and b"Namespace" in body


def read_checkpoint(path: str | Path, shapes_only: bool = False) -> RadioCheckpoint:
    """RADIO's hub checkpoint at ``path`` (module docstring), read with ``weights_only``; one line for anything
    else."""
    import argparse

    path = Path(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            chk = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # pickle, zip or format errors, a class outside the allowed ones
        why = " ".join(str(e).split())[:120] or type(e).__name__
        raise VplError(f"{path}: not a RADIO checkpoint readable without running pickled code ({why}); "
                       f"{RADIO_FIX}") from None
    if not isinstance(chk, dict) or "args" not in chk or not ({"state_dict", "state_dict_ema"} & set(chk)):
        raise VplError(f"{path}: not a RADIO checkpoint (no 'args' and 'state_dict'); {RADIO_FIX}")
    args = vars(chk["args"]) if isinstance(chk["args"], argparse.Namespace) else dict(chk["args"])
    state = chk["state_dict_ema"] if "state_dict_ema" in chk else chk["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise VplError(f"{path}: its state_dict holds no name -> tensor mapping; {RADIO_FIX}")
    if any("parametrizations." in k for k in state):  # spectral reparametrisation: the hub code realises it
        raise VplError(f"{path}: its weights are spectrally reparametrised (a training checkpoint); {RADIO_FIX}")
    if shapes_only:
        state = {k: tuple(v.shape) for k, v in state.items()}
    return RadioCheckpoint(path, args, state)


def backbone_state(chk: RadioCheckpoint) -> dict:
    """The backbone's tensors under timm's ``naflexvit_*_radio_v3`` names (module docstring); shapes stay shape
    tuples when ``chk`` was read ``shapes_only``."""
    out = {}
    for k, v in chk.prefixed("base_model.").items():
        if k == "patch_generator.embedder.weight":  # [C, 3 p p] in (channel, row, column) order
            shaped = isinstance(v, tuple)
            dim, p = (v[0], int(round((v[1] / 3) ** 0.5))) if shaped else (v.shape[0], int(round((v.shape[1] / 3)
                                                                                                 ** 0.5)))
            out["embeds.proj.weight"] = (dim, p * p * 3) if shaped else \
                v.reshape(dim, 3, p, p).permute(0, 2, 3, 1).reshape(dim, -1)
            out["embeds.proj.bias"] = (dim,) if shaped else v.new_zeros(dim)
        elif k == "patch_generator.pos_embed":  # [1, R * R, C] -> [1, R, R, C]
            n, dim = (v[1], v[2]) if isinstance(v, tuple) else v.shape[1:]
            side = int(round(n ** 0.5))
            out["embeds.pos_embed"] = (1, side, side, dim) if isinstance(v, tuple) else v.reshape(1, side, side, dim)
        elif k == "patch_generator.cls_token.token":  # [summary tokens + registers, C]
            out["embeds.cls_token"] = (1, 1, v[1]) if isinstance(v, tuple) else v[None, :1]
            out["embeds.reg_token"] = (1, v[0] - 1, v[1]) if isinstance(v, tuple) else v[None, 1:]
        elif k.startswith("blocks."):
            out[k.replace(".grandma", ".gamma")] = v
    return out


def feature_normalizer(chk: RadioCheckpoint) -> tuple[torch.Tensor, torch.Tensor] | None:
    """RADIO's ``FeatureNormalizer`` of the patch features, ``(mean [C], tx [C, C])``: ``(x - mean) @ tx.T``; None
    when the checkpoint has none (the hub code's identity)."""
    sd = chk.prefixed("_feature_normalizer.")
    # copies: a view would keep the whole memory-mapped checkpoint mapped, and every page of it the model's
    # loading touched resident, for as long as the model lives
    return (sd["mean"].float().clone(), sd["tx"].float().clone()) if sd else None


class AdaptorMLP(nn.Module):
    """RADIO's adaptor MLP (``radio/adaptor_mlp.py``), restated with its parameter names: ``v2`` (``MLP2``):
    ``fc1``, then per block ``x + Linear(GELU(LayerNorm(x)))``, then ``final`` = ``LayerNorm``, ``GELU``,
    ``Linear``; ``v1`` (``MLP``): ``fc1``, ``LayerNorm``, ``ReLU``, inner ``Linear``-``LayerNorm``-``ReLU``
    stacks, ``fc2``. ``[..., C_in]`` -> ``[..., C_out]``."""

    def __init__(self, version: str, dim_in: int, hidden: int, dim_out: int, inner: int):
        super().__init__()
        self.version = version
        self.fc1 = nn.Linear(dim_in, hidden)
        if version == "v2":
            self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, hidden))
                                        for _ in range(inner))
            self.final = nn.Sequential(nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, dim_out))
        elif version == "v1":
            self.norm = nn.LayerNorm(hidden)
            layers = [m for _ in range(inner) for m in (nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.ReLU())]
            self.inner = nn.Sequential(*layers) if layers else nn.Identity()
            self.fc2 = nn.Linear(hidden, dim_out)
        else:
            raise VplError(f"RADIO adaptor MLP version {version!r}: vpltool reads v1 and v2")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        if self.version == "v1":
            return self.fc2(self.inner(torch.relu(self.norm(x))))
        for block in self.blocks:
            x = x + block(x)
        return self.final(x)

    @classmethod
    def from_state(cls, version: str, state: dict, where: str) -> AdaptorMLP:
        """The MLP whose sizes ``state`` (its own parameter names) gives, loaded strictly (RADIO's
        ``create_mlp_from_state``); one line for tensors of another layout."""
        try:
            hidden, dim_in = state["fc1.weight"].shape
            out_key = "final.2.weight" if version == "v2" else "fc2.weight"
            inner_key = "blocks.{}.0.weight" if version == "v2" else "inner.{}.weight"
            inner = next(i for i in range(1000) if inner_key.format(i * (1 if version == "v2" else 3)) not in state)
            mlp = cls(version, dim_in, hidden, state[out_key].shape[0], inner)
            mlp.load_state_dict(state, strict=True)
        except (KeyError, RuntimeError, ValueError) as e:
            why = " ".join(str(e).split())[:120]
            raise VplError(f"{where}: not RADIO's {version} adaptor MLP ({why}); {RADIO_FIX}") from None
        return mlp.eval().requires_grad_(False)


def summary_head(chk: RadioCheckpoint, adaptor: str) -> AdaptorMLP:
    """The summary head (``head_mlp``) of teacher ``adaptor``: the tensors under ``_heads.<index>.`` or
    ``_heads.<name>.``, its MLP version the teacher's ``mlp_version`` or the run's."""
    index = chk.teacher_index(adaptor)
    state = chk.prefixed(f"_heads.{index}.") or chk.prefixed(f"_heads.{adaptor}.")
    if not state:
        raise VplError(f"{chk.path}: no summary head for adaptor {adaptor!r} (_heads.{index}.*); {RADIO_FIX}")
    teacher = chk.args["teachers"][index]
    version = teacher.get("mlp_version", chk.args.get("mlp_version", "v1"))
    return AdaptorMLP.from_state(version, state, f"{chk.path} (_heads.{index})")


def canonical(text: str) -> str:
    """big_vision's ``canonicalize_text`` as RADIO's SigLIP 2 tokenizer wrapper applies it: underscores to spaces,
    punctuation removed, lower case, whitespace collapsed."""
    text = text.replace("_", " ").translate(str.maketrans("", "", string.punctuation)).lower()
    return " ".join(text.split()).strip()


def _transformers():
    try:
        import transformers
    except ImportError:
        raise VplError(f"RADIO's SigLIP 2 text tower needs transformers: {install_extra('radio')}") from None
    return transformers


class SigLIP2Text:
    """SigLIP 2's text tower and tokenizer from a local Hugging Face folder (module docstring): ``encode(prompts)``
    -> ``[N, D]`` float32 ``pooler_output`` (not normalised)."""

    def __init__(self, folder: str | Path, device: torch.device | str = "cpu"):
        transformers = _transformers()
        folder = check_text_folder(folder)
        quiet, bars = transformers.logging.get_verbosity(), transformers.utils.logging.is_progress_bar_enabled()
        transformers.logging.set_verbosity_error()  # the vision tower's weights are left unread on purpose
        transformers.utils.logging.disable_progress_bar()
        try:
            config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
            model_cls = getattr(transformers, type(config.text_config).__name__.replace("Config", "Model"))
            self.model = model_cls.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, AttributeError, KeyError) as e:
            why = " ".join(str(e).split())[:160]
            raise VplError(f"{folder}: SigLIP 2's text tower and tokenizer cannot be loaded from it ({why}); pass "
                           "a local folder of google/siglip2-giant-opt-patch16-384") from None
        finally:
            transformers.logging.set_verbosity(quiet)
            if bars:
                transformers.utils.logging.enable_progress_bar()
        self.model = self.model.eval().requires_grad_(False).to(device)
        self.folder, self.device = folder, torch.device(device)
        self.dim = int(getattr(config.text_config, "projection_size", None) or config.text_config.hidden_size)

    def tokens(self, prompts: list[str]) -> dict:
        out = self.tokenizer([canonical(p) for p in prompts], return_tensors="pt", max_length=TEXT_LENGTH,
                             padding="max_length", truncation=True)
        return {k: v.to(self.device) for k, v in out.items()}

    @torch.no_grad()
    def encode(self, prompts: list[str], batch_size: int = 16) -> torch.Tensor:
        """``batch_size`` prompts at a time: at 256, the MLP of SigLIP 2 g's width (64 tokens x 4,304 a prompt) and
        transformers' tanh GELU's temporaries took 0.8 GB above the weights (bench/bench_radseg.py's worker); at 64,
        0.4 GB; at 16 about a quarter of that, and the same rows bit for
        bit (each row is its own arithmetic; MKL's kernels for 16 x 64 rows and more are those of 256 x 64:
        ``tests/test_radseg.py``). Each batch's temporaries are given back to the system after it
        (:func:`vpltool.runtime.heap.give_back_freed_memory`): kept in glibc's heap, VOC20's 1,600 prompts left it
        scattered and larger by an amount that varied from run to run, and the photos' work then grew on top of it.
        """
        from ...runtime.heap import give_back_freed_memory

        rows = []
        for i in range(0, len(prompts), batch_size):
            rows.append(self.model(**self.tokens(prompts[i:i + batch_size])).pooler_output.float())
            give_back_freed_memory()
        self.page_out()
        return torch.cat(rows) if rows else torch.zeros(0, self.dim)

    def page_out(self) -> int:
        """The tower's weights that its safetensors file backs (transformers maps an fp32 file: every tensor of the
        parity's and the fp32 release's) handed back to the kernel once the prompts are encoded
        (:func:`vpltool.io.pages.page_out`): a run encodes its query rows once, then segments without the tower, so
        its blocks' pages (126 MiB at the parity's two blocks, GBs at SigLIP 2 g's 27) and the token table's rows
        its prompts touched need not stay in the process's resident memory; a later ``encode`` reads them again
        from the file (the page cache). Copies in the process's own memory (a bf16 file converted) are left alone.
        Returns the bytes asked back (0 off Linux or where nothing is file-backed)."""
        from ...io.pages import page_out_tensors

        if self.device.type != "cpu":
            return 0
        return page_out_tensors([*self.model.parameters(), *self.model.buffers()])

    def to(self, device) -> SigLIP2Text:
        self.model.to(device)
        self.device = torch.device(device)
        return self


def check_text_folder(folder: str | Path) -> Path:
    """One line unless ``folder`` is a local folder with a model config, weights and a tokenizer."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise VplError(f"--language-model {path}: not a folder; pass a local folder of google/siglip2-giant-opt-"
                       "patch16-384 (config.json, model.safetensors, the tokenizer's files)")
    missing = [n for n in ("config.json",) if not (path / n).is_file()]
    if not any(path.glob("*.safetensors")) and not (path / "pytorch_model.bin").is_file():
        missing.append("model.safetensors")
    if not any((path / n).is_file() for n in ("tokenizer.json", "tokenizer.model", "spiece.model")):
        missing.append("tokenizer.json")
    if missing:
        raise VplError(f"--language-model {path}: lacks {', '.join(missing)}; pass a local folder of "
                       "google/siglip2-giant-opt-patch16-384 as the hub keeps it")
    _check_text_files(path)
    return path


def _check_text_files(path: Path) -> None:
    """One line for a config that is no JSON object or a weights file that safetensors cannot open (cut short, a
    download's error page): read cheaply (the JSON, the safetensors headers), before any model is built."""
    import json

    from safetensors import SafetensorError, safe_open

    redo = "re-download it from google/siglip2-giant-opt-patch16-384"
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        why = " ".join(str(e).split())[:100]
        raise VplError(f"--language-model {path / 'config.json'}: not a readable JSON file ({why}); {redo}") from None
    if not isinstance(config, dict):
        raise VplError(f"--language-model {path / 'config.json'}: not a model config (a JSON object); {redo}")
    for weights in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(weights), framework="pt") as f:
                f.keys()
        except (SafetensorError, OSError) as e:
            why = " ".join(str(e).split())[:100]
            raise VplError(f"--language-model {weights}: not a readable safetensors file ({why}); {redo}") from None


def text_width(folder: Path) -> int | None:
    """The width of the text rows a checked folder's ``config.json`` names (its ``text_config``'s
    ``projection_size``, else ``hidden_size``), read without transformers; None when it names neither."""
    import json

    text = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")).get("text_config") or {}
    width = text.get("projection_size") or text.get("hidden_size") if isinstance(text, dict) else None
    return int(width) if isinstance(width, int) else None


def describe(chk: RadioCheckpoint) -> dict[str, Any]:
    """What a run records of the checkpoint: its model, its teachers, its adaptor MLP version."""
    return {"model": chk.args.get("model"), "teachers": [t.get("name") for t in chk.args.get("teachers", [])],
            "mlp_version": chk.args.get("mlp_version")}


__all__ = ["RADIO_FIX", "RadioCheckpoint", "is_radio_file", "read_checkpoint", "backbone_state", "feature_normalizer",
           "AdaptorMLP", "summary_head", "canonical", "SigLIP2Text", "check_text_folder", "text_width", "describe",
           "TEXT_LENGTH"]
