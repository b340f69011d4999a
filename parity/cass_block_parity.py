"""CASS's spectral last block against its OWN code on the SAME tokens; prints ONE JSON object.

    python parity/cass_block_parity.py --clone DIR/CASS --work W    # W: a parity/ovss_parity.py --work folder

Why a block-level check beside parity/ovss_parity.py: on random weights CASS's Hungarian matching of CLIP's and
DINO's heads is tied (every head's key graph has nearly the same normalised spectrum), so a difference of ~1e-6 in
the tokens entering the last block (two implementations of CLIP's first 11 blocks) swaps matched heads and moves the
logits by ~0.1. This script feeds the first photo's 224x224 crop (``W/ref/cass/patch.pt``) through vpltool's blocks,
then gives the SAME tokens and the SAME DINO keys (CASS's own ``dino/`` copy on CASS's own input image, random
weights ``W/dino_vitb8.pth``) to CASS's ``custom_attn`` and to vpltool's ``spectral_key_attention``, both seeded 0
(its randomised SVD), fp32, CPU. It also records the two CLIP implementations' token difference and the matching
each token set gives (with the total cost of both assignments under the reference's costs).

The clone's ``clip`` package is imported in this process (vpltool's is ``vpltool.models.backbones.clip``); OpenMMLab,
``requests`` and scikit-learn are stubbed as in ``dense_ref_runner.py``; DINO's URL fetch reads the file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "bench"), str(HERE.parent)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clone", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--model", default="ViT-B-16-quickgelu")
    args = ap.parse_args(argv)
    import dense_ref_runner as r
    import numpy as np
    import ovss_parity as op
    import torch

    from vpltool.models.dense import neighbourhood_bias
    from vpltool.models.dense.cass import cass_proxy_input, spectral_key_attention

    import benchlib

    torch.set_num_threads(1)
    work, clone = args.work.resolve(), args.clone.resolve()
    with op.harness():
        model, config_dir = op.dp.model_config(work, args.model, 1)
        vt = op.Vpltool(model, work / "weights.safetensors", config_dir, work / "dino_vitb8.pth")
        bb = vt.backbone("cass")
    x = torch.load(work / "ref" / "cass" / "patch.pt")["crop224"]["input"]
    r.install_openmmlab_stubs()
    r.install_pkg_resources_stub()
    r.install_sklearn_stub()
    r.stub_if_missing("requests")
    sys.path.insert(0, str(clone))
    os.chdir(clone)
    import clip
    import clip.model as cm
    from dino.dino_attention import DinoSelfAttention
    from PIL import Image
    from torchvision import transforms

    class Args:
        proxy_weights = str(work / "dino_vitb8.pth")

    # CASS's DINO prints where its weights come from on stdout, which carries this script's one JSON object
    with r.cass_on_cpu(Args), contextlib.redirect_stdout(sys.stderr):
        net, _ = clip.load(str(work / "weights.pt"), device="cpu", jit=False)
        dino = DinoSelfAttention(arch="vit_base", patch_size=8, image_size=(224, 224))
    net.visual.set_params("reduced", "spectral", 5.0)
    undo = transforms.Normalize(mean=[-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.255],
                                std=[1 / 0.229, 1 / 0.224, 1 / 0.255])
    image = Image.fromarray((undo(x.squeeze().cpu()).permute(1, 2, 0).numpy() * 255).astype("uint8"))
    grid = (x.shape[-2] // 16, x.shape[-1] // 16)
    picks = []
    lsa = cm.linear_sum_assignment

    def spy(cost):
        out = lsa(cost)
        picks.append((cost.copy(), out[1].copy()))
        return out

    cm.linear_sum_assignment = spy
    with torch.no_grad():
        qkv = dino(image.resize((min(x.shape[-2:]),) * 2))
        ours_in = cass_proxy_input(x[0], bb.proxy.mean, bb.proxy.std, bb.proxy.patch_size)
        keys, dgrid = bb.proxy.last_keys(ours_in)
        enc = bb.encode(x, stop=bb.n_blocks - 1)
        blk, rblk, v = bb.blocks[-1], net.visual.transformer.resblocks[-1], net.visual
        torch.manual_seed(0)
        theirs = v.custom_attn(rblk.attn, rblk.ln_1(enc.tokens.transpose(0, 1)), grid, "dino_vitb8", qkv, dgrid,
                               "voc21").transpose(0, 1)
        torch.manual_seed(0)
        ours = spectral_key_attention(blk.attn, blk.ln_1(enc.tokens), keys[0], dgrid, grid, bb.mixing.spectral,
                                      neighbourhood_bias(grid, 5.0)[1:, 1:])
        t = v.conv1(x).reshape(1, v.conv1.out_channels, -1).permute(0, 2, 1)
        t = torch.cat([v.class_embedding + torch.zeros(1, 1, t.shape[-1]), t], dim=1) + v.positional_embedding
        t = v.ln_pre(t).permute(1, 0, 2)
        for b in v.transformer.resblocks[:-1]:
            t = b(t)
        torch.manual_seed(0)
        own = v.custom_attn(rblk.attn, rblk.ln_1(t), grid, "dino_vitb8", qkv, dgrid, "voc21").transpose(0, 1)
    (c_vt, p_vt), (c_own, p_own) = picks[0], picks[1]
    rows = np.arange(len(p_vt))
    print(json.dumps({
        "benchmark": "cass-block-parity", "machine": benchlib.machine("cpu"), "precision": "fp32",
        # the work folder's own weights (cass_weights.py may have shaped them): what both sides loaded
        "weights": f"{op.weights_of(work)}: CLIP ViT-B/16 (one text block), DINO ViT-B/8",
        "input": list(x.shape[-2:]),
        "dino_keys_max_abs_diff": float((keys - qkv[1][:, :, 1:]).abs().max()),
        "spectral_block_max_abs_diff": float((ours - theirs).abs().max()),
        "spectral_block_scale": float(theirs.abs().max()),
        "bar": "spectral block max |diff| <= 1e-4 on the same tokens and keys",
        "bar_met": float((ours - theirs).abs().max()) <= 1e-4,
        "tokens_max_abs_diff_between_implementations": float((t.transpose(0, 1) - enc.tokens).abs().max()),
        "matching_on_vpltool_tokens": p_vt.tolist(), "matching_on_reference_tokens": p_own.tolist(),
        "cost_max_abs_diff": float(np.abs(c_vt - c_own).max()),
        "total_cost_of_each_matching": [float(c_own[rows, p_vt].sum()), float(c_own[rows, p_own].sum())],
        "block_output_max_abs_diff_between_token_sets": float((own - theirs).abs().max()),
    }))


if __name__ == "__main__":
    main()
