"""The `report` command: a browsable static HTML report of a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import ReportConfig
from .options import RUNTIME, LogFile, Verbose
from .output import progress, say

_P = ReportConfig()


def report_cmd(
    run: Annotated[Path, typer.Argument(help="A run folder (the Makefile's RUN): its extract, cam, crf and predict "
                                        "folders, metrics.json and metrics/ are shown, whichever exist.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Report folder (replaced as a whole) "
                                                "[default: RUN/report].", show_default=False)] = None,
    thumb_size: Annotated[int, typer.Option(help="Long side of the table's thumbnails, pixels.")] = _P.thumb_size,
    detail_size: Annotated[int, typer.Option(help="Long side of the detail view's image and masks, pixels.")] =
        _P.detail_size,
    quality: Annotated[int, typer.Option(help="WebP quality of thumbnails and photos (masks are lossless).")] =
        _P.quality,
    cam_grid: Annotated[int, typer.Option(help="Long side of the detail view's per-class CAMs, cells (the page "
                                          "upsamples them).")] = _P.cam_grid,
    page_size: Annotated[int, typer.Option(help="Table rows per page (the page can change it).")] = _P.page_size,
    workers: Annotated[int, typer.Option(help="Processes making thumbnails: 0 = one per CPU core.",
                                         rich_help_panel=RUNTIME)] = 0,
    log_file: LogFile = None,
    verbose: Verbose = False,
) -> None:
    """Write a static HTML report of a run: the stage table, one sortable, filterable row per image with its
    thumbnails and IoU at each stage, and a detail view per image. Opens from disk, no server, no network.

    \b
    Example:
      vpltool report runs/demo && xdg-open runs/demo/report/index.html
    """
    from ..stages.report import run_report

    cfg = ReportConfig(thumb_size=thumb_size, detail_size=detail_size, quality=quality, cam_grid=cam_grid,
                       page_size=page_size)
    with progress("report") as (on_start, on_item):
        s = run_report(run, out, cfg, workers=workers, on_start=on_start, on_item=on_item)
    splits = ", ".join(f"{name} {n}" for name, n in s.images.items())
    columns = sum(len(c) for c in s.columns.values())
    say(f"[green]✓[/] report: {sum(s.images.values())} images ({splits}), {columns} stage columns, "
        f"{s.bytes / 1e6:.1f} MB in {s.seconds:.1f} s → {s.index}")
