"""`learn-prototypes` descent speed on VOC-like synthetic pixels; prints ONE JSON object.

Default: 1M unit pixel features x 512-d in images of 1024 pixels with 1-3 of 20 classes and 25 background rows
(45 rows, VOC's layout), hard targets, resident in memory (fp32 on a CPU, the stage's choice when it fits).

Timed, alternately, ``--pairs`` times: one full pass of the stage's iteration kernel
(:func:`vpltool.stages.learn_prototypes.descent.chunk_loss_grad`) and one full pass of its floor, the same two skinny
products on the same chunks and threads with nothing else (``skinny_products``). ``fraction_of_bound`` is bound
time / stage time per pair (the issue's bar: >= 0.85); the 3000-iteration time (the paper's T_w) is the median
iteration times 3001. Then ``--iters`` real descent iterations check that the loss goes down. Setup (data
generation, chunking) is timed separately and not counted.

``gflop_per_iter`` counts the two matmuls (logits and gradient) over the rows in play: each pixel is scored only
against its image's classes and the background rows, as `cam` does, not against all 45 rows.

``--study-lr``: instead, the loss normalisation study of docs/learn-prototypes.md on a CLIP-like synthetic problem
(image features in one cone, text prototypes in another): losses along the descent for several learning rates,
under the stage's ``tau**2 * mean CE`` and the two alternatives (``tau * mean``, plain mean).

The result records the machine and the peak memory of the setup and of the descent (host RSS; on CUDA also the
allocator's peak).

    python bench/bench_learn_prototypes.py [--n 1000000] [--dim 512] [--pairs 5] [--device cpu|cuda] [--quick]
    python bench/bench_learn_prototypes.py --study-lr [--iters 3000]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F

from vpltool.config import LearnPrototypesConfig
from vpltool.device import resolve_device, resolve_precision
from vpltool.stages.learn_prototypes import CHUNK_PX, ChunkBuilder, MemorySource, descend, make_targets, project_rows
from vpltool.stages.learn_prototypes.descent import chunk_loss_grad, cpu_workers, loss_and_grad, skinny_products

from benchlib import PeakMemory, machine

QUICK = {"n": 20_000, "iters": 3, "images": 4, "pairs": 1}  # --quick: a smoke test of the script, not a measurement
VOC_LABEL_COUNTS = (0.62, 0.28, 0.10)  # share of VOC train_aug images with 1, 2, 3 labels (approximately)


def voc_like(n: int, dim: int, classes: int, bg: int, px: int, seed: int, sink: ChunkBuilder) -> torch.Tensor:
    """Feed ``sink`` with ``n`` random unit pixels in images of ``px`` pixels; returns the text prototypes ``z``."""
    g = torch.Generator().manual_seed(seed)
    z = project_rows(torch.randn(classes + bg, dim, generator=g))
    images = []
    for _ in range((n + px - 1) // px):
        k = int(torch.multinomial(torch.tensor(VOC_LABEL_COUNTS), 1, generator=g)) + 1
        images.append(tuple(sorted((torch.randperm(classes, generator=g)[:k] + 1).tolist())))
    done = 0
    for labels in sorted(images, key=lambda lab: (len(lab), lab)):  # the stage sorts images by label set
        m = min(px, n - done)
        x = F.normalize(torch.randn(m, dim, generator=g), dim=1)
        cams = torch.rand(len(labels), m, generator=g)
        sink.add(x, make_targets(cams, x, z[classes:], 0.01, "hard", 0.4), labels)
        done += m
    sink.flush()
    return z


def _pass_seconds(source, w: torch.Tensor, tau: float, n: int, kernel, device) -> float:
    """Wall seconds of one full pass over the chunks with ``kernel`` (the stage's thread pool, as in descend)."""
    import time

    from benchlib import synchronize

    with cpu_workers(device) as (pool, workers):
        start = time.perf_counter()
        loss_and_grad(source(), w, tau, n, pool, workers, kernel)
        synchronize(str(device))
        return time.perf_counter() - start


def bench_speed(args: argparse.Namespace) -> dict:
    """The stage's iteration against the floor of its two skinny products, on the same chunks, alternately."""
    import statistics

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    compute = resolve_precision(args.precision, device)
    storage = torch.bfloat16 if compute == torch.bfloat16 else (torch.float16 if args.fp16_storage else torch.float32)
    chunk_px = args.chunk_px or CHUNK_PX[device.type]
    peaks = PeakMemory(str(device))
    source = MemorySource(device)
    with peaks.stage("setup (features made resident)") as setup:
        builder = ChunkBuilder(torch.arange(args.classes), torch.arange(args.classes, args.classes + args.bg),
                               chunk_px, storage, source.add)
        z = voc_like(args.n, args.dim, args.classes, args.bg, args.px_per_image, 0, builder).to(device)
    in_play = sum(len(ch.x) * len(ch.rows) for ch in source.chunks) / args.n
    cfg = LearnPrototypesConfig()
    gflop = 2 * 2 * args.n * args.dim * in_play / 1e9
    w = project_rows(z.float())
    stage_s, bound_s = [], []
    with peaks.stage(f"stage vs bound ({args.pairs} alternating pairs of full passes)"):
        for _ in range(args.pairs + 1):  # the first pair warms allocator and threads up, and is dropped
            stage_s.append(_pass_seconds(source, w, cfg.tau_i, args.n, chunk_loss_grad, device))
            bound_s.append(_pass_seconds(source, w, cfg.tau_i, args.n, skinny_products, device))
    stage_s, bound_s = stage_s[1:], bound_s[1:]
    ratios = [b / a for a, b in zip(stage_s, bound_s)]
    with peaks.stage(f"descend ({args.iters} iterations)") as run:
        _, curve = descend(source, z, tau=cfg.tau_i, lr=cfg.lr, iters=args.iters, total_weight=args.n)
    per_iter = statistics.median(stage_s)
    return {
        "benchmark": "learn-prototypes", "quick": args.quick, "machine": machine(str(device)),
        "n_features": args.n, "dim": args.dim, "rows": args.classes + args.bg, "rows_in_play_mean": round(in_play, 2),
        "device": str(device), "precision": str(compute).replace("torch.", ""),
        "storage": str(storage).replace("torch.", ""), "chunk_px": chunk_px, "chunks": len(source.chunks),
        "threads": torch.get_num_threads(), "gflop_per_iter": round(gflop, 2),
        "pairs": args.pairs, "s_per_iter_median": round(per_iter, 4), "s_per_iter": [round(t, 4) for t in stage_s],
        "bound_s_per_pass": [round(t, 4) for t in bound_s],
        "gflop_per_s": round(gflop / per_iter, 1), "bound_gflop_per_s": round(gflop / statistics.median(bound_s), 1),
        "fraction_of_bound_median": round(statistics.median(ratios), 3),
        "fraction_of_bound_per_pair": [round(r, 3) for r in ratios], "bar_fraction_of_bound": 0.85,
        f"seconds_for_{args.target_iters}_iters": round(per_iter * (args.target_iters + 1), 1),
        "descend_iters": args.iters, "descend_seconds": round(run.seconds, 3),
        "setup_seconds": round(setup.seconds, 1), "loss_first_last": [round(curve[0], 5), round(curve[-1], 5)],
        "peak_memory": peaks.as_list(),
    }


# --------------------------------------------------------------------------------------------- launches
def voc_launches(args: argparse.Namespace) -> dict:
    """Ops one descent iteration dispatches over VOC train_aug's pixels (each launches a kernel on a GPU, a few
    microseconds of the host's time whatever its size), for each ``--chunk-px`` candidate: the chunks the stage's
    :class:`ChunkBuilder` packs 10,582 images of 768 patches into (label sets drawn with VOC's label counts, 1 to 6;
    1-d features: only the packing is computed), times the ops of one chunk's loss and gradient and its ``index_add_``
    (counted on this CPU with a dispatch counter, for a chunk of one label set and a mixed one), plus the step's."""
    import random
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_cam import VOC_LABEL_COUNTS as COUNTS
    from bench_decoder import OpCounter

    from vpltool.stages.learn_prototypes.descent import mean_loss_and_grad

    rng = random.Random(0)
    sets = sorted((tuple(sorted(rng.sample(range(1, args.classes + 1),
                                           rng.choices([k for k, _ in COUNTS], [w for _, w in COUNTS])[0])))
                   for _ in range(args.voc_images)), key=lambda lab: (len(lab), lab))  # the stage's order
    class_rows, bg_rows = torch.arange(args.classes), torch.arange(args.classes, args.classes + args.bg)

    def chunks(chunk_px: int) -> list:
        out: list = []
        builder = ChunkBuilder(class_rows, bg_rows, chunk_px, torch.float32, out.append)
        for labels in sets:
            k = len(labels) + args.bg
            builder.add(torch.zeros(args.voc_px, 1), torch.full((args.voc_px, k), 1.0 / k), labels)
        builder.flush()
        return out

    w = project_rows(torch.randn(args.classes + args.bg, 8))

    def ops(packed: list) -> int:
        """One iteration's ops: the loss and gradient over every chunk, each cut to 16 pixels of 8-d features (the
        same op graph: the count, not the time), and the projected step."""
        small = [type(c)(torch.randn(16, 8), c.targets[:16], c.rows, None if c.absent is None else c.absent[:16])
                 for c in packed]
        with OpCounter() as counter:
            _, grad = mean_loss_and_grad(small, w, 0.03, 16.0 * len(small))
            project_rows(w - 10 * grad)
        return counter.n

    out = {}
    for chunk_px in args.launch_chunk_px:
        packed = chunks(chunk_px)
        out[str(chunk_px)] = {"chunks": len(packed), "mixed_chunks": sum(c.absent is not None for c in packed),
                              "ops_per_iter": ops(packed), "rows_in_play_max": max(len(c.rows) for c in packed)}
    return {"benchmark": "learn-prototypes-launches", "quick": args.quick, "machine": machine("cpu"),
            "images": args.voc_images, "px_per_image": args.voc_px, "pixels": args.voc_images * args.voc_px,
            "classes": args.classes, "background_rows": args.bg, "by_chunk_px": out, "stage_chunk_px": CHUNK_PX,
            "note": "ops per descent iteration (each a kernel launch on a GPU) for VOC train_aug's pixel count; "
                    "counted on the CPU", "peak_memory": []}


# --------------------------------------------------------------------------------------------- lr study
def clip_like(n_images: int, hw: int, dim: int, classes: int, bg: int, seed: int = 0, overlap: float = 0.3,
              semantic: float = 0.35, text: tuple[float, float] = (0.8, 0.6)):
    """Pixels ``normalize(0.8 u_img + semantic * s_owner + noise)``, text ``normalize(a u_txt + b s_row)``.

    ``u_txt`` leans on ``u_img`` by ``overlap``: image-image cosines ~0.6, text-image ~0.1-0.25 (CLIP's gap).
    CAMs: the text-prototype softmax over the image's rows at CLIP's tau_T = 0.01, max-normalised.
    """
    g = torch.Generator().manual_seed(seed)
    n = classes + bg
    basis = torch.linalg.qr(torch.randn(dim, n + 2, generator=g))[0].T
    u_img, sem = basis[0], basis[2:]
    u_txt = F.normalize(overlap * u_img + basis[1], dim=0)
    z = F.normalize(text[0] * u_txt + text[1] * sem + 0.05 * torch.randn(n, dim, generator=g), dim=1)
    images = []
    for _ in range(n_images):
        k = int(torch.multinomial(torch.tensor(VOC_LABEL_COUNTS), 1, generator=g)) + 1
        labels = sorted((torch.randperm(classes, generator=g)[:k] + 1).tolist())
        owner = (torch.randperm(bg, generator=g)[:3] + classes)[torch.randint(0, 3, (hw,), generator=g)]
        fg = torch.randperm(hw, generator=g)[: int(0.35 * hw)]
        owner[fg] = torch.tensor(labels)[torch.arange(len(fg)) * k // len(fg)] - 1
        x = F.normalize(0.8 * u_img + semantic * sem[owner] + 0.5 / dim**0.5 * torch.randn(hw, dim, generator=g), dim=1)
        rows = torch.cat([torch.tensor(labels) - 1, torch.arange(classes, n)])
        probs = (x @ z[rows].T / 0.01).softmax(1)[:, :k].T
        images.append((x, probs / probs.amax(1, keepdim=True).clamp_min(1e-6), labels))
    return z, images


def study_lr(args: argparse.Namespace) -> dict:
    """Final / peak losses and the number of rises along the descent, per normalisation and lr."""
    torch.set_num_threads(args.threads or 1)
    classes, bg, tau = 20, 25, 0.03
    problems = {"A (overlap 0.3, semantic 0.35)": {}, "B (text 0.9/0.45)": {"text": (0.9, 0.45)},
                "C (overlap 0.5, semantic 0.25, text 0.9/0.45)": {"overlap": 0.5, "semantic": 0.25,
                                                                   "text": (0.9, 0.45)}}
    # lr multipliers that turn each normalisation into the stage's tau**2 units (grad of tau**2 mean CE)
    norms = {"tau^2*mean (vpltool)": 1.0, "tau*mean": 1 / tau, "mean": 1 / tau**2}
    out = {"benchmark": "learn-prototypes-lr-study", "quick": args.quick, "machine": machine("cpu"),
           "iters": args.iters, "tau_i": tau, "results": []}
    for name, kw in problems.items():
        z, images = clip_like(args.images, 256, 512, classes, bg, **kw)
        source = MemorySource(torch.device("cpu"))
        builder = ChunkBuilder(torch.arange(classes), torch.arange(classes, classes + bg), 4096, torch.float16,
                               source.add)
        for x, cams, labels in sorted(images, key=lambda it: (len(it[2]), it[2])):
            builder.add(x, make_targets(cams, x, z[classes:], 0.01, "hard", 0.4), labels)
        builder.flush()
        n = sum(len(x) for x, _, _ in images)
        for norm, scale in norms.items():
            for lr in (1.0, 10.0, 100.0):
                _, curve = descend(source, z, tau=tau, lr=lr * scale, iters=args.iters, total_weight=n)
                rises = [b - a for a, b in zip(curve, curve[1:]) if b > a + 1e-9]
                out["results"].append({"problem": name, "loss": norm, "lr": lr, "first": round(curve[0], 4),
                                       "peak": round(max(curve), 4), "final": round(curve[-1], 4),
                                       "rises": len(rises), "largest_rise": round(max(rises, default=0.0), 4)})
                print(json.dumps(out["results"][-1]), file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000, help="pixel features")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--iters", type=int, default=30, help="descend iterations actually run (loss check)")
    p.add_argument("--pairs", type=int, default=5, help="alternating stage / bound passes timed")
    p.add_argument("--target-iters", type=int, default=3000, help="what the time is extrapolated to")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="auto", help="auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16")
    p.add_argument("--fp16-storage", action="store_true", help="keep fp16 features (the stage's choice above its "
                   "memory budget) instead of fp32 (CPU, fp32)")
    p.add_argument("--chunk-px", type=int, default=None, help="pixels per chunk (default: the stage's)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--bg", type=int, default=25, help="background rows")
    p.add_argument("--px-per-image", type=int, default=1024)
    p.add_argument("--study-lr", action="store_true", help="run the loss-normalisation study instead")
    p.add_argument("--launches", action="store_true",
                   help="instead, count the ops one iteration dispatches over VOC's pixels per --launch-chunk-px")
    p.add_argument("--launch-chunk-px", type=int, nargs="+", default=[1 << 17, 1 << 20])
    p.add_argument("--voc-images", type=int, default=10_582)
    p.add_argument("--voc-px", type=int, default=768, help="patches per VOC image (512 x 384 at patch 16)")
    p.add_argument("--images", type=int, default=60, help="--study-lr: images of 256 pixels")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: {QUICK['n']:,} pixels, {QUICK['iters']} iterations (seconds; --study-lr: "
                        f"{QUICK['images']} images)")
    args = p.parse_args(argv)
    if args.quick:
        vars(args).update(QUICK)
        args.threads = args.threads or 1  # tiny ops on a busy host: OpenMP barriers cost more than they save
    if args.launches:
        if args.quick:
            args.voc_images = 200
        print(json.dumps(voc_launches(args)))
        return
    print(json.dumps(study_lr(args) if args.study_lr else bench_speed(args)))


if __name__ == "__main__":
    main()
