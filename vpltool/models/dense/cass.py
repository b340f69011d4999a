"""CASS (``--dense cass``; MICV-yonsei/CASS): spectral key-graph matching with a proxy DINO, and an object-presence
text shift.

The last block's attention blends, head by head, CLIP's key graph with a low-rank copy of the matched DINO head's
(:class:`SpectralMatching`, :func:`spectral_key_attention`, the feature hook :func:`spectral_features`); the
segmentor's logits of a window move each query cluster's best query toward its top patches and blend in the image
embedding (:class:`TextShift`, :func:`object_presence_logits`, the segmentor hooks :func:`grid_logits` and
:func:`input_embedding`). Its per-dataset knobs (``--global-weight``, ``--shift-weight``, ``--cluster-cut``,
``--stretch``, ``--window-global``) enter through :func:`with_knobs`. Its segmentor settings, proxy model and knob
names are the spec table's (:data:`vpltool.config.dense.DENSE_SPECS`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import VplError
from ..backbones.onednn import f_linear
from .hooks import DenseHooks
from .mixing import DenseMixing, neighbourhood_bias


@dataclass(frozen=True)
class SpectralMatching:
    """CASS's spectral key-graph matching (MICV-yonsei/CASS ``clip/model.py``, ``attn_strategy='spectral'``): per
    head the top ``k_eigen`` eigenvalues of CLIP's and the proxy DINO's key-key graphs are compared, heads matched
    by a Hungarian assignment, and each CLIP graph blended with a low-rank, rescaled copy of its DINO graph.

    Attributes:
        k_eigen: eigenvalues compared per head (``custom_attn``'s config, 20).
        scale_factor: weight of the DINO graph (10.0).
        energy_threshold, initial_q, step_q: ``optimal_q``'s search of the rank of ``torch.svd_lowrank``
            (0.95, 10, 5; the first rank always passes, as coded: the energy is that of the rank's own values).
        stretch: CASS's ``_scale_singular_values`` for every dataset but VOC20 and Cityscapes: the singular values
            mapped linearly from ``[min, max]`` to ``[0.5 min, 1.5 max]``; False: kept (``voc20``, ``city_scapes``).
        seed: the seed of the randomised SVD's basis, set before each window (CASS draws it from the global
            generator: its result depends on what ran before; here each window is reproducible alone).
    """

    k_eigen: int = 20
    scale_factor: float = 10.0
    energy_threshold: float = 0.95
    initial_q: int = 10
    step_q: int = 5
    stretch: bool = True
    seed: int = 0



@dataclass(frozen=True)
class TextShift:
    """CASS's object-presence text shift (``cass_segmentor.py`` ``hierarchical_prompt``): the queries are grouped
    by Ward clustering of their cosine distances (cut at ``h_threshold``); in each group the query closest to the
    image's CLIP embedding moves ``mean_vector_weight`` of the way to the mean of its ``top_k`` most similar patch
    features; the patch logits are then ``(1 - w) cos + w`` the image embedding's cosine, ``w`` =
    ``global_weight``. The defaults are ``configs/cfg_voc21.py``'s.

    Attributes:
        global_weight: ``global_semantics_weight`` (0.1).
        mean_vector_weight: the shift (0.03).
        h_threshold: the Ward cut (0.10).
        top_k: patches averaged (2).
        window_global: the image embedding of each window itself (CASS's ``city_scapes``); False: of the whole
            input (every other dataset; with ``--slide-crop 0`` both are the same).
    """

    global_weight: float = 0.1
    mean_vector_weight: float = 0.03
    h_threshold: float = 0.10
    top_k: int = 2
    window_global: bool = False


# CASS cass_segmentor.py + base_config.py + cfg_voc21.py: arch 'reduced', attn_strategy 'spectral', std 5
PRESET = DenseMixing("cass", "spectral", False, False, "bicubic-dino", gaussian_std=5.0,
                     spectral=SpectralMatching(), text_shift=TextShift())
# --knob (SegmentConfig field) -> its TextShift field
_SHIFT_KNOBS = {"global_weight": "global_weight", "shift_weight": "mean_vector_weight", "cluster_cut": "h_threshold",
                "window_global": "window_global"}


def with_knobs(mixing: DenseMixing, knobs: dict) -> DenseMixing:
    """``mixing`` with CASS's per-dataset knobs given (SegmentConfig fields of the spec's ``knobs``, None left out)
    in its text shift and matching."""
    shift = {_SHIFT_KNOBS[k]: v for k, v in knobs.items() if k in _SHIFT_KNOBS}
    return replace(mixing, text_shift=replace(mixing.text_shift, **shift),
                   spectral=replace(mixing.spectral, stretch=knobs.get("stretch", mixing.spectral.stretch)))


# from CLIP-normalised pixels, before the uint8 round trip that feeds its DINO
_CASS_UNDO_MEAN = (-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.255)
_CASS_UNDO_STD = (1 / 0.229, 1 / 0.224, 1 / 0.255)


def cass_proxy_input(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float], patch: int) -> torch.Tensor:
    """CASS's DINO input from one window: ``[3, H, W]`` CLIP-normalised pixels -> ``[1, 3, s', s']`` float32
    normalised with the proxy's ``mean`` / ``std``, on the host.

    As ``forward_feature`` and ``VisionTransformer.forward`` do: ``Normalize`` with the means
    ``-m / s`` and stds ``1 / s`` of ImageNet (blue ``s`` 0.255), ``* 255``, numpy's ``astype(uint8)`` (values
    outside 0..255 wrap, as there), a PIL image resized to the square ``s = min(H, W)`` (PIL's default
    resampling), ``ToTensor``, the proxy's ``Normalize``, and the sides cut to a multiple of ``patch``.
    """
    import torchvision.transforms.functional as TF
    from PIL import Image

    undone = TF.normalize(pixels.detach().float().cpu(), list(_CASS_UNDO_MEAN), list(_CASS_UNDO_STD))
    image = Image.fromarray((undone.permute(1, 2, 0).numpy() * 255).astype("uint8"))
    side = min(pixels.shape[-2:])
    x = TF.normalize(TF.to_tensor(image.resize((side, side))), list(mean), list(std))
    h, w = x.shape[1] - x.shape[1] % patch, x.shape[2] - x.shape[2] % patch
    return x[:, :h, :w][None]


def _range_like(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``source`` mapped linearly from its ``[min, max]`` onto ``target``'s (CASS's ``_normalize_key_range`` and
    ``_normalize_attention_range``)."""
    normalized = (source - source.min()) / (source.max() - source.min())
    return normalized * (target.max() - target.min()) + target.min()


