"""The `doctor` command: every weights file a method would load, and how to get the missing ones
(:mod:`vpltool.stages.doctor`)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..config import DEFAULT_PRETRAINED


def doctor_cmd(
    dense: Annotated[Optional[list[str]], typer.Option(
        help="A --dense method to look at (repeat it for several); none and no --model: every method.",
        show_default=False)] = None,
    model: Annotated[Optional[list[str]], typer.Option(
        help="NAME:FILE, a text-supervised family's checkpoint (pgseg:FILE, talk2dino:FILE; repeat it for several), "
        "or the CLIP the --dense methods read (an open_clip name or local-dir:DIR; at most one).",
        show_default=False)] = None,
    pretrained: Annotated[str, typer.Option(help="The CLIP's weights: an open_clip tag or a local file.")]
        = DEFAULT_PRETRAINED,
    sam3_weights: Annotated[Optional[str], typer.Option(
        help="SAM 3's weights for --dense sam3 and activesam: a facebook/sam3 folder or Meta's sam3.pt.",
        show_default=False)] = None,
    proxy_model: Annotated[Optional[str], typer.Option(help="The proxy vision model (timm's name).",
                                                       show_default=False)] = None,
    proxy_weights: Annotated[Optional[str], typer.Option(help="Its weights: hub | a local file.",
                                                         show_default=False)] = None,
    sam_model: Annotated[Optional[str], typer.Option(help="SAM's size (vit_b | vit_l | vit_h | toy).",
                                                     show_default=False)] = None,
    sam_weights: Annotated[Optional[str], typer.Option(
        help="SAM's checkpoint (Trident, --region-masks sam), or SAM 3's weights (--region-masks sam3).",
        show_default=False)] = None,
    region_masks: Annotated[Optional[str], typer.Option(
        help="CorrCLIP's, OV-Stitcher's and TextRegion's region masks (sam | sam3 | ...).", show_default=False)]
        = None,
) -> None:
    """Every weights file a method would load: its path, SHA-256, size, and whether it is there.

    The files are found through each method's and model family's own lookup; no model is loaded. A file that is
    missing is one `missing:` line saying how to get it (SAM 3: the gated facebook/sam3 folder or Meta's sam3.pt,
    read offline), and the command exits 2.

    \b
    Example:
      vpltool doctor --dense sam3 --dense activesam --sam3-weights /data/sam3
      vpltool doctor --model pgseg:runs/gv/pgseg.safetensors
      vpltool doctor                     # every --dense method, its default files
    """
    from ..api.stages import doctor
    from ..errors import VplError
    from ..stages.doctor import missing_files

    rows = doctor(dense=dense, model=model, pretrained=pretrained, sam3_weights=sam3_weights,
                  proxy_model=proxy_model, proxy_weights=proxy_weights, sam_model=sam_model,
                  sam_weights=sam_weights, region_masks=region_masks)
    for row in rows:
        typer.echo(row.line())
    missing = missing_files(rows)
    for row in missing:
        typer.echo(row.missing(), err=True)
    if missing:
        raise VplError(f"{len(missing)} weights file(s) missing (above): get each as its line says, then run "
                       "vpltool doctor again")
    if not rows:
        typer.echo("no weights file: every model of these methods is random or none", err=True)


__all__ = ["doctor_cmd"]
