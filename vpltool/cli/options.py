"""The options every command spells the same way, defined once: single options as ``Annotated`` types (``OutDir``,
``Device``, ...) and runs of options as :class:`OptionBlock` (``BATCHED``: the batched stages' runtime options), with
:func:`runtime` turning the runtime options into a :class:`vpltool.config.RuntimeConfig`. The dense methods' knobs are
in :mod:`.dense_options`. Defaults come from :mod:`vpltool.config`; ``--help`` shows them.
"""

from __future__ import annotations

import functools
import inspect
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import CPU_WORKERS, GPU_WORKERS, WORKERS_MIN_IMAGES, RuntimeConfig
from ..errors import VplWarning

RUNTIME, MODEL = "Runtime", "Model"
_R = RuntimeConfig()

# ---- option types, spelled the same on every stage
OutDir = Annotated[Path, typer.Option("--out", "-o", help="Output folder (created; finished items are skipped).")]
class _FolderSpelling(type(Path())):  # type: ignore[misc]
    """A file option's value written with a trailing ``/`` (``-o out/``): a folder, which pathlib would forget."""


class _EmptySpelling(type(Path())):  # type: ignore[misc]
    """A file option given as ``''``: pathlib reads it as ``.``, the current folder, which it is not."""


def file_path(value: str | Path) -> Path:
    """The parser of every option that names a file: keeps the facts ``Path`` drops, a trailing slash and an empty
    value (:func:`friendly_errors` refuses both: ``text-prototypes -o dir/`` wrote a file named ``dir``, and
    ``--plot ''`` was "``.``: is a folder"). A default is already a Path."""
    if isinstance(value, Path):
        return value
    if not value.strip():
        return _EmptySpelling(".")
    return _FolderSpelling(value) if value.endswith(("/", os.sep)) else Path(value)


# examples of a file name per file option, for the message of a value that names a folder
_FILE_OPTIONS = {"out": ("--out", "out.safetensors"), "json_out": ("--json", "result.json"),
                 "plot": ("--plot", "loss.png"), "log_file": ("--log", "vpltool.log")}
OutFile = Annotated[Path, typer.Option("--out", "-o", parser=file_path, metavar="<path>",
                                       help="Output file (written atomically).")]
Device = Annotated[str, typer.Option(envvar="VPLTOOL_DEVICE", help="auto | cpu | cuda | cuda:N",
                                     rich_help_panel=RUNTIME)]
Precision = Annotated[str, typer.Option(help="Frozen blocks: auto (the dtype the command's inputs record, where "
                                        "they record one: features, CAMs, masks; else bf16 on CUDA and on CPUs with "
                                        "AMX, fp32 otherwise) | fp32 | bf16 | fp16 (CUDA only).",
                                        rich_help_panel=RUNTIME)]
BatchSize = Annotated[Optional[int], typer.Option(
    help="Images per batch (equal input sizes are batched) [default: auto: 32 on CUDA, halved on out-of-memory; on "
    "a CPU 8 for extract, 1 for cam and predict].", show_default=False, rich_help_panel=RUNTIME)]
Shard = Annotated[Optional[str], typer.Option(help="Process shard i of n (i/n) so GPUs/machines split one dataset; "
                                              "the folder completes when every shard is done [default: the whole "
                                              "dataset; under torchrun RANK of WORLD_SIZE].", show_default=False,
                                              rich_help_panel=RUNTIME)]
Workers = Annotated[Optional[int], typer.Option(
    help="Parallel image decoders / data-loading processes: 0 = one per CPU core (more are capped at the cores), "
    f"1 = in this process [default: auto: {CPU_WORKERS}; on CUDA one per core up to {GPU_WORKERS} for the loaders of "
    f"extract, cam, predict, diagnose and train-decoder; a run of fewer than {WORKERS_MIN_IMAGES} images runs in this "
    "process].",
    show_default=False, rich_help_panel=RUNTIME)]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Redo finished items instead of skipping them "
                                         "(a per-image stage run in one piece keeps its last result until the new "
                                         "one is complete).",
                                         rich_help_panel=RUNTIME)]
