"""RADSeg's files, checked before any model is built: the RADIO checkpoint with its language adaptor and SigLIP 2's
text folder (one line each, naming the file and the fix), and the text folder named in the run's ledger of model
files by content."""

from __future__ import annotations

from ....errors import VplError


def _head_bytes(path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(9)


def checked_files(cfg, adaptor: str):
    """The run's RADIO checkpoint, its ``adaptor`` head and SigLIP 2 folder, checked (one line each), before any
    model is built."""
    import zipfile
    from pathlib import Path

    from ....io import is_regular_file
    from ...backbones.radio import check_text_folder, is_radio_file, read_checkpoint, summary_head, text_width

    if cfg is None:
        raise VplError("--dense radseg runs on C-RADIOv3 and SigLIP 2's text tower: run it through segment or "
                       "vpltool.segmenter with --proxy-weights and --language-model")
    weights = cfg.proxy_weights
    if weights not in ("hub", "none") and not is_regular_file(Path(weights).expanduser()):
        raise VplError(f"{weights}: RADIO checkpoint not found; pass an existing file to --proxy-weights "
                       "(NVlabs/RADIO's, e.g. c-radio_v3-b_half.pth.tar)")
    if weights not in ("hub", "none") and not zipfile.is_zipfile(Path(weights).expanduser()) \
            and _head_bytes(Path(weights).expanduser())[8:9] != b"{":  # neither torch's zip nor safetensors
        raise VplError(f"{weights}: not a torch checkpoint (no zip archive: cut short, or another format); "
                       "re-download NVlabs/RADIO's checkpoint (e.g. c-radio_v3-b_half.pth.tar) for --proxy-weights")
    if weights in ("hub", "none") or not is_radio_file(weights):
        raise VplError(f"--dense radseg --proxy-weights {weights}: give NVlabs/RADIO's checkpoint (e.g. "
                       "c-radio_v3-b_half.pth.tar, as its hub entry downloads it): the language adaptor RADSeg "
                       "reads is in it, beside the backbone")
    language = getattr(cfg.knobs, "language_model", None)
    if language is None:
        raise VplError("--dense radseg needs SigLIP 2's text tower: pass --language-model, a local folder of "
                       "google/siglip2-giant-opt-patch16-384")
    chk = read_checkpoint(cfg.proxy_weights)
    head = summary_head(chk, adaptor)
    folder = check_text_folder(language)
    check_widths(chk, adaptor, head, folder, text_width(folder))
    return chk, head, folder


def check_widths(chk, adaptor: str, head, folder, rows: int | None) -> None:
    """One line unless the adaptor head's output is as wide as the text tower's rows (``rows``; None: unknown)."""
    width = head.final[-1].out_features if head.version == "v2" else head.fc2.out_features
    if rows is not None and width != rows:
        raise VplError(f"{chk.path}: its {adaptor} head maps patches to {width}-d rows, "
                       f"--language-model {folder}'s text rows are {rows}-d; pass the text tower of that adaptor's "
                       "teacher")


def note_text_files(folder) -> None:
    """SigLIP 2's text tower (its own loader, no registry family) named in the run's ledger of model files by
    content (:func:`vpltool.io.reads.note`), as the registry's door names every family's."""
    from pathlib import Path

    from ....io.reads import note

    note(sorted(p for p in Path(folder).iterdir() if p.is_file()))
