"""Rows of the table of ``robustness_cases.py`` (which imports this module last) for SAM 3's region generator's
``--confidence-threshold`` (``segment --dense corrclip|ov-stitcher|textregion --region-masks sam3``): refused in one
line before any model loads where no region source has a score to keep, or where it is no probability."""

from __future__ import annotations

from collections.abc import Iterator

from robustness_cases import CORRCLIP, Workspace, _sam3_weights, case


@case("segment --dense corrclip --region-masks sam --confidence-threshold 0.1 (SAM's automatic masks have no "
      "instance score to keep: the option would do nothing)",
      "--confidence-threshold 0.1 with --region-masks sam: it keeps SAM 3's instances", "use --region-masks sam3")
def _region_threshold_without_sam3(ws: Workspace) -> Iterator[list[object]]:
    yield ["segment", ws.world, "--split", "val", "--classes", "star,circle", "-o", ws.out("out"), "--region-masks",
           "sam", "--sam-model", "toy", "--sam-weights", "none", "--confidence-threshold", "0.1", *CORRCLIP]


@case("segment --dense corrclip --region-masks sam3 --confidence-threshold 1.5 (not a probability)",
      "--confidence-threshold 1.5: must be in [0, 1]")
def _region_threshold_above_one(ws: Workspace) -> Iterator[list[object]]:
    yield ["segment", ws.world, "--split", "val", "--classes", "star,circle", "-o", ws.out("out"), "--region-masks",
           "sam3", "--sam-weights", _sam3_weights(ws), "--confidence-threshold", "1.5", *CORRCLIP]
