"""Where the prototypes' directions live in a toy CLIP's last block: reads of text and vision prototypes on the
per-patch features that make up the output, on the first N train images (default 150).

    python benchmarks/toy_value_path.py WORK_DIR TOY_DIR [N]

WORK_DIR is a folder written by benchmarks/toy_properties.py for that toy (``features_train``, ``cams_text_train``,
``text_prototypes.safetensors``, ``vision_prototypes.safetensors``). The last block's output for patch q is
``x_q + attn_q + mlp_q``; GradCAM at ln_1 reads, to first order, the *value path* ``out_proj(v_proj(ln_1(x_q)))``
of each patch (the attention weights of a row sum to 1). Each feature is taken to the joint space with ``dense``
(ln_post + proj) and read two ways: ``pixel`` (softmax over the image's rows at the prototypes' temperature, as
phase 1 fits) and ``read`` (GradCAM's image-level direction dp_k/df, from the real output, read linearly on that
feature). mIoU %, bg exponent 1, train split only. Prints one JSON object.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vpltool import io
from vpltool.backbone import ModelSpec, load_backbone
from vpltool.cam import gradcam, minmax
from vpltool.data import open_dataset

sys.path.insert(0, str(Path(__file__).parent))
from toy_properties import Scorer  # noqa: E402


def main() -> None:
    logging.disable(logging.WARNING)
    work, toy = Path(sys.argv[1]), Path(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 150
    bb = load_backbone(ModelSpec(model=f"local-dir:{toy.resolve()}"))
    record = io.read_stage_record(work / "features_train", "extract")
    classes = record["classes"]
    text = io.read_prototypes(work / "text_prototypes.safetensors", classes=classes)
    vision = io.read_prototypes(work / "vision_prototypes.safetensors", classes=classes)
    data = open_dataset(record["inputs"]["dataset"]["root"], "train")
    gts = {it.id: it.gt for it in data.items}
    scorer, blk, norms = Scorer(len(classes)), bb.blocks[-1], []
    for path in sorted((work / "features_train").glob("*.safetensors"))[:n]:
        f = io.read_features(path, classes=classes)
        labels = [int(c) for c in f.labels]
        if not labels:
            continue
        gt = io.read_mask(gts[path.stem])
        x_in = f.last_block_input.float()[None]
        with torch.no_grad():
            h = blk.ln_1(x_in)
            d = h.shape[-1]
            w, b = blk.attn.in_proj_weight, blk.attn.in_proj_bias
            value_path = blk.attn.out_proj(h @ w[2 * d:].T + b[2 * d:])
            attn = blk.attn(h, h, h, need_weights=False, attn_mask=bb.attention_mask(bb.n_blocks - 1, f.grid, "cpu"))[0]
            mlp = blk.mlp(blk.ln_2(x_in + attn))
            out = bb.dense(x_in + attn + mlp)[0]
            feats = {"output": out, "residual_in": bb.dense(x_in)[0], "value_path": bb.dense(value_path)[0],
                     "attn_out": bb.dense(attn)[0]}
            norms.append([float(t[0, 1:].norm(dim=-1).mean()) for t in (x_in, attn, mlp)])
        for name, protos in (("text", text), ("vision", vision)):
            rows, tau = protos.image_rows(labels).float(), protos.temperature
            f_hat = F.normalize(out.mean(0), dim=-1).requires_grad_(True)
            with torch.enable_grad():
                p = (f_hat @ rows.T / tau).softmax(-1)
                g = torch.stack([torch.autograd.grad(p[i], f_hat, retain_graph=True)[0] for i in range(len(labels))])
            f_hat = f_hat.detach()
            g = g - (g @ f_hat)[:, None] * f_hat[None]
            for key, t in feats.items():
                pix = (F.normalize(t, dim=-1) @ rows.T / tau).softmax(-1)[:, : len(labels)].T
                scorer.add(f"{name}_pixel_{key}", gt, minmax(pix.reshape(len(labels), *f.grid)), labels, f.image_size)
                read = torch.relu(g @ t.T).reshape(len(labels), *f.grid)
                scorer.add(f"{name}_read_{key}", gt, minmax(read), labels, f.image_size)
            raw, _, _ = gradcam(bb, f.last_block_input, f.grid, rows, len(labels), tau)
            scorer.add(f"{name}_gradcam", gt, raw, labels, f.image_size)
    result = {k: v for k, v in sorted(scorer.result().items()) if "_a2" not in k}
    result["norms"] = dict(zip(("x_in", "attn", "mlp"), np.round(np.mean(norms, 0), 2).tolist()))
    print(json.dumps({"toy": str(toy), "images": n, **result}, indent=1))


if __name__ == "__main__":
    main()
