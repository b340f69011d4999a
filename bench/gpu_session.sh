#!/usr/bin/env bash
# Issue 28's GPU measurements, packed for a lent GPU machine: its commands run at most 10 minutes each and the
# machine has no package registry, so the packages it lacks travel as wheels and each part below fits one call.
#
#   bash bench/gpu_session.sh wheels   # HERE, once (needs a registry): .whl/ (git-ignored) with open_clip_torch,
#                                           # ftfy, wcwidth (Python 3.12 wheels) and pydensecrf2's sdist; carry .whl
#   bash bench/gpu_session.sh a        # THERE: set-up, pytest -m cuda, the decoder's paper recipe with and
#                                           # without CUDA graphs, where cam's and extract's time goes (~9 min)
#   bash bench/gpu_session.sh b        # THERE: set-up, a 2,000-photo VOC-like run of every stage (~6 min)
#   bash bench/gpu_session.sh m        # THERE: set-up, pytest -m cuda with its per-test report (the method
#                                           # matrix's CUDA cells included), the decoder's paper recipe (~7 min)
#   bash bench/gpu_session.sh amx      # THERE: set-up, pytest -m cuda, then the whole CPU suite but its slow
#                                           # checks on the machine's own CPU (its Xeon has AMX: --precision auto is
#                                           # bf16 there), 14 workers (~6 min)
#   bash bench/gpu_session.sh c        # THERE: set-up, the host's part with the real device, cam against
#                                           # CLIP-ES (CLIP_ES=/path/to/a/clone, carried) with the one-image
#                                           # phases, and the torch dense CRF (~9 min)
#   REFS=DIR bash bench/gpu_session.sh refs  # HERE, once: .refs/ (git-ignored), the files of the reference clones
#                                           # in DIR (bench_vs_reference.py's names) that the vs-reference benches
#                                           # read (bench/refs_manifest.txt), each clone's commit in its COMMIT;
#                                           # carry .refs and .whl (about 30 MiB together)
#   bash bench/gpu_session.sh vsref    # THERE: set-up, the vs-reference benches on the host's CPU (its Xeon):
#                                           # Talk2DINO (a), (b), (c), CorrCLIP, ProxyCLIP, TextRegion (and RADSeg
#                                           # where transformers is installed), each a pair of one-thread
#                                           # processes, all at once on its cores, into vs_reference_host_GPU.json,
#                                           # textregion_host_GPU.json, radseg_host_GPU.json (~6 min)
#   bash bench/gpu_session.sh session  # THERE: set-up, pytest -m cuda (SAM 3's and ActiveSAM's cells among the
#                                           # method matrix's) beside vsref on the host's other cores (~8 min);
#                                           # carry .whl and .refs
#   bash bench/gpu_session.sh voc      # THERE: set-up, a VOC-like run of every stage on the GPU at the size that
#                                           # fits one call (3,000 photos, 2,000 decoder iterations), projected to
#                                           # VOC's 10,582 and 30,000 (labelled a projection) (~7 min)
#   bash bench/gpu_session.sh sam3     # THERE: set-up, SAM 3 and ActiveSAM at fp32, bf16 and fp16 against fp32 on
#                                           # the toy SAM 3 and the reduced random one (Meta's layout), peak GPU
#                                           # memory, a folder one photo at a time against batched
#                                           # (bench_sam3_device.py, under 4 min after the set-up)
# The device time of a session (30 min, each call's start included) fits a and b; c is for a second session.
#
# Each step has its own time limit (STEP_LIMIT_S scales them) and writes one JSON file (and its stderr) into
# ${OUT:-bench/results/gpu}, named after the GPU (h100, h200); a step that fails or runs out of time is noted in
# steps.log and the next one runs, so a call always brings back what it measured. Nothing here judges a figure: the
# JSON files carry the bars, and docs/performance.md is rebuilt from them (make_table.py) where they are kept.
set -uo pipefail
cd "$(dirname "$0")/.."

PART=${1:-}
OUT_DIR=${OUT:-bench/results/gpu}
SCALE=${STEP_LIMIT_S:-1}