OverwriteFile = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file that vpltool did "
                                             "not write, or wrote as another kind (a file of the kind this command "
                                             "writes is replaced anyway).", rich_help_panel=RUNTIME)]
LogFile = Annotated[Optional[Path], typer.Option("--log", envvar="VPLTOOL_LOG", rich_help_panel=RUNTIME,
                                                 parser=file_path, metavar="<path>",
                                                 help="Also append progress and the result line to this file.")]
JsonFile = Annotated[Optional[Path], typer.Option("--json", parser=file_path, metavar="<path>",
                                                  help="Write the full result as JSON here.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.", rich_help_panel=RUNTIME)]
Resume = Annotated[bool, typer.Option("--resume", help="Continue from OUT/checkpoints/last.safetensors (a fresh start "
                                      "when there is none).")]
Split = Annotated[Optional[str], typer.Option("--split", "-s", help="Dataset split (VOC: train, train_aug, val; "
                                              "generic: splits/<name>.txt). Default: the layout's default.")]
ModelOpt = Annotated[str, typer.Option("--model", help="open_clip architecture, local-dir:/path, or vpltool-toy "
                                       "(the demo world's toy CLIP).", rich_help_panel=MODEL)]
PretrainedOpt = Annotated[str, typer.Option("--pretrained", help="open_clip tag (openai), a local weights file, "
                                            "or none (random).", rich_help_panel=MODEL)]
ModelConfigDir = Annotated[Optional[Path], typer.Option("--model-config-dir", envvar="VPLTOOL_MODEL_CONFIGS",
                                                        hidden=True, help="Extra open_clip JSON model configs.")]
# the --dense size options that `cam --dense` and `predict --classes --dense` share (segment's own are spelled as the
# methods' configs spell them: --short-side, --slide-crop, --slide-stride)
DenseSide = Annotated[Optional[int], typer.Option(help="--dense: resize to this short side [default: the method's].",
                                                  show_default=False)]
DenseCrop = Annotated[Optional[int], typer.Option(help="--dense: sliding window side (0 = whole image) [default: the "
                                                  "method's].", show_default=False)]
DenseStride = Annotated[Optional[int], typer.Option(help="--dense: sliding window stride [default: the method's].",
                                                    show_default=False)]


class OptionBlock:
    """A run of options that several commands take in the same order, defined once.

    A command takes the block as ONE parameter whose default is the block (``run: dict = BATCHED``) and is decorated
    with :func:`option_blocks`: its ``--help`` lists the block's options at that place, and the body gets them as a
    dict under the parameter's name (``runtime(**run)``).
    """

    def __init__(self, *options: tuple[str, object, object], plugins: dict[str, str] | None = None):
        self.options = tuple(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=kind,
                                               default=default) for name, kind, default in options)
        # the options a plugin's row made (name -> its distribution): one that a command already spells otherwise
        # is left out, with one line naming the plugin (:func:`option_blocks`), never a broken command line
        self.plugins = dict(plugins or {})


def option_strings(param: inspect.Parameter) -> set[str]:
    """The strings a command-line parameter answers to (``--stretch``, ``--no-stretch``, ``-o``), and its name."""
    infos = [m for m in getattr(param.annotation, "__metadata__", ()) if isinstance(m, typer.models.ParameterInfo)]
    # in an Annotated option, typer takes a first string (Option("--out", "-o")) as a declaration, kept as default
    decls = [d for info in infos for d in ([info.default] if isinstance(info.default, str) and
                                           info.default.startswith("-") else []) + list(info.param_decls or ())]
    names = {part.strip() for d in decls for part in d.split("/") if part.strip()} if decls else {
        f"--{param.name.replace('_', '-')}"}
    return names | {param.name}


