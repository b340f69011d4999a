"""Rows of the table of ``robustness_cases.py`` (which imports this module last) for SAM 3's Meta ``sam3.pt`` cut
short while it loads straight into half precision (``segment --dense sam3 --precision bf16``): its storages are read
by plain reads, never mapped, so the short read is one line naming the file and the fix, exit 2, nothing written
(a mapped read past the file's new end ended the process with SIGBUS)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

from robustness_cases import Workspace, _sam3_args, case


@case("segment --dense sam3 --precision bf16 with a sam3.pt cut to half its size while its tensors are read",
      "sam3_cut_while_read.pt: cut short while it was read", "Pass the whole file")
def _sam3_cut_while_read(ws: Workspace) -> Iterator[list[object]]:
    from vpltool.models.backbones import sam3_files

    # the file lies outside the workspace (a link to it inside): its cut is the other process's doing, not a change
    # the run left; written again each run
    outside = Path(tempfile.mkdtemp(prefix="sam3_cut_"))
    path = sam3_files.write_tiny(outside / "sam3.pt", "meta")
    link = ws.root / "sam3_cut_while_read.pt"
    if not link.is_symlink():
        link.symlink_to(path)
    read = sam3_files.read_at

    def cut_after_first(fh, offset, into):  # another process truncating the file between two tensors
        os.truncate(path, path.stat().st_size // 2)
        return read(fh, offset, into)

    with mock.patch.object(sam3_files, "read_at", cut_after_first):
        yield _sam3_args(ws, "sam3", "seg_sam3_cut_while_read", "--sam3-weights", link, "--precision", "bf16")
    shutil.rmtree(outside)
