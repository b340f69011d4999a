"""The sixteenth round's rows for train-decoder's ``--feature-store`` (the cached features kept on disk by content),
and predict's (the frozen features of its test views), as rows of the table of ``robustness_cases.py`` (imported at
its end): each one line before any output is written."""

from __future__ import annotations

from collections.abc import Iterator

from robustness_cases import CPU, DECODER_ARGS, Workspace, case


@case("train-decoder --feature-store without --cache-features (it keeps the cached features)",
      "--feature-store", "keeps the features of --cache-features; add --cache-features or drop --feature-store")
def _store_without_cache(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-decoder", ws.pseudo, "-p", ws.text, "-o", ws.out("store_no_cache"), *DECODER_ARGS,
           "--no-cache-features", "--feature-store", ws.out("store_no_cache_dir")]


@case("train-decoder --cache-features --feature-store FILE (a file where the folder goes)",
      "a_file: exists and is not a folder")
def _store_is_a_file(ws: Workspace) -> Iterator[list[object]]:
    target = ws.root / "store_file" / "a_file"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("the user's\n")
    yield ["train-decoder", ws.pseudo, "-p", ws.text, "-o", ws.out("store_file_out"), *DECODER_ARGS,
           "--cache-features", "--feature-store", target]


@case("predict --feature-store FILE (a file where the folder goes)", "a_file: exists and is not a folder")
def _predict_store_is_a_file(ws: Workspace) -> Iterator[list[object]]:
    target = ws.root / "pred_store_file" / "a_file"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("the user's\n")
    yield ["predict", ws.decoder / "decoder.safetensors", "--split", "val", "-o", ws.out("pred_store_file_out"),
           *CPU, "--feature-store", target]


@case("predict --feature-store with --dense (no decoder features run)", "--feature-store",
      "keeps the decoder's frozen features, which --dense maskclip does not run; drop one of them")
def _predict_store_dense(ws: Workspace) -> Iterator[list[object]]:
    yield ["predict", ws.decoder / "decoder.safetensors", "--split", "val", "-o", ws.out("pred_store_dense"), *CPU,
           "--classes", "cat,dog", "--dense", "maskclip", "--feature-store", ws.out("pred_store_dense_dir")]


@case("predict --feature-store with --resize bilinear (WeCLIP's views)", "--feature-store",
      "keeps the features of the bicubic test views")
def _predict_store_bilinear(ws: Workspace) -> Iterator[list[object]]:
    yield ["predict", ws.decoder / "decoder.safetensors", "--split", "val", "-o", ws.out("pred_store_bilinear"), *CPU,
           "--resize", "bilinear", "--feature-store", ws.out("pred_store_bilinear_dir")]


__all__: list[str] = []