# the batched stages' runtime options (extract, cam, segment, predict), in the order their --help lists them;
# `runtime(**run)` takes them as they are
BATCHED = OptionBlock(("device", Device, _R.device), ("precision", Precision, _R.precision),
                      ("batch_size", BatchSize, _R.batch_size), ("workers", Workers, _R.workers),
                      ("overwrite", Overwrite, False))


def option_blocks(fn: Callable) -> Callable:
    """Spell out the :class:`OptionBlock` parameters of command ``fn`` as their options (typer reads
    ``__signature__``), and hand each block's values back to ``fn`` as a dict under the block parameter's name."""
    signature = inspect.signature(fn, eval_str=True)
    params, blocks = [], {}
    for param in signature.parameters.values():
        if not isinstance(param.default, OptionBlock):
            params.append(param)
    taken = set().union(*(option_strings(p) for p in params))
    params = []
    for param in signature.parameters.values():
        if isinstance(param.default, OptionBlock):
            kept = [o for o in param.default.options if _kept(o, param.default.plugins.get(o.name), taken, fn)]
            blocks[param.name] = [option.name for option in kept]
            params.extend(kept)
        else:
            params.append(param)

    @functools.wraps(fn)
    def command(*args, **kwargs):
        for name, options in blocks.items():
            kwargs[name] = {option: kwargs.pop(option) for option in options}
        return fn(*args, **kwargs)

    command.__signature__ = signature.replace(parameters=params)
    # the annotations as evaluated objects (the signature's, eval_str above): typer reads them with
    # typing.get_type_hints each time it builds the command line (every `vpltool` start, every CliRunner call), and
    # evaluating this module's string annotations again cost ~0.1 CPU-s a build
    command.__annotations__ = {p.name: p.annotation for p in params if p.annotation is not inspect.Parameter.empty}
    if signature.return_annotation is not inspect.Signature.empty:
        command.__annotations__["return"] = signature.return_annotation
    return command

def _kept(option: inspect.Parameter, plugin: str | None, taken: set[str], fn: Callable) -> bool:
    """Whether a block's option stays: a plugin's that the command already answers to is left out, in one line."""
    clash = option_strings(option) & taken
    if not clash:
        taken.update(option_strings(option))
        return True
    if plugin is None:  # vpltool's own: a bug of its option tables, never to be hidden
        raise TypeError(f"{fn.__name__}: option {sorted(clash)[0]} is spelled twice")
    from ..plugins.entry_points import problem, uninstall_hint

    problem(f"plugin {plugin}: its option {sorted(clash)[0]} is already one of vpltool's; it is left out (the "
            f"method runs with its default): rename it in the plugin's knobs class{uninstall_hint(plugin)}")
    return False


def runtime(device: str = _R.device, precision: str = _R.precision, batch_size: int | None = _R.batch_size,
            workers: int | None = _R.workers, overwrite: bool = False) -> RuntimeConfig:
    """The shared options as a :class:`RuntimeConfig`; ``--workers`` above the CPU cores this process may use is
    capped at them, and said so (one process per batch helps nothing and exhausts memory)."""
    from ..config import worker_count

    cores = worker_count(0)
    if workers is not None and workers > cores:
        warnings.warn(VplWarning(f"--workers {workers}: more than the {cores} CPU core(s) this process may use; "
                                 f"using {cores}"), stacklevel=2)
        workers = cores
    return RuntimeConfig(device=device, precision=precision, batch_size=batch_size, workers=workers,
                         overwrite=overwrite)


def warn_inert(cfg, defaults=None):
    """One warning per option given that has no effect in ``cfg``'s combination (never recorded either:
    :func:`vpltool.config.inert_fields`); returns ``cfg``."""
    from ..config import inert_options

    for sentence in inert_options(cfg, defaults):
        warnings.warn(VplWarning(sentence), stacklevel=2)
    return cfg
