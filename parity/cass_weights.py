"""Random weights for CASS's free-run parity under which its head matching is unique; prints ONE JSON object.

    python parity/cass_weights.py --base W --out W2        # W: a finished ovss_parity.py work folder (its weights,
                                                           # DINO weights, model config and photos); W2: the shaped
                                                           # copy, which ovss_parity.py --work W2 then runs on
    python parity/cass_weights.py --base W --probe         # also the margins of every attempt of ATTEMPTS
    python parity/cass_weights.py --base W --held-out 6    # also on inputs not shaped on (slide windows)

Why. CASS matches DINO's 12 heads to CLIP's by ``linear_sum_assignment`` on ``1 - Σ|sorted spectrum_D - sorted
spectrum_K|`` (vpltool's :func:`~vpltool.models.dense.head_matching_cost`), minimised as coded: it pairs the
most DISSIMILAR spectra. That cost is additive wherever, at every sorted position, the two DINO heads' values lie on
one side of the two CLIP heads', and on timm's / open_clip's random init every head of a side has about the same
spectrum, so many assignments tie (margin 0.0 on every parity input) and a 1e-7 difference of the two
implementations picks another. At a position p the best assignment pairs each head in the upper half of the 24
values with one of the other side in the lower half; a head's pattern of halves over the 20 positions is its
signature, and were the halves those of the designed spectra, the assignment pairing every DINO head with the one
CLIP head of the opposite signature would be the only optimum. That is the heuristic behind the shapes below; the
realised spectra move (each input's tokens, the normalisations), the optimum found is not that pairing, and whether
it is unique is measured (``margin``), not assumed.

What. Only the last blocks' key projections (CLIP ``visual.transformer.resblocks.11.attn.in_proj_*`` rows 768:1536,
DINO ``blocks.11.attn.qkv.*`` rows 768:1536) are replaced; every other tensor is the seed-0 init of
``ovss_parity.py`` (CLIP's values fp16-exact, the shaped rows too). Per head ``h`` of a side: ``W_h = U
diag(sqrt(λ_h)) Vᵀ (Q (E + lam·mean(E)·I)^(-1/2))ᵀ``, ``U`` (64 x 64) and ``V`` (768 x 64) random orthonormal, ``Q E
Qᵀ = M`` the mean second moment (over the parity's inputs: the 2 patch inputs and the photos, with the seed-0
weights) of the tokens that key projection sees (CLIP: ``ln_1`` of the last block's input; DINO: ``norm1`` of its
last block's input, resized to CLIP's grid as the cost resizes the keys), so that the keys' Gram matrix is about ``U
diag(λ_h) Uᵀ``: ``λ_h[j] = ratio^j``, times ``1 + eps·sign[h, j]`` for ``j < 20``. DINO's signs are drawn (±1,
seed), CLIP's are the opposite of a seeded permutation of them. Key biases are zero, but in head 0 of both sides
channel 0 is the constant ``+anchor`` and channel 1 ``-anchor`` (zero weights): CASS maps DINO's keys linearly onto
the range of CLIP's (one scale, one offset for all heads), and with both ranges exactly ``[-anchor, anchor]`` that
offset is 0 (otherwise it adds a constant to every DINO key and makes every DINO head's spectrum top-heavy). A key
bias does not change either model's own attention (softmax is invariant to it).

The parameters (:data:`CHOSEN`) were chosen by ``--probe`` among the attempts of :data:`ATTEMPTS` on vpltool's
costs of the parity's own inputs (no reference code involved); ``margin`` is the extra total cost of the best
assignment other than the optimum (:func:`ovss_parity.ambiguity`), the bar for a unique matching 1e-5, far above
the ~1e-7 cost differences of the two implementations.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "bench")]

import benchlib  # noqa: E402

CLIP_KEY = "visual.transformer.resblocks.11.attn.in_proj_"
DINO_KEY = "blocks.11.attn.qkv."
WIDTH, HEADS, HD, K_EIGEN = 768, 12, 64, 20
MARGIN_BAR = 1e-5
# (seed, lam, eps, ratio, anchor): 24 shapes with the range anchors, then the chosen one's seed and shape without
ATTEMPTS = [(s, lam, eps, ratio, 16.0) for s in (0, 1, 2) for lam in (0.1, 0.03)
            for eps, ratio in ((0.3, 0.6), (0.4, 0.7), (0.3, 0.8), (0.5, 0.6))] + [(1, 0.03, 0.4, 0.7, 0.0)]
CHOSEN = {"seed": 1, "lam": 0.03, "eps": 0.4, "ratio": 0.7, "anchor": 16.0}


def parity_inputs(work: Path, images: int) -> dict:
    """The CASS parity's inputs as ``ovss_parity.py`` makes them: ``crop224`` and ``whole`` of the first photo,
    and ``photo_NNN`` (mmseg's test input at CASS's short side, the SCLIP-family pre-processor): name ->
    ``[1, 3, H, W]``."""
    from dense_ref_runner import mmseg_input, patch_inputs

    from vpltool.config.dense import DENSE_SEGMENTORS

    pre = {"mean": [122.771, 116.746, 104.094], "std": [68.501, 66.632, 70.323], "rgb_to_bgr": True}
    short = DENSE_SEGMENTORS["cass"].short_side
    photos = sorted((work / "voc" / "JPEGImages").glob("*.jpg"))[:images]
    xs = {f"photo_{i:03d}": mmseg_input(p, (2048, short), pre)[0] for i, p in enumerate(photos)}
    return {**patch_inputs(xs["photo_000"]), **xs}


def backbone(work: Path):
    """vpltool's ``--dense cass`` backbone on ``work``'s weights (CLIP and the proxy DINO)."""
    import ovss_parity as op

    with op.harness():
        model, config_dir = op.dp.model_config(work, "ViT-B-16-quickgelu", 1)
        vt = op.Vpltool(model, work / "weights.safetensors", config_dir, work / "dino_vitb8.pth")
        return vt.backbone("cass")


def slide_windows(inputs: dict, photos: int, crop: int = 224, stride: int = 112) -> dict:
    """Inputs the chosen weights were NOT shaped on (but the first photo's top-left window, the ``crop224`` input):
    the ``crop`` x ``crop`` slide windows (mmseg's grid, as CASS's Context, COCO and ADE configs slide) of the first
    ``photos`` parity photos: ``photo_NNN@y,x`` -> ``[1, 3, crop, crop]``."""
    out = {}
    for name in [n for n in inputs if n.startswith("photo_")][:photos]:
        x = inputs[name]
        h, w = x.shape[-2:]
        for i in range(max(h - crop + stride - 1, 0) // stride + 1):
            for j in range(max(w - crop + stride - 1, 0) // stride + 1):
                y2, x2 = min(i * stride + crop, h), min(j * stride + crop, w)
                y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
                out[f"{name}@{y1},{x1}"] = x[..., y1:y2, x1:x2].contiguous()
    return out


def last_block_tokens(bb, x) -> tuple:
    """``[1, 3, H, W]`` -> (CLIP's ``ln_1`` tokens of the last block ``[hw, 768]``, DINO's last ``norm1`` tokens
    resized to CLIP's grid ``[hw, 768]``), float64, prefix tokens removed; the windows as vpltool cuts them."""
    import torch
    import torch.nn.functional as F

    from vpltool.models.backbones.dino_attention import dino_attention
    from vpltool.models.dense.cass import cass_proxy_input

    p = bb.patch_size
    px = x[..., : x.shape[-2] // p * p, : x.shape[-1] // p * p]
    with torch.no_grad():
        enc = bb.encode(px, stop=bb.n_blocks - 1)
        clip = bb.blocks[-1].ln_1(enc.tokens[:1])[0, 1:]
        m = bb.proxy.model
        t, grid = bb.proxy._dino_tokens(cass_proxy_input(x[0], bb.proxy.mean, bb.proxy.std, bb.proxy.patch_size))
        for blk in m.blocks[:-1]:
            t = t + blk.ls1(dino_attention(blk.attn, blk.norm1(t)))
            t = t + blk.ls2(blk.mlp(blk.norm2(t)))
        d = m.blocks[-1].norm1(t)[0, bb.proxy.n_prefix :]
        d = F.interpolate(d.T.reshape(1, -1, *grid), size=tuple(enc.grid), mode="bilinear", align_corners=False)
    return clip.double(), d.reshape(d.shape[1], -1).T.double(), tuple(enc.grid)


def second_moments(tokens: dict) -> tuple:
    """Mean over the inputs of ``tᵀ t / n`` for CLIP's and DINO's tokens: two ``[768, 768]`` float64."""
    mc = sum(c.T @ c / len(c) for c, _, _ in tokens.values()) / len(tokens)
    md = sum(d.T @ d / len(d) for _, d, _ in tokens.values()) / len(tokens)
    return mc, md


def signatures(seed: int):
    """DINO's ``[12, 20]`` ±1 signs and CLIP's (the opposite of a seeded permutation of DINO's rows)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    dino = torch.where(torch.rand(HEADS, K_EIGEN, generator=g) < 0.5, -1.0, 1.0).double()
    perm = torch.randperm(HEADS, generator=torch.Generator().manual_seed(seed + 7))
    return dino, -dino[perm]


def shaped_keys(w, moment, signs, seed: int, lam: float, eps: float, ratio: float, anchor: float):
    """One side's last-block key projection ``[768, 768]`` -> (its shaped weight, its bias ``[768]``), float32,
    fp16-exact (module docstring); each head keeps the Frobenius norm of its original rows."""
    import torch

    g = torch.Generator().manual_seed(seed)
    e, q = torch.linalg.eigh(moment)
    e = e.clamp_min(0)
    # columns from the largest eigenvalue down; not rotated back (V is random, so the rotation is immaterial)
    whiten = q.flip(1) * (e.flip(0) + lam * e.mean()).rsqrt()
    out = w.clone()
    base = ratio ** torch.arange(HD, dtype=torch.float64)
    for h in range(HEADS):
        rows = slice(h * HD, (h + 1) * HD)
        u = torch.linalg.qr(torch.randn(HD, HD, generator=g, dtype=torch.float64))[0]
        v = torch.linalg.qr(torch.randn(WIDTH, HD, generator=g, dtype=torch.float64))[0]
        lam_h = base.clone()
        lam_h[:K_EIGEN] *= 1 + eps * signs[h]
        new = u @ torch.diag(lam_h.sqrt()) @ v.T @ whiten.T
        out[rows] = (new * (w[rows].double().norm() / new.norm())).float()
    out = out.half().float()
    bias = torch.zeros(WIDTH)
    if anchor:  # 0: no anchor channels (the ablation of --probe)
        out[0], out[1] = 0.0, 0.0
        bias[0], bias[1] = anchor, -anchor
    return out, bias


def load_states(work: Path) -> tuple[dict, dict]:
    """``work``'s CLIP state (safetensors) and DINO state (.pth)."""
    import torch
    from safetensors.torch import load_file

    return load_file(str(work / "weights.safetensors")), torch.load(work / "dino_vitb8.pth")


def shaped_states(states: tuple[dict, dict], moments: tuple, seed: int, lam: float, eps: float, ratio: float,
                  anchor: float):
    """Copies of the CLIP and DINO states (:func:`load_states`) with both last key projections shaped."""
    clip, dino = dict(states[0]), dict(states[1])
    d_signs, c_signs = signatures(seed)
    cw, cb = shaped_keys(clip[CLIP_KEY + "weight"][WIDTH : 2 * WIDTH], moments[0], c_signs, 100 + seed, lam, eps,
                         ratio, anchor)
    dw, db = shaped_keys(dino[DINO_KEY + "weight"][WIDTH : 2 * WIDTH], moments[1], d_signs, 200 + seed, lam, eps,
                         ratio, anchor)
    for state, key, w, b in ((clip, CLIP_KEY, cw, cb), (dino, DINO_KEY, dw, db)):
        state[key + "weight"] = state[key + "weight"].clone()
        state[key + "bias"] = state[key + "bias"].clone()
        state[key + "weight"][WIDTH : 2 * WIDTH] = w
        state[key + "bias"][WIDTH : 2 * WIDTH] = b
    return clip, dino


def key_margins(tokens: dict, clip: dict, dino: dict) -> dict:
    """Per input the ambiguity of CASS's matching (:func:`ovss_parity.ambiguity`) on vpltool's cost
    (:func:`~vpltool.models.dense.head_matching_cost`) of the keys the given last key projections make."""
    import numpy as np
    import torch.nn.functional as F
    from ovss_parity import ambiguity
    from scipy.optimize import linear_sum_assignment

    from vpltool.models.dense.cass import SpectralMatching, head_matching_cost

    def keys(t, state, key):
        k = F.linear(t.float(), state[key + "weight"][WIDTH : 2 * WIDTH], state[key + "bias"][WIDTH : 2 * WIDTH])
        return k.reshape(-1, HEADS, HD).transpose(0, 1)

    out = {}
    for name, (c, d, grid) in tokens.items():
        # DINO's keys enter on CLIP's grid already (resizing is linear: it commutes with the projection)
        _, cost = head_matching_cost(keys(c, clip, CLIP_KEY), keys(d, dino, DINO_KEY), grid, grid,
                                     SpectralMatching())
        out[name] = ambiguity(np.asarray(cost.numpy(), dtype=np.float64), linear_sum_assignment)
    return out


def summary(margins: dict) -> dict:
    m = [v["margin"] for v in margins.values()]
    return {"margin_min": min(m), "inputs_unique": sum(v > MARGIN_BAR for v in m), "inputs": len(m),
            "tied_swaps_max": max(v["tied_swaps"] for v in margins.values())}


def write(base: Path, out: Path, clip: dict, dino: dict, params: dict) -> None:
    """The shaped work folder: ``base``'s photos and model config, the shaped weights (.pt, .safetensors, DINO's
    .pth) and the markers ``ovss_parity.py`` reads (so that it reuses them)."""
    import torch
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    for folder in ("voc", "model_configs"):
        if not (out / folder).exists():
            shutil.copytree(base / folder, out / folder)
    clip = {k: v.contiguous() for k, v in clip.items()}
    torch.save(clip, out / "weights.pt")
    save_file(clip, str(out / "weights.safetensors"))
    torch.save(dino, out / "dino_vitb8.pth")
    shutil.copy(base / "weights.json", out / "weights.json")
    (out / "cass_weights.json").write_text(json.dumps({"weights": describe(params), **params}))


def describe(params: dict) -> str:
    return ("random (seed 0, fp16-exact values), the last blocks' key projections of CLIP and DINO shaped for CASS "
            "(parity/cass_weights.py, {}): the head matching unique".format(
                ", ".join(f"{k} {v}" for k, v in params.items())))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, required=True, help="a finished ovss_parity.py --work folder (seed 0)")
    ap.add_argument("--out", type=Path, help="write the shaped work folder here")
    ap.add_argument("--probe", action="store_true", help="the margins of every attempt of ATTEMPTS")
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--held-out", type=int, default=0, metavar="N",
                    help="also the chosen weights' margins on the 224 slide windows of the first N photos")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    inputs = parity_inputs(args.base, args.images)
    bb = backbone(args.base)
    tokens = {name: last_block_tokens(bb, x) for name, x in inputs.items()}
    moments = second_moments(tokens)
    states = load_states(args.base)
    result = {"benchmark": "cass-weights", "machine": benchlib.machine("cpu"), "argv": sys.argv[1:] if argv is None
              else argv, "margin_bar": MARGIN_BAR, "inputs": list(inputs)}
    base = key_margins(tokens, *states)
    result["seed0_init"] = {**summary(base), "per_input": base}
    if args.probe:
        result["attempts"] = []
        for seed, lam, eps, ratio, anchor in ATTEMPTS:
            params = {"seed": seed, "lam": lam, "eps": eps, "ratio": ratio, "anchor": anchor}
            m = key_margins(tokens, *shaped_states(states, moments, **params))
            result["attempts"].append({**params, **summary(m),
                                       "margins": [float(f"{v['margin']:.3g}") for v in m.values()]})
    clip, dino = shaped_states(states, moments, **CHOSEN)
    m = key_margins(tokens, clip, dino)
    result["chosen"] = {**CHOSEN, "weights": describe(CHOSEN), **summary(m), "per_input": m}
    if args.held_out:
        windows = slide_windows(inputs, args.held_out)
        m = key_margins({name: last_block_tokens(bb, x) for name, x in windows.items()}, clip, dino)
        result["held_out"] = {"what": f"the 224x224 slide windows (stride 112) of the first {args.held_out} photos, "
                              "inputs the weights were not shaped on", **summary(m),
                              "margins": {k: float(f"{v['margin']:.3g}") for k, v in m.items()}}
    if args.out:  # the margins inside vpltool's whole forward on these files: ovss_parity.py --shared-matching
        write(args.base, args.out, clip, dino, CHOSEN)
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