def _low_rank(adj: torch.Tensor, cfg: SpectralMatching) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CASS's ``optimal_q``: ``torch.svd_lowrank`` (float64) of rank ``initial_q``, raised by ``step_q`` until the
    cumulative energy of its own values reaches ``energy_threshold`` (at once, as coded). A graph of fewer nodes than
    ``initial_q`` takes all of them (the code fails there)."""
    max_q = min(adj.shape)
    q = min(cfg.initial_q, max_q)
    while True:
        u, s, v = torch.svd_lowrank(adj.double(), q=q)
        energy = torch.cumsum(s, dim=0) / torch.sum(s)
        if (energy >= cfg.energy_threshold).any() or q + cfg.step_q > max_q:
            return u, s, v
        q += cfg.step_q


def _spectra(keys: torch.Tensor, scale: float, k: int) -> torch.Tensor:
    """``[heads, N, d]`` keys -> ``[heads, min(k, N)]`` float64: the top ``k`` eigenvalues (descending) of each head's
    key graph ``k kᵀ scale``, L2-normalised, then L1-normalised (the cost's inputs).

    CASS takes ``eigvalsh`` of the ``N x N`` graph in float64; its nonzero eigenvalues are those of the ``d x d``
    Gram matrix ``kᵀ k scale`` (the same singular values of ``k``), which is what is decomposed here (``d`` 64
    against ``N`` 196..1200 patches: ~``(N / d)³`` fewer operations); a graph of rank ``d < k`` has zeros after
    them. The two differ by the float32 rounding of the graph's entries (~1e-7 relative)."""
    x = keys.double()
    values = torch.linalg.eigvalsh(x.transpose(1, 2) @ x * scale).flip(-1)
    n = min(k, keys.shape[1])
    if values.shape[1] < n:
        values = F.pad(values, (0, n - values.shape[1]))
    return F.normalize(F.normalize(values[:, :n], p=2, dim=1), p=1, dim=-1)


def head_matching_cost(k: torch.Tensor, dino_keys: torch.Tensor, dino_grid: tuple[int, int], grid: tuple[int, int],
                       cfg: SpectralMatching) -> tuple[torch.Tensor, torch.Tensor]:
    """CASS's head-matching cost (``custom_attn``, ``'spectral'``) for ONE image.

    Args:
        k: ``[heads, hw, hd]`` CLIP's last-block keys (class token removed) on ``grid`` ``(h, w)``.
        dino_keys: ``[heads', HW, hd']`` the proxy DINO's last-block keys on ``dino_grid``.

    Returns:
        (``[heads, hw, hd]`` DINO's keys regrouped into CLIP's heads, resized bilinearly to ``grid`` and mapped
        linearly onto the range of CLIP's keys (all heads at once: one scale, one offset); ``[heads, heads]``
        float32 ``1 - Σ|sorted spectrum_D - sorted spectrum_K|``, rows DINO's heads, columns CLIP's, the matrix
        CASS hands ``linear_sum_assignment``.)
    """
    heads = k.shape[0]
    n = grid[0] * grid[1]
    scale = k.shape[-1] ** -0.5
    channels = dino_keys.shape[0] * dino_keys.shape[2]
    if channels % heads:
        raise VplError(f"--dense cass: the proxy model's {channels} key channels do not split into CLIP's {heads} "
                       "heads; use a proxy whose width is a multiple of CLIP's head count (ViT-B/8 DINO for ViT-B/16)")
    # the code regroups DINO's key channels into CLIP's heads (the same heads when both are ViT-B)
    dk = dino_keys.to(k.dtype).permute(0, 2, 1).reshape(heads, channels // heads, *dino_grid)
    dk = F.interpolate(dk, size=tuple(grid), mode="bilinear", align_corners=False).reshape(heads, -1, n)
    dk = _range_like(dk.permute(0, 2, 1), k)
    dino_spec, clip_spec = _spectra(dk, scale, cfg.k_eigen), _spectra(k, scale, cfg.k_eigen)
    distance = (torch.sort(dino_spec, dim=-1)[0][:, None] - torch.sort(clip_spec, dim=-1)[0][None]).abs().sum(-1)
    return dk, (1 - distance).to(torch.float32).to(k.device)


def spectral_key_attention(attn, h: torch.Tensor, dino_keys: torch.Tensor, dino_grid: tuple[int, int],
                           grid: tuple[int, int], cfg: SpectralMatching, bias: torch.Tensor | None) -> torch.Tensor:
    """CASS's last block (``custom_attn``, ``'spectral'``) for ONE image.

    Args:
        attn: the block's ``nn.MultiheadAttention``.
        h: ``[1, 1 + hw, width]`` its ``ln_1`` output; ``grid`` ``(h, w)``.
        dino_keys: ``[heads', HW, hd']`` the proxy DINO's last-block keys (class token removed) on ``dino_grid``;
            their channels are regrouped into CLIP's heads as the code's reshape does (ViT-B/8 DINO and ViT-B/16
            CLIP: the same 12 heads of 64; a proxy of another width: ``heads' hd' / heads`` channels a head).
        bias: ``[hw, hw]`` Ω (NACLIP's neighbourhood bias) or None.

    Returns:
        ``[1, hw, width]`` patch tokens (no class token): ``out_proj(softmax(G + Ω) v)`` per head, where for CLIP
        head ``i`` matched to DINO head ``j``: ``G = (w s D_j + K_i) / (w s + 1)``, ``K_i = k kᵀ scale`` CLIP's
        key graph, ``D_j`` DINO's key graph (its keys resized bilinearly to the grid and mapped onto the range of
        CLIP's keys) approximated by the randomised SVD (:func:`_low_rank`; singular values stretched when
        ``cfg.stretch``), diagonal zeroed, mapped onto ``K_i``'s range; ``w = 1 - cost``, the cost
        ``1 - Σ|sorted spectrum_D - sorted spectrum_K|`` and the matching scipy's ``linear_sum_assignment`` on it
        (minimised, as coded). The seed of the SVD's basis is the caller's.
    """
    from scipy.optimize import linear_sum_assignment

    heads = attn.num_heads
    width = h.shape[-1]
    hd = width // heads
    scale = hd**-0.5
    _, k, v = f_linear(h[0], attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    k = k.reshape(-1, heads, hd).transpose(0, 1)[:, 1:]  # [heads, hw, hd]
    v = v.reshape(-1, heads, hd).transpose(0, 1)[:, 1:]
    n = grid[0] * grid[1]
    dk, cost = head_matching_cost(k, dino_keys, dino_grid, grid, cfg)
    clip_graph = torch.bmm(k, k.transpose(1, 2)) * scale
    dino_graph = torch.bmm(dk, dk.transpose(1, 2)) * scale
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    combined = torch.zeros_like(clip_graph)
    for idx in range(heads):
        i, j = int(rows[idx]), int(cols[idx])
        w = 1 - cost[i, j]
        u, s, vv = _low_rank(dino_graph[j], cfg)
        if cfg.stretch:
            lo, hi = s.min(), s.max()
            s = (s - lo) / (hi - lo) * (1.5 * hi - 0.5 * lo) + 0.5 * lo
        approx = u @ torch.diag(s) @ vv.T
        approx.fill_diagonal_(0)
        dino_adj = _range_like(approx, clip_graph[i])
        combined[idx] = (w * cfg.scale_factor * dino_adj + clip_graph[i]) / (w * cfg.scale_factor + 1)
    if bias is not None:
        combined = combined + bias.to(combined.dtype)[None]
    out = torch.bmm(F.softmax(combined, dim=-1), v)  # [heads, hw, hd]
    return attn.out_proj(out.transpose(0, 1).reshape(1, n, width))


def query_clusters(text: torch.Tensor, threshold: float) -> np.ndarray:
    """CASS's ``hierarchical_clustering``: ``[Q, D]`` query rows -> ``[Q]`` cluster ids ``0..K-1``: Ward linkage of
    their cosine distances (scikit-learn's ``cosine_distances`` restated: rows re-normalised, ``1 - cos`` clipped
    to ``[0, 2]``, zero diagonal), cut at distance ``threshold`` (scipy's ``fcluster``). One query: one cluster."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    x = text.detach().float().cpu().numpy()
    if len(x) < 2:
        return np.zeros(len(x), dtype=np.int64)
    x = x / np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
    d = np.clip(1 - x @ x.T, 0, 2)
    np.fill_diagonal(d, 0.0)
    return fcluster(linkage(squareform(d, checks=False), method="ward"), t=threshold, criterion="distance") - 1


def object_presence_logits(feats: torch.Tensor, image: torch.Tensor, text: torch.Tensor, clusters: np.ndarray,
                           cfg: TextShift) -> torch.Tensor:
    """CASS's logits of one window (``forward_feature`` after the image encoder).

    Args:
        feats: ``[hw, D]`` unit patch features. image: ``[D]`` the unit CLIP embedding (class token through the
            ordinary last block) of the window or of the whole input (:attr:`TextShift.window_global`).
        text: ``[Q, D]`` unit query rows; clusters: their :func:`query_clusters`.

    Returns:
        ``[hw, Q]``: ``(1 - w) feats @ T'ᵀ + w (image @ textᵀ)``, ``T'`` the rows with each cluster's query closest
        to ``image`` shifted to ``normalize((1 - a) t + a m)``, ``m`` the unit mean of its ``top_k`` most similar
        patches (as ranked by the re-normalised features), ``a`` = ``mean_vector_weight``.
    """
    sims = image @ text.T  # [Q]
    order = sims.detach().float().cpu().numpy()
    adjusted = text.clone()
    unit = F.normalize(feats, dim=1)
    for cluster in range(int(clusters.max()) + 1 if len(clusters) else 0):
        members = np.where(clusters == cluster)[0]
        c = int(members[np.argmax(order[members])])
        row = F.normalize(text[c][None], dim=1)
        top = torch.topk((unit @ row.T).squeeze(1), min(cfg.top_k, feats.shape[0])).indices
        mean = F.normalize(feats[top].mean(dim=0), dim=0)
        adjusted[c] = F.normalize((1 - cfg.mean_vector_weight) * row[0] + cfg.mean_vector_weight * mean, dim=0)
    return (feats @ adjusted.T) * (1 - cfg.global_weight) + sims[None] * cfg.global_weight



def spectral_features(bb, pixels: torch.Tensor, fp16_pos: bool = False,
                      proxy_pixels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, 3, H, W]`` CLIP-normalised pixels -> (``[B, hw, D]`` patch features of the spectral last block,
    ``[B, D]`` the image embedding: the class token through the ordinary last block, ``ln_post``, ``proj``;
    neither normalised). Blocks ``0..L-2`` run once; per image the proxy DINO sees the window as CASS makes its
    input (:func:`cass_proxy_input`) and its last-block keys drive :func:`spectral_key_attention`, the SVD's basis
    seeded per image (``mixing.spectral.seed``) so that a window's result does not depend on the batch.
    ``proxy_pixels``: the window before its sides were cut to whole patches (CASS squares the whole window for its
    DINO; CLIP's patch convolution drops the remainder); None: ``pixels``."""
    if bb.proxy is None:
        raise VplError(f"--dense {bb.mixing.method} needs a proxy vision model: pass --proxy-model and "
                       "--proxy-weights (a DINO ViT, e.g. vit_base_patch8_224.dino)")
    encoded = bb.encode(pixels, stop=bb.n_blocks - 1, fp16_pos=fp16_pos)
    x, grid = encoded.tokens, encoded.grid
    image = bb.project(bb.class_token(bb.n_blocks - 1, x, grid)[:, 0])
    blk, cfg = bb.blocks[-1], bb.mixing.spectral
    bias = None
    if bb.mixing.gaussian_std > 0:
        bias = neighbourhood_bias(grid, bb.mixing.gaussian_std, x.device, torch.float32)[1:, 1:]
    devices = [x.device] if x.device.type == "cuda" else []
    out = []
    for i in range(len(x)):
        dino_in = cass_proxy_input((pixels if proxy_pixels is None else proxy_pixels)[i], bb.proxy.mean,
                                   bb.proxy.std, bb.proxy.patch_size)
        keys, dino_grid = bb.proxy.last_keys(dino_in.to(bb.proxy.device))
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(cfg.seed)
            out.append(spectral_key_attention(blk.attn, blk.ln_1(x[i : i + 1]), keys[0].to(x.device),
                                              dino_grid, grid, cfg, bias))
    return bb.project(torch.cat(out)), image


def features(bb, pixels: torch.Tensor, fp16_pos: bool = False) -> torch.Tensor:
    """The method's feature hook: the patch features of :func:`spectral_features`."""
    return spectral_features(bb, pixels, fp16_pos)[0]


def grid_logits(bb, pixels: torch.Tensor, text: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor:
    """The segmentor hook (:func:`vpltool.models.dense.segmentor.grid_logits`): ``[B, 3, H, W]`` windows -> ``[B, hw,
    Q]`` object-presence logits (:func:`object_presence_logits`), with ``image`` ``[B, D]`` the whole input's embedding
    of each window, or (None, or :attr:`TextShift.window_global`) each window's own."""
    p = bb.patch_size
    h, w = pixels.shape[-2] // p, pixels.shape[-1] // p
    shift = bb.mixing.text_shift
    # CASS's DINO sees the whole window squared, the remainder of a side included (its conv1 drops it)
    feats, own = spectral_features(bb, pixels[..., : h * p, : w * p], proxy_pixels=pixels)
    feats, own = feats.float(), own.float()
    glob = own if image is None or shift.window_global else image.float()
    feats = feats / feats.norm(dim=-1, keepdim=True)
    glob = glob / glob.norm(dim=-1, keepdim=True)
    rows = text.to(feats.device, feats.dtype)
    clusters = query_clusters(rows, shift.h_threshold)
    return torch.stack([object_presence_logits(f, g, rows, clusters, shift) for f, g in zip(feats, glob)])


def input_embedding(bb, pixels: torch.Tensor) -> torch.Tensor | None:
    """The whole-input embedding for the windows (``forward_feature(crop, img)``: the class token of the full
    forward of the resized image, ``ln_post``, ``proj``) ``[B, D]``; None for the per-window variant."""
    if bb.mixing.text_shift.window_global:
        return None
    p = bb.patch_size
    h, w = pixels.shape[-2] // p, pixels.shape[-1] // p
    encoded = bb.encode(pixels[..., : h * p, : w * p], stop=bb.n_blocks - 1)
    return bb.project(bb.class_token(bb.n_blocks - 1, encoded.tokens, encoded.grid)[:, 0])


class Hooks(DenseHooks, method="cass", preset=PRESET):
    """CASS's hooks: its knobs, its spectral feature forward and its object-presence window logits."""

    def with_knobs(self, mixing: DenseMixing, knobs: dict) -> DenseMixing:
        return with_knobs(mixing, knobs)

    def features(self, bb, pixels: torch.Tensor, fp16_pos: bool = False) -> torch.Tensor:
        return features(bb, pixels, fp16_pos)

    def grid_logits(self, bb, pixels: torch.Tensor, text: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor:
        return grid_logits(bb, pixels, text, image)

    def input_embedding(self, bb, pixels: torch.Tensor) -> torch.Tensor | None:
        return input_embedding(bb, pixels)


__all__ = ["Hooks", "SpectralMatching", "TextShift", "PRESET", "with_knobs", "cass_proxy_input", "head_matching_cost",
           "spectral_key_attention", "query_clusters", "object_presence_logits", "spectral_features", "features",
           "grid_logits", "input_embedding"]
