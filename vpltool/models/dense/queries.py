"""How CorrCLIP's, OV-Stitcher's and TextRegion's query rows become classes (``--query-merge``).

vpltool takes each class's maximum over its own queries (``max``). Those three references merge by position
(``postprocess_result``; TextRegion's ``model_semantic.py``): the softmax over the query rows, then the first
``Q - R + 1`` rows' maximum as the first class and each later row as the next class. Their own class files put
synonyms on the background's row alone, where both give the same classes; a file with synonyms on another class's
row moves every later row onto the wrong class in their code. ``reference`` repeats it, for parity.
"""

from __future__ import annotations

from typing import Any

import torch


def reference_query_class(query_class: torch.Tensor) -> torch.Tensor:
    """``[Q]`` each query's class as CorrCLIP's, OV-Stitcher's and TextRegion's code merges the rows, by position
    (their ``postprocess_result``; ``--query-merge reference``): in a class file's order (the queries of the classes
    that have any, class by class, the background's first), the first ``Q - R + 1`` rows (``R`` those classes) go
    to the first class and each later row to the next one. Where every class but the first has one query, this is
    ``query_class`` itself; a synonym on another class's row moves the rows after it onto the next classes."""
    query_class = query_class.long()
    order = torch.sort(query_class, stable=True).indices  # the class file's order: class by class, its rows kept
    rows = torch.unique(query_class)  # the classes that have queries, in order
    q, r = len(query_class), len(rows)
    position = torch.arange(q, device=query_class.device)
    owner = rows[(position - (q - r)).clamp(min=0)]  # by position: the first q - r + 1 rows to rows[0]
    out = torch.empty_like(query_class)
    out[order] = owner
    return out


def merged_probabilities(cfg: Any, logits: torch.Tensor, query_class: torch.Tensor, n_classes: int, settings: Any
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`dense_probabilities` with the run's ``--query-merge`` (``cfg.knobs.query_merge``): ``reference``
    merges the rows by position as CorrCLIP's, OV-Stitcher's and TextRegion's code (:func:`reference_query_class`);
    ``max`` (None) each class over its own rows."""
    if getattr(getattr(cfg, "knobs", None), "query_merge", None) == "reference":
        query_class = reference_query_class(query_class)
    from .segmentor import dense_probabilities

    return dense_probabilities(logits, query_class, n_classes, settings.logit_scale, settings.prob_threshold,
                               settings.area_threshold)


__all__ = ["reference_query_class", "merged_probabilities"]
