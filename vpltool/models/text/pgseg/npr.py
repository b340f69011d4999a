"""PGSeg's non-learnable prototypical regularisation (NPR): prototype estimation, group-prototype matching, losses.

After Ferenas/PGSeg at 9f167cd (``models/text/pgseg.py``: ``NPR``, ``hug_match``, ``hrs``, ``closs``,
``forward_with_NPR``; ``models/transformer.py``: the text ``NPR``). Quirks of the reference are kept, since they
define the method as trained and released, and each is said where it happens:

* ``hug_match`` hands the cosine SIMILARITY to ``scipy.optimize.linear_sum_assignment`` as a cost (it minimises);
* ``hrs`` gathers, for every group ``i``, the min-max normalised similarity of group ``i`` with prototype 0 (a
  ``gather`` along the group axis with a trailing index of size 1), not the matched pair's;
* T-NPR matches the mean over channels of the stage-2 group tokens (``[B, 8, 1]``) with the text prototypes
  (``[B, 8, 1]``): after L2 normalisation over an axis of size one, both are signs;
* the image NPR's momentum update is defined but the reference never runs it (``is_training`` is never passed):
  :attr:`NPR.update_buffer` is off unless asked; the text NPR's buffer moves on every text forward, evaluation
  included (a model saved after it embedded class names holds the moved buffer, as the reference's would).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Gather = Callable[[torch.Tensor], torch.Tensor]


class ProjectMLP(nn.Module):
    """``[B, L, C]`` or ``[B, C]`` -> ``[..., out_dim]``: 1x1 Conv1d, BatchNorm1d (statistics over batch and
    tokens), ReLU, 1x1 Conv1d (GroupViT's projector; the checkpoints store Conv1d weights ``[out, in, 1]``)."""

    def __init__(self, in_dim: int = 256, inner_dim: int = 4096, out_dim: int = 256, num_layers: int = 2):
        super().__init__()
        hidden: list[nn.Module] = []
        for i in range(num_layers - 1):
            hidden += [nn.Conv1d(in_dim if i == 0 else inner_dim, inner_dim, kernel_size=1),
                       nn.BatchNorm1d(inner_dim), nn.ReLU(inplace=True)]
        self.linear_hidden = nn.Sequential(*hidden)
        self.linear_out = nn.Conv1d(in_dim if num_layers == 1 else inner_dim, out_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.ndim == 2
        if flat:
            x = x.unsqueeze(1)
        x = self.linear_out(self.linear_hidden(x.transpose(1, 2))).transpose(1, 2)
        return x.squeeze(1) if flat else x


def em_prototypes(x: torch.Tensor, mu: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``iters`` EM-like steps from prototypes ``mu`` ``[B, G, C]`` on tokens ``x`` ``[B, L, C]`` (no gradient):
    responsibilities ``z = softmax_G(x mu^T)`` normalised over tokens, ``mu = z^T x`` L2-normalised. Returns the
    last ``(z [B, L, G], mu [B, G, C])``."""
    with torch.no_grad():
        z = None
        for _ in range(iters):
            z = F.softmax(torch.matmul(x, mu.permute(0, 2, 1)), dim=-1)
            z = z / (1e-6 + z.sum(dim=1, keepdim=True))
            mu = torch.matmul(z.permute(0, 2, 1), x)
            mu = mu / (1e-6 + mu.norm(dim=2, keepdim=True))
    return z, mu


class NPR(nn.Module):
    """I-NPR of one grouping stage: prototypes of the stage's input tokens and a reconstruction of them.

    Buffer ``mu`` ``[1, G, C]``: the prototypes' starting point (random unit rows, as the reference draws them).
    ``forward(x [B, L, C])`` -> ``(mu [B, G, C]`` no gradient, ``None``, ``recon [B, L, out_dim])``: ``recon`` =
    ``mapping_x(z mu)``, added to the image tokens before grouping (gradient reaches ``mapping_x`` only).
    """

    def __init__(self, *, dim: int, out_dim: int, num_output_group: int, iters: int = 10, momentum: float = 0.9):
        super().__init__()
        self.iters, self.momentum = iters, momentum
        self.update_buffer = False  # the reference never updates it (see the module docstring)
        mu = torch.empty(1, num_output_group, out_dim).normal_(0, math.sqrt(2.0 / out_dim))
        self.register_buffer("mu", mu / (1e-6 + mu.norm(dim=2, keepdim=True)))
        self.mapping_x = ProjectMLP(in_dim=dim, out_dim=out_dim)

    def forward(self, x: torch.Tensor, gather: Gather | None = None):
        z, mu = em_prototypes(x, self.mu.repeat(x.shape[0], 1, 1), self.iters)
        recon = self.mapping_x(torch.matmul(z, mu))
        if self.update_buffer and self.training:
            self.mu = momentum_update(self.mu, mu, self.momentum, gather)
        return mu, None, recon


def momentum_update(buffer: torch.Tensor, batch: torch.Tensor, momentum: float, gather: Gather | None) -> torch.Tensor:
    """``momentum * buffer + (1 - momentum) * mean over the (gathered) batch`` of ``batch`` ``[B, ...]``."""
    full = batch if gather is None else gather(batch)
    return momentum * buffer + (1 - momentum) * full.mean(dim=0, keepdim=True)


class TextNPR(nn.Module):
    """T-NPR's text prototypes (``text_encoder.Atten``): the EOT embedding ``[N, C]`` read as ``C`` scalar tokens,
    clustered into ``G`` 1-d prototypes from buffer ``mu`` ``[1, G, 1]``. ``forward`` -> ``[N, G, 1]`` (no
    gradient); the buffer then moves by momentum towards the (gathered) batch mean, in training and in evaluation,
    as every text forward of the reference does."""

    def __init__(self, num_output_group: int = 8, iters: int = 10, momentum: float = 0.9):
        super().__init__()
        self.iters, self.momentum = iters, momentum
        mu = torch.empty(1, num_output_group, 1).normal_(0, math.sqrt(2.0 / num_output_group))
        self.register_buffer("mu", mu / (1e-6 + mu.norm(dim=1, keepdim=True)))

    def forward(self, x: torch.Tensor, gather: Gather | None = None) -> torch.Tensor:
        n, c = x.shape
        mu, x_id = self.mu.repeat(n, 1, 1), x.view(n, c, 1)
        with torch.no_grad():
            for _ in range(self.iters):
                z = F.softmax(torch.matmul(x_id, mu.permute(0, 2, 1)), dim=-1)
                z = z / (1e-6 + z.sum(dim=1, keepdim=True))
                mu = torch.matmul(z.permute(0, 2, 1), x_id)
                mu = mu / (1e-6 + mu.norm(dim=1, keepdim=True))
        self.mu = momentum_update(self.mu, mu, self.momentum, gather)  # every call, training or not (the reference)
        return mu


@torch.no_grad()
def hungarian_match(inp: torch.Tensor, target: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per image, ``linear_sum_assignment`` on the cosine similarity of ``inp`` ``[B, G, C]`` and ``target``
    ``[B, G', C]`` used as the COST (the reference's choice). Returns flat ``(batch index, target index)`` int64
    arrays of ``B * G`` entries: ``target[b, t]`` is matched with ``inp`` row ``i`` in order."""
    from scipy.optimize import linear_sum_assignment

    sim = torch.matmul(F.normalize(inp, dim=-1), F.normalize(target, dim=-1).permute(0, 2, 1)).cpu().numpy()
    cols = np.array([linear_sum_assignment(sim[i])[1] for i in range(inp.shape[0])])
    rows = np.repeat(np.arange(inp.shape[0]), inp.shape[1])
    return rows, cols.flatten()


def matched(inp: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
    """``target`` rows reordered to ``inp``'s by :func:`hungarian_match`: ``([B, G, C]``, target indices ``[B*G]``)."""
    b, t = hungarian_match(inp, target)
    return target[b, t, :].reshape(inp.shape), t


@torch.no_grad()
def hrs(sim: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """HRS selection ``[B, G]`` bool from ``sim`` ``[B, G, G]``: min-max normalise over axis 1, keep row ``i`` when
    the normalised ``sim[b, i, 0]`` exceeds ``threshold`` (the reference's gather; see the module docstring)."""
    lo, hi = sim.min(dim=1, keepdim=True)[0], sim.max(dim=1, keepdim=True)[0]
    norm = (sim - lo) / (hi - lo + 1e-6)
    return (norm[:, :, :1] > threshold).squeeze(-1)


def closs(group: torch.Tensor, proto: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric group-prototype InfoNCE over the ``G`` matched pairs of each image, rows chosen by :func:`hrs`.
    ``group``, ``proto`` ``[B, G, C]``; ``logit_scale`` the log scale (clamped at exp = 100). Scalar."""
    b, g, _ = group.shape
    labels = torch.arange(g, dtype=torch.long, device=group.device).unsqueeze(0).repeat(b, 1)
    group, proto = F.normalize(group, dim=-1), F.normalize(proto, dim=-1)
    gp = group @ proto.permute(0, 2, 1)
    pg = proto @ group.permute(0, 2, 1)
    keep_gp, keep_pg = hrs(gp), hrs(pg)
    scale = torch.clamp(logit_scale.exp(), max=100)
    gp, pg = gp.permute(0, 2, 1), pg.permute(0, 2, 1)
    return (F.cross_entropy(gp[keep_gp] * scale, labels[keep_gp])
            + F.cross_entropy(pg[keep_pg] * scale, labels[keep_pg]))


def npr_losses(stages: list[dict], text_mu: torch.Tensor, logit_scale: torch.Tensor,
               weight: float = 0.1) -> dict[str, torch.Tensor]:
    """PGSeg's ``forward_with_NPR`` losses from the encoder's stage dicts (``center`` and ``mu`` of the two grouping
    stages) and the text prototypes ``text_mu`` ``[B, G2, 1]``. Returns ``npr_stage1``, ``npr_stage2`` (I-NPR),
    ``npr_text`` (T-NPR), their total ``npr = w * (l1 + l2 + w * l3)`` (``w`` = 0.1), and the matched target
    indices (``match_stage1``, ``match_stage2``, ``match_text``: int64 ``[B*G]``, no gradient)."""
    c1, c2 = stages[0]["center"], stages[1]["center"]
    p1, idx1 = matched(c1, stages[0]["mu"])
    p2, idx2 = matched(c2, stages[1]["mu"])
    text_center = c2.mean(dim=-1, keepdim=True)
    pt, idx3 = matched(text_center, text_mu)
    l1, l2, l3 = closs(c1, p1, logit_scale), closs(c2, p2, logit_scale), closs(text_center, pt, logit_scale)
    return {"npr": weight * (l1 + l2 + weight * l3), "npr_stage1": l1, "npr_stage2": l2, "npr_text": l3,
            "match_stage1": torch.from_numpy(idx1), "match_stage2": torch.from_numpy(idx2),
            "match_text": torch.from_numpy(idx3)}