wheels() {
  local platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
  mkdir -p .whl
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
    -d .whl open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 timm==1.0.31 segment-anything==1.0 webdataset==1.0.2 braceexpand==0.1.7 \
    scikit-learn==1.6.1 joblib==1.4.2 threadpoolctl==3.6.0 einops==0.8.1 \
    transformers==5.24.0 huggingface_hub==1.31.0 tokenizers==0.23.3 safetensors==0.8.0 nltk==3.10.4 regex==2026.11.19
  # the references of vsref (CorrCLIP's DBSCAN, ProxyCLIP); vpltool[sam3] (transformers 5.24 and the versions it
  # checks at import) and vpltool[activesam] (nltk)
  python3 -m pip download -q --no-deps --no-binary=:all: -d .whl pydensecrf2==1.1
  ls -l .whl
}

refs() {
  # only the files the benches' reference processes open (traced on the clones; a run from .refs checks the list)
  local src=${REFS:?"REFS=/folder/of/the/clones (Talk2DINO, dinov2, CorrCLIP, ProxyCLIP, dino, TextRegion)"}
  rm -rf .refs && mkdir -p .refs
  grep -v '^#' bench/refs_manifest.txt | while read -r path; do
    [ -n "$path" ] || continue
    mkdir -p ".refs/$(dirname "$path")" && cp "$src/$path" ".refs/$path" || exit 2
  done
  for clone in .refs/*/; do
    git -C "$src/$(basename "$clone")" rev-parse HEAD > "$clone/COMMIT"
  done
  du -sh .refs
}

setup() {
  # the image has torch, typer, rich, safetensors, scikit-image, opencv, tensorboard; these it lacks (its timm is
  # older than the DINOv3 / C-RADIOv3 configs)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "setup: the wheels did not install (carry .whl: bash bench/gpu_session.sh wheels)" >&2; exit 2; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  # (a part that runs no CRF sets SKIP_DENSECRF=1: the build is device time for nothing)
  [ -n "${SKIP_DENSECRF:-}" ] || python3 -m pip install -q --no-index --no-deps --no-build-isolation \
    .whl/pydensecrf2-*.tar.gz >/dev/null 2>&1 || echo "setup: pydensecrf2 did not build; the steps that need it fail alone" >&2
  python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null
  export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
  GPU=$(python3 -c "import torch; n = torch.cuda.get_device_name(); print('h200' if 'H200' in n else 'h100' if 'H100' in n else 'gpu')")
  mkdir -p "$OUT_DIR"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT_DIR/machine_$GPU.txt"
}

# step NAME LIMIT_S COMMAND...: COMMAND's stdout into NAME_GPU.json (kept only when it exits 0), its stderr beside
step() {
  local name=$1 limit=$2
  shift 2
  local out="$OUT_DIR/${name}_$GPU.json" start=$SECONDS
  timeout "$(( limit * SCALE ))" "$@" > "$out.tmp" 2> "$OUT_DIR/${name}_$GPU.err"
  local rc=$?
  if [ $rc -eq 0 ]; then mv "$out.tmp" "$out"; else rm -f "$out.tmp"; fi
  echo "$name: rc $rc in $(( SECONDS - start )) s" | tee -a "$OUT_DIR/steps.log"
}

# the host CPU's vs-reference benches, each its own pair of one-thread processes, run at once (the host has 16
# cores; each JSON says how many benches ran beside it)
vsref() {
  local work=/tmp/vsref
  export VSREF_BESIDE="run at once with the other vs-reference benches of bench/gpu_session.sh vsref (up to 8 benches, 16 one-thread processes on the host's cores)${VSREF_NOTE:+, $VSREF_NOTE}"
  for m in talk2dino talk2dino_step talk2dino_run corrclip proxyclip; do
    local pairs=5
    [ "$m" = talk2dino_step ] && pairs=31
    step "vs_reference_${m}_host" 420 python3 bench/bench_vs_reference.py --refs .refs --methods "$m" --pairs $pairs \
      --work "$work/$m" &
  done
  step textregion_host 420 python3 bench/bench_textregion.py --ref .refs/TextRegion --work "$work/textregion" \
    --rounds 5 &
  if python3 -c "import transformers" 2>/dev/null; then  # RADSeg's SigLIP 2 text tower (not carried: 14 MB more)
    step radseg_host 420 python3 bench/bench_radseg.py --ref .refs/RADSeg --radio-ref .refs/RADIO --work "$work/radseg" &
  else
    echo "radseg_host: skipped (this machine has no transformers)" | tee -a "$OUT_DIR/steps.log"
  fi
  wait
  python3 bench/bench_vs_reference.py --merge "$OUT_DIR"/vs_reference_*_host_"$GPU".json \
    > "$OUT_DIR/vs_reference_host_$GPU.json" && rm -f "$OUT_DIR"/vs_reference_*_host_"$GPU".json
}

case "$PART" in
  wheels) wheels ;;
  refs) refs ;;
  vsref)
    setup
    { grep -m1 "model name" /proc/cpuinfo; grep -o -m1 -w amx_bf16 /proc/cpuinfo || echo "no amx_bf16"; nproc; } \
      | tee "$OUT_DIR/cpu_host.txt"
    vsref
    ;;
  session)
    setup
    { grep -m1 "model name" /proc/cpuinfo; grep -o -m1 -w amx_bf16 /proc/cpuinfo || echo "no amx_bf16"; nproc; } \
      | tee "$OUT_DIR/cpu_host.txt"
    # the CUDA tests on two of the host's threads, the vs-reference pairs (one thread each) on the others
    OMP_NUM_THREADS=2 step pytest_cuda 300 python3 -m pytest -q -m cuda -p no:cacheprovider -rs \
      --junitxml="$OUT_DIR/pytest_cuda.xml" &
    VSREF_NOTE="beside pytest -m cuda (two threads)" vsref
    wait
    ;;
  voc)
    setup
    step gpu_pipeline_voc 450 python3 bench/bench_gpu_pipeline.py --device cuda --images 3000 --decoder-iters 2000 \
      --progress "$OUT_DIR/gpu_pipeline_voc_${GPU}_partial.json"
    ;;
  sam3)
    SKIP_DENSECRF=1 setup
    step sam3_device 240 python3 bench/bench_sam3_device.py --device cuda --budget-s 150 --work /tmp/sam3_device \
      --out "$OUT_DIR/sam3_device_${GPU}_partial.json"
    # segment's --dense sam3 hook on CUDA: the loader's batch through one encoder forward, equal to one at a time
    step pytest_sam3_cuda 90 python3 -m pytest -q -m cuda -p no:cacheprovider -rs tests/test_bench_sam3_device.py
    ;;
  a)
    setup
    step pytest_cuda 100 python3 -m pytest -q -m cuda -p no:cacheprovider
    step decoder_paper 230 python3 bench/bench_decoder.py --mode paper --device cuda --iters 700 --warmup 350 \
      --compile none,reduce-overhead
    step profile 180 python3 bench/profile_stage.py --device cuda --images 512
    ;;
  b)
    setup
    step gpu_pipeline 480 python3 bench/bench_gpu_pipeline.py --device cuda --images 2000 --decoder-iters 2000
    ;;
  m)
    setup
    step pytest_cuda 300 python3 -m pytest -q -m cuda -p no:cacheprovider -rs --junitxml="$OUT_DIR/pytest_cuda.xml"
    step decoder_paper 230 python3 bench/bench_decoder.py --mode paper --device cuda --iters 700 --warmup 350 \
      --compile none,reduce-overhead
    ;;
  amx)
    setup
    { grep -m1 "model name" /proc/cpuinfo; grep -o -m1 -w amx_bf16 /proc/cpuinfo || echo "no amx_bf16"; } \
      | tee "$OUT_DIR/cpu.txt"
    step pytest_cuda 200 python3 -m pytest -q -m cuda -p no:cacheprovider -rs --junitxml="$OUT_DIR/pytest_cuda.xml"
    step pytest_cpu 320 python3 -m pytest -q -n 14 --dist loadfile -m "not cuda and not slow" -p no:cacheprovider \
      --junitxml="$OUT_DIR/pytest_cpu.xml"
    ;;
  c)
    setup
    step host 150 python3 bench/bench_host.py --device cuda --stages extract,cam,predict
    step cam 240 python3 bench/bench_cam.py --device cuda --images 100 ${CLIP_ES:+--clip-es "$CLIP_ES"}
    step densecrf 120 python3 bench/bench_densecrf.py --device cuda --images 1000
    ;;
  *)
    sed -n '2,/^set -uo/p' "$0" | sed '$d' >&2
    exit 2
    ;;
esac
