# vpltool — one file target per stage, so re-running `make` only redoes stale stages.
# Make variables are the experiment config; each stage also records its params in its output's metadata.
.DELETE_ON_ERROR:
# every file a pattern rule makes (the CAM and mask folders of each refinement, their scores, the decoders) is kept,
# not removed as an intermediate: .PRECIOUS at the end of this file lists every pattern rule's target pattern
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV ?= .venv
VPL := $(VENV)/bin/vpltool
export HF_HUB_OFFLINE ?= 1

# ---- the experiment (defaults = the offline demo world with the shipped toy CLIP)
RUN ?= runs/demo
DATA ?= $(RUN)/world
TRAIN_SPLIT ?= train
# split the train-side stages (text CAMs, vision CAMs, pseudo masks) are scored on; empty = the split they ran on.
# VOC convention: they run on train_aug (10,582) and are reported on train (1,464), its subset with official masks
EVAL_SPLIT ?=
VAL_SPLIT ?= val
MODEL ?= vpltool-toy
PRETRAINED ?= none
DEVICE ?= auto
TEMPLATES ?= a photo of a {}.
BACKGROUND ?= grass,sky,wall,water
# CAA's box threshold x max (cam --box-threshold; CLIP-ES: VOC 0.4, COCO 0.7, as make voc / make coco set it).
# The demo world's, chosen on train (studies/study_box_threshold.py, studies/results/box_threshold.md): the
# toy CLIP's GradCAM maps cover their objects but also scattered background, so CAA spreads their peaks only
BOX_THR ?= 0.95
# CAM refinement of the pipeline's own CAMs (RUN/cams_text, the seeds VPL phase 1 learns W from, RUN/cams_vision,
# RUN/pseudo): none | caa (CLIP-ES) | caa+sgc (SSR). The demo keeps none for W's seeds (the toy study's choice, made
# when CAA still lowered the toy's CAMs at VOC's box threshold; docs/learn-prototypes.md). Use REFINE=caa on real CLIP.
REFINE ?= none
# the refinements the demo compares on the same features and W: text and vision CAMs and the CRF masks of each, on
# both splits; REFINE's at RUN's top level, any other R's under RUN/R/ (metrics under RUN/metrics/R/). Empty: REFINE
# alone, as `make voc` and `make coco` (the paper's pipeline)
REFINES ?= none caa caa+sgc
# whose vision-CAM pseudo masks train the decoder: auto = the candidate (a refinement R of REFINES, or R+sam with
# PSEUDO's sam: R's SAM masks) whose decoder scores the highest mIoU on the training split (a decoder is trained on
# every candidate's masks, RUN[/R]/decoder or RUN[/R]/sam/decoder, and predicts the training split; `vpltool
# choose-pseudo` checks and prints the scores; never val), or one candidate's name (its decoder alone is trained). The pseudo masks' own mIoU pointed the wrong way on harder worlds (issue 37,
# docs/pipeline.md)
PSEUDO_REFINE ?= auto
# predict's options for the rule's prediction on the training split: a ranking, at a third of the defaults' cost
CHOICE_PRED_ARGS ?= --scales 1 --no-flip
# and where those predictions keep the frozen CLIP's features of their views (predict --feature-store, by content):
# the candidates' decoders share the CLIP, views and images, so the second reads the first's instead of running the
# CLIP over the split again (the same masks, bit for bit). make voc / make coco: none (a split's views in memory)
CHOICE_STORE ?= $(RUN)/feature_store
# which pseudo masks the decoder may train on: crf (dense CRF, the paper's), sam (`vpltool sam-pseudo`: SAM's
# automatic masks, each given the class of the CRF mask that covers most of it; SAM-enhanced pseudo labels), sam3
# (SAM 3 prompted with the labels, SAM3_PSEUDO_WEIGHTS), or several ("crf sam": every refinement's CRF masks R and
# SAM masks R+sam are candidates of PSEUDO_REFINE's choice).
# SAM's masks of refinement R live in RUN[/R]/sam/ (pseudo, pseudo_val, decoder, pred_train), their scores in
# RUN/metrics[/R]/sam/. make voc / make coco take it as well (PSEUDO=sam with SAM_PSEUDO_WEIGHTS=SAM's checkpoint)
PSEUDO ?= crf
# the SAM of sam-pseudo and its automatic-mask settings. The demo's is a toy SAM trained as the shipped one (objects
# only) on the scenes of ANOTHER world (seed 20; its model.json names it), never the demo's train or val scenes; its
# settings and rule chosen on train (docs/pipeline.md, sam-pseudo). make voc / make coco: vit_h, the generator's
# defaults and the released rule's default, and the checkpoint given as SAM_PSEUDO_WEIGHTS
SAM_PSEUDO_MODEL ?= toy
SAM_PSEUDO_WEIGHTS ?= vpltool/assets/toy-sam-world20/model.safetensors
SAM_PSEUDO_ARGS ?= --points-per-side 16 --pred-iou-thresh 0.4 --stability-score-thresh 0.4
# sam3 in PSEUDO: SAM 3 prompted with each image's labels, its instances gated by the CRF mask (R+sam3 candidates,
# RUN[/R]/sam3/); its weights (a folder of Hugging Face's layout or Meta's sam3.pt). The demo's is the toy SAM 3
# (transformers' Sam3Model at toy size) trained on the scenes of ANOTHER world (seed 20; its model.json names it),
# never the demo's train or val scenes; `make sam3-pseudo`. make voc / make coco: SAM3_PSEUDO_WEIGHTS=SAM 3's weights
SAM3_PSEUDO_WEIGHTS ?= vpltool/assets/toy-sam3
# the demo's threshold and gate, chosen on train by the pseudo masks' mIoU (studies/study_sam3_pseudo_demo.py,
# studies/results/sam3_pseudo_settings.json): the toy's instances score below Meta's 0.5, and any CAM gate lowered
# the masks. make voc / make coco: sam-pseudo's defaults (Meta's 0.5, the gate 0.5)
SAM3_PSEUDO_ARGS ?= --sam3-threshold 0.02 --sam3-gate 0
# SSR (AAAI 2026; docs/pipeline.md): REFINE=caa+sgc masks CAA's affinity with K-means groups of SLIC superpixels
# (SGC_SEGMENTS superpixels, SGC_CLUSTERS groups, SGC_POSITION: weight of position against colour); AFFINITY=dino or
# clip+dino builds CAA from a timm ViT's attention (DINO_MODEL; DINO_WEIGHTS hub | FILE | none = random), mixed
# AFFINITY_WEIGHT (CLIP's share) : rest. Offline, DINO_WEIGHTS=hub needs the weights in the Hugging Face cache
AFFINITY ?= clip
AFFINITY_WEIGHT ?= 0.4
# the demo's DINO is the shipped toy DINO (`make toy-dino`: timm's test_vit, self-supervised on the world's train
# images); make voc / make coco use DINO ViT-S/16
DINO_MODEL ?= test_vit
DINO_WEIGHTS ?= vpltool/assets/toy-dino/model.safetensors
# affinity rows of the demo's table, beside REFINES: R@A is `cam --refine R --affinity A` (RUN/R@A, metrics under
# RUN/metrics/R@A); the decoder's masks are still chosen among REFINES
AFFINITY_ROWS ?= caa@dino caa@clip+dino
SGC_SEGMENTS ?= 256
SGC_CLUSTERS ?= 32
SGC_POSITION ?= 0
# $(call cam_args,R): cam's options for refinement R (the affinity options only where CAA runs: none has no affinity)
# (R may be R@A: refinement R with affinity A instead of AFFINITY)
cam_args = $(call cam_args_of,$(firstword $(subst @, ,$(1))),$(or $(word 2,$(subst @, ,$(1))),$(AFFINITY)))
cam_args_of = $(strip --box-threshold $(BOX_THR) --refine $(1) $(if $(filter-out none,$(1)),--affinity $(2)) \
  $(if $(filter caa+sgc,$(1)),--sgc-segments $(SGC_SEGMENTS) --sgc-clusters $(SGC_CLUSTERS) --sgc-position $(SGC_POSITION)) \
  $(if $(and $(filter-out none,$(1)),$(filter clip+dino,$(2))),--affinity-weight $(AFFINITY_WEIGHT)) \
  $(if $(and $(filter-out none,$(1)),$(filter-out clip,$(2))),--dino-model $(DINO_MODEL) --dino-weights $(DINO_WEIGHTS)))
# the refinement of a CAM or mask folder's parent D: REFINE for RUN itself, R for RUN/R
refine_of = $(if $(filter $(RUN),$(1)),$(REFINE),$(notdir $(1)))
# $(call refine_metrics,R): where refinement R's eval JSONs go
refine_metrics = $(if $(filter $(REFINE),$(1)),$(RUN)/metrics,$(RUN)/metrics/$(1))
TAU_I ?= 0.03
ITERS ?= 3000
LR ?= 10
# the cores (nproc alone would count OMP_NUM_THREADS, which this Makefile sets to 1 for its commands, below)
WORKERS ?= $(shell env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || echo 2)
# torch threads per command: `make demo` runs WORKERS commands at once on WORKERS cores, and torch's default (a
# thread per core in each) oversubscribes them: its OpenMP threads spin while waiting, and on 2 cores that made the
# demo's commands several times slower. One each, unless the environment says otherwise (OMP_NUM_THREADS=4 make ...)
OMP_NUM_THREADS ?= 1
export OMP_NUM_THREADS
# reproducible mode (`vpltool --reproducible`, docs/reproduce.md) for every command of the run: --precision auto is
# fp32 and each library is capped at AVX2 with one thread, so the figures are the same bits on every x86-64 CPU (AVX2,
# AVX-512, AMX). `make demo`, `make sgc`, `make affinity` and `make dense`, whose figures the README quotes, turn it
# on (REPRODUCIBLE=0 runs them fast); a run of `make report`, `make voc` or `make coco` is fast unless REPRODUCIBLE=1
REPRODUCIBLE ?= $(if $(filter 1,$(VPLTOOL_REPRODUCIBLE)),1,0)
export VPLTOOL_REPRODUCIBLE := $(if $(filter 1,$(REPRODUCIBLE)),1,0)
WORLD_TRAIN ?= 500
WORLD_VAL ?= 200
SEED ?= 0
# decoder for the demo world: small (the toy CLIP is tiny), short schedule; the paper's is --iters 30000 at 320 px.
# Its cached features are kept in RUN/feature_store by content (--feature-store): the decoders of the refinements
# train on the same images, so the second reads the first's instead of running the CLIP over every image again
DEC_ITERS ?= 600
DEC_ARGS ?= --dim 64 --layers 1 --heads 4 --crop-size 96 --batch-size 16 --cache-features \
  --feature-store $(RUN)/feature_store
# score text CAMs, vision CAMs and CRF masks on the held-out split too (W is learned on TRAIN_SPLIT only); the demo
# world does, `make voc`/`make coco` do not (the paper reports seeds and masks on train, segmentation on val)
HELDOUT ?= 1
# with HELDOUT: the table's rows of `vpltool diagnose` on val too (pixel classifier, GradCAM per layer); DIAGNOSE=
# leaves that stage out (tests/test_demo_quality.py, whose bars read none of its rows)
DIAGNOSE ?= 1
# extra `vpltool learn-prototypes` options (e.g. --pixel-fraction 0.25 for COCO-scale data, docs/reproduce.md)
LEARN_ARGS ?=
# extra `vpltool predict` options (the paper recipe adds --crf: test-time CRF, Table 3's last row)
PRED_ARGS ?=
# CMPA (SSR's cross-modal prototype alignment) weight in train-decoder; 0 = off (the default), SSR uses 0.1
LAMBDA_PROTO ?= 0
# open vocabulary: classes held out of train-decoder (comma-separated; their pixels ignored, their row dropped) and
# the class names predict scores with text prototypes (a file or a,b,c; empty = the decoder's own classes). A decoder
# trained with IGNORE_CLASSES needs PRED_CLASSES (e.g. every class of the dataset) to predict; docs/decoder.md
IGNORE_CLASSES ?=
PRED_CLASSES ?=
# issue 35, the training-free dense CLIP family (docs/open-vocabulary.md), scored beside the pipeline: DENSE's
# methods segment the val split with no labels (`segment`); DENSE_SEEDS's also make seeds on the training split
# (`cam --dense`, labels known) with their CRF masks, and score the decoder's classes through `predict --classes
# --dense` (every class is unseen by a training-free method; the names come from DATA/classes.txt, a folder
# dataset's, as the demo world's). Empty: none (make voc / make coco)
DENSE ?= none maskclip sclip clearclip naclip sc-clip proxyclip cass trident
DENSE_SEEDS ?= maskclip
# each method's segmentor on the demo world, chosen on the training split (first 100 images; never val) by
# studies/study_dense_demo.py (studies/results/dense_demo.json, with the toy CLIP shipped in round 11): the short
# side and windows (the method's own x 96/224, the toy's native side over CLIP's, or 96) and the probability
# threshold; the rest is the method's
DENSE_SIZE_maskclip ?= --short-side 192 --slide-crop 192 --slide-stride 96
DENSE_SIZE_sclip ?= --short-side 144 --slide-crop 96 --slide-stride 48
DENSE_SIZE_clearclip ?= --short-side 192 --slide-crop 192 --slide-stride 96
DENSE_SIZE_naclip ?= --short-side 144
DENSE_SIZE_none ?= --short-side 192 --slide-crop 192 --slide-stride 96
DENSE_THR_maskclip ?= 0.5
DENSE_THR_sclip ?= 0.7
DENSE_THR_clearclip ?= 0.5
DENSE_THR_naclip ?= 0.9
DENSE_THR_none ?= 0.99
# SC-CLIP and ProxyCLIP (studies/results/dense_demo_ovss.json, chosen the same way; ProxyCLIP's proxy model is
# the toy DINO, DINO_MODEL / DINO_WEIGHTS)
DENSE_SIZE_sc-clip ?= --short-side 144 --slide-crop 96 --slide-stride 48
DENSE_SIZE_proxyclip ?= --short-side 144 --slide-crop 144 --slide-stride 48 --proxy-model $(DINO_MODEL) \
  --proxy-weights $(DINO_WEIGHTS)
DENSE_THR_sc-clip ?= 0.7
DENSE_THR_proxyclip ?= 0.3
# CASS (studies/results/dense_demo_cass.json, chosen the same way: the whole image; its proxy the toy DINO)
DENSE_SIZE_cass ?= --short-side 144 --proxy-model $(DINO_MODEL) --proxy-weights $(DINO_WEIGHTS)
DENSE_THR_cass ?= 0.9
# Trident with its SAM prompt refinement, as its published figures run (studies/results/dense_demo_trident.json,
# chosen the same way, with --minimal-area: 225 or 10; its proxy the toy DINO, its SAM the shipped toy SAM)
SAM_MODEL ?= toy
SAM_WEIGHTS ?= vpltool/assets/toy-sam/model.safetensors
DENSE_SIZE_trident ?= --short-side 144 --slide-crop 144 --slide-stride 144 --proxy-model $(DINO_MODEL) \
  --proxy-weights $(DINO_WEIGHTS) --sam-model $(SAM_MODEL) --sam-weights $(SAM_WEIGHTS) --sam-refine --minimal-area 10
DENSE_THR_trident ?= 0.4
# CorrCLIP, OV-Stitcher and TextRegion with SAM 3's region masks (`make sam3-regions`: `segment --dense M
# --region-masks sam3`, the toy SAM 3 of SAM3_REGION_WEIGHTS prompted with the run's class names and background
# words), RUN/dense/M@sam3/: each method's windows and threshold those chosen on train for its row with the toy SAM's
# regions (docs/open-vocabulary.md: CorrCLIP's segment line, studies/results/dense_demo_ov_stitcher.json,
# studies/results/textregion_demo.json), so that the regions alone differ
SAM3_REGIONS ?= corrclip ov-stitcher textregion
SAM3_REGION_WEIGHTS ?= $(SAM3_PSEUDO_WEIGHTS)
DENSE_SIZE_corrclip@sam3 ?= --short-side 144 --slide-crop 144 --slide-stride 48 --proxy-model $(DINO_MODEL) \
  --proxy-weights $(DINO_WEIGHTS)
DENSE_SIZE_ov-stitcher@sam3 ?= --short-side 448 --slide-crop 448 --slide-stride 224 --proxy-model $(DINO_MODEL) \
  --proxy-weights $(DINO_WEIGHTS)
DENSE_SIZE_textregion@sam3 ?= --short-side 288 --long-side 432 --region-crop 144
DENSE_THR_corrclip@sam3 ?= 0.2
DENSE_THR_ov-stitcher@sam3 ?= 0.6
DENSE_THR_textregion@sam3 ?= 0.9
# the instance score above which a toy SAM 3 instance is a region (--confidence-threshold; Meta's 0.5 unless set),
# each method's chosen on train by studies/study_sam3_regions_demo.py (studies/results/sam3_regions_demo.json)
SAM3_REGION_CONF_corrclip ?= 0.5
SAM3_REGION_CONF_ov-stitcher ?= 0.1
SAM3_REGION_CONF_textregion ?= 0.5
# what the features depend on: the rendered world by default; set DATA_DEP= for a real dataset root
DATA_DEP ?= $(RUN)/world/_stage.json
# what the features depend on besides the data: the shipped toy CLIP's weights; set MODEL_DEP= for other models
MODEL_DEP ?= vpltool/assets/toy-clip/open_clip_model.safetensors
EVAL_SPLIT_ARG = $(if $(EVAL_SPLIT),--split $(EVAL_SPLIT))

# ---- the paper's recipes (make voc / make coco): each setting can still be overridden on the command line
# $(call pick,VAR,default): VAR's command-line value if one was given, else the recipe's default
pick = $(if $(filter command line,$(origin $(1))),$($(1)),$(2))
# settings shared by both datasets: VPL phase 1 (tau_I 0.03, lr 10, 3000 iterations) and phase 2 (SGD recipe,
# batch 6, 30,000 iterations, crop 320 = DecoderConfig's defaults), CLIP-ES CAMs with CAA and its single prompt
PAPER_ARGS = DATA_DEP= MODEL_DEP= MODEL=$(call pick,MODEL,ViT-B-16) PRETRAINED=$(call pick,PRETRAINED,openai) \
  CHOICE_STORE=$(call pick,CHOICE_STORE,) \
  TEMPLATES='$(call pick,TEMPLATES,clip-es)' REFINE=$(call pick,REFINE,caa) REFINES='$(call pick,REFINES,)' \
  AFFINITY_ROWS='$(call pick,AFFINITY_ROWS,)' DINO_MODEL=$(call pick,DINO_MODEL,vit_small_patch16_224.dino) \
  DINO_WEIGHTS=$(call pick,DINO_WEIGHTS,hub) \
  TAU_I=$(call pick,TAU_I,0.03) \
  ITERS=$(call pick,ITERS,3000) LR=$(call pick,LR,10) DEC_ITERS=$(call pick,DEC_ITERS,30000) \
  DEC_ARGS='$(call pick,DEC_ARGS,--recipe vpl)' PRED_ARGS='$(call pick,PRED_ARGS,--crf)' \
  VAL_SPLIT=$(call pick,VAL_SPLIT,val) HELDOUT=$(call pick,HELDOUT,) DENSE='$(call pick,DENSE,)' \
  DENSE_SEEDS='$(call pick,DENSE_SEEDS,)' PSEUDO='$(call pick,PSEUDO,crf)' \
  SAM_PSEUDO_MODEL=$(call pick,SAM_PSEUDO_MODEL,vit_h) SAM_PSEUDO_WEIGHTS=$(call pick,SAM_PSEUDO_WEIGHTS,) \
  SAM_PSEUDO_ARGS='$(call pick,SAM_PSEUDO_ARGS,)' SAM3_PSEUDO_WEIGHTS=$(call pick,SAM3_PSEUDO_WEIGHTS,) \
  SAM3_PSEUDO_ARGS='$(call pick,SAM3_PSEUDO_ARGS,)'
VOC_ARGS = RUN=$(call pick,RUN,runs/voc) DATA=$(VOC_ROOT) TRAIN_SPLIT=$(call pick,TRAIN_SPLIT,train_aug) \
  EVAL_SPLIT=$(call pick,EVAL_SPLIT,train) BACKGROUND=$(call pick,BACKGROUND,voc) BOX_THR=$(call pick,BOX_THR,0.4)
COCO_ARGS = RUN=$(call pick,RUN,runs/coco) DATA=$(COCO_ROOT) TRAIN_SPLIT=$(call pick,TRAIN_SPLIT,train) \
  EVAL_SPLIT=$(call pick,EVAL_SPLIT,) BACKGROUND=$(call pick,BACKGROUND,coco) BOX_THR=$(call pick,BOX_THR,0.7)
# refuse at once (before setup runs) when the dataset root is missing: one line, exit 2
ifneq ($(filter voc,$(MAKECMDGOALS)),)
ifeq ($(strip $(VOC_ROOT)),)
$(error make voc needs VOC_ROOT=/path/to/VOC2012 (a PASCAL VOC 2012 root with SegmentationClassAug and train_aug.txt; see docs/reproduce.md))
endif
endif
ifneq ($(filter voc coco,$(MAKECMDGOALS)),)
ifneq ($(filter sam,$(PSEUDO)),)
ifeq ($(filter command line,$(origin SAM_PSEUDO_WEIGHTS)),)
$(error make $(filter voc coco,$(MAKECMDGOALS)) with PSEUDO=$(PSEUDO) needs SAM_PSEUDO_WEIGHTS=/path/to/sam_vit_h_4b8939.pth (SAM's released checkpoint; SAM_PSEUDO_MODEL=vit_b or vit_l for another size; see docs/reproduce.md))
endif
endif
endif
ifneq ($(filter sam3,$(PSEUDO)),)
ifeq ($(strip $(if $(filter voc coco,$(MAKECMDGOALS)),$(filter command line,$(origin SAM3_PSEUDO_WEIGHTS)),$(SAM3_PSEUDO_WEIGHTS))),)
$(error PSEUDO=$(PSEUDO) needs SAM3_PSEUDO_WEIGHTS=/path/to/sam3 (SAM 3's weights: a folder of Hugging Face's layout, or Meta's sam3.pt; see docs/pipeline.md))
endif
endif
ifneq ($(filter coco,$(MAKECMDGOALS)),)
ifeq ($(strip $(COCO_ROOT)),)
$(error make coco needs COCO_ROOT=/path/to/coco (a COCO 2014 WSSS root with SegmentationClass and train.txt/val.txt; see docs/reproduce.md))
endif
endif

.PHONY: help setup setup-demo lint test test-fast demo world features text-prototypes cams-text learn-prototypes cams-vision \
        pseudo decoder decoders predict heldout refines diagnose dense dense-metrics affinity sgc sam sam3 radseg report voc coco bench parity docs toy-clip toy-dino toy-sam toy-sam-world20 toy-sam3 toy-radio \
        clean-demo weclip decoder-seeds

## Create .venv and install vpltool with its CRF and test extras (idempotent)
setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	# torch and torchvision pinned together in one command: installing open_clip later would upgrade torch
	$(VENV)/bin/pip install -q torch==2.14.1 torchvision==0.29.1 -e '.[crf,test]'
	touch $(VENV)/.installed-demo $@

## Create .venv and install what `make demo` runs: vpltool with its CRF extra, no test extras (idempotent)
# the pipeline's commands use none of the test extras (pytest, Gradio, transformers, ONNX Runtime, scikit-learn, ...),
# whose install costs CPU time (bench/bench_demo.py --with-setup times it). A current `make setup` (.installed) has
# installed all this already
setup-demo: $(VENV)/.installed-demo
$(VENV)/.installed-demo: pyproject.toml
	if [ ! $(VENV)/.installed -nt pyproject.toml ]; then \
	  { test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV); } && \
	  $(VENV)/bin/pip install -q torch==2.14.1 torchvision==0.29.1 -e '.[crf]'; fi
	touch $@

## Lint (ruff, pinned in the test extra): style, unused names, import order
lint: setup
	$(VENV)/bin/ruff check vpltool tests bench studies parity docgen

# TEST_WORKERS processes (pytest-xdist; a test file is one unit of work; 0 = in pytest's own process)
TEST_WORKERS ?= 2
TEST_ARGS = -q $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)
# the second pytest: the tests whose figures follow --precision auto's dtype (marker numeric) again, with auto
# resolved as on a CPU with AMX (bf16; VPLTOOL_ASSUME_AMX=1), so a machine without AMX proves what one with it does;
# in one process (NUMERIC_ARGS): each pytest-xdist worker collects the whole suite first, which cost more CPU than
# the few numeric tests a second worker would run
NUMERIC_ARGS = -q -p no:xdist
# ... and over the files that mark one (tests/test_make_targets.py checks that every numeric test is in one): the
# whole suite's collection cost more CPU than the tests it picked (18.6 of that pass's 43.2 CPU-s on a Cascade Lake)
NUMERIC_FILES = $(shell grep -l 'mark\.numeric' tests/test_*.py)
## Lint, run the test suite (CPU, offline; the slow demo check too), then its numeric tests as on a CPU with AMX
test: lint
	$(VENV)/bin/python -m pytest $(TEST_ARGS)
	VPLTOOL_ASSUME_AMX=1 $(VENV)/bin/python -m pytest $(NUMERIC_ARGS) -m numeric $(NUMERIC_FILES)

## Run the test suite without the slow demo-world check
test-fast: lint
	$(VENV)/bin/python -m pytest $(TEST_ARGS) -m "not slow"
	VPLTOOL_ASSUME_AMX=1 $(VENV)/bin/python -m pytest $(NUMERIC_ARGS) -m "numeric and not slow" $(NUMERIC_FILES)

## The whole pipeline on the offline demo world, then a table of mIoU per stage next to chance
# two stages at a time where neither needs the other (the text CAMs of every refinement while VPL phase 1 learns W,
# the held-out stages while the decoder trains); -O prints each stage's output whole, when it ends. The dense CLIP
# rows (`make dense`), the DINO affinity rows (`make affinity`) and SSR's caa+sgc rows (`make sgc`) have their own
# targets, which keep `make demo` within 10 CPU-minutes; each re-makes the table, which lists every row on disk.
# DEMO_REFINES: the refinements `make demo` compares and chooses the decoder's masks among. caa+sgc's decoder was the
# last of the three on train at each of 3 decoder seeds (studies/results/pseudo_choice_toy36.json: 59.3, 61.1, 63.9
# against 64.9 and more for none and caa), so the choice loses no candidate that won; `make sgc` adds its rows and
# its decoder as a third candidate
DEMO_REFINES = $(call pick,REFINES,none caa)
DEMO_ROWS = DENSE= DENSE_SEEDS= AFFINITY_ROWS= REFINES='$(DEMO_REFINES)' $(DEMO_START)
# the demo's crf runs write sam-pseudo's start labels (START_LABELS), so that `make sam` after `make demo` runs no CRF
DEMO_START = START_LABELS=$(call pick,START_LABELS,1)
# `make demo` and the demo world's targets below run their recursive make's commands through one fork server
# (vpltool/runtime/forkserver.py): a process that imports torch, open_clip and the stages once, at the first command,
# and forks a child per command (the real CLI, FORK_ENTRY), instead of each of the demo's 41 processes paying ~2.8
# CPU-s of imports; stopped when the make ends, however it ends. FORK_SERVER=0: each command a process of its own, as
# is a VPL given on the command line (bench/vpl_timed.py, tests/test_make_targets.py's stand-in)
FORK_SERVER ?= 1
FORK_ENTRY ?= vpltool.cli:main
FORKED = $(if $(and $(filter 1,$(FORK_SERVER)),$(filter file,$(origin VPL))),$(PYTHON) -S \
  vpltool/runtime/forkserver.py make --python $(VENV)/bin/python --fallback $(VPL) --entry $(FORK_ENTRY) --)
demo: setup-demo
	$(FORKED) $(MAKE) --no-print-directory -j$(WORKERS) -O report $(DEMO_ROWS) REPRODUCIBLE=$(call pick,REPRODUCIBLE,1)

## The demo's DINO affinity rows (AFFINITY_ROWS: CAA from DINO's attention), then the table again
affinity: setup
	$(FORKED) $(MAKE) --no-print-directory -j$(WORKERS) -O report DENSE= DENSE_SEEDS= REFINES='$(DEMO_REFINES)' \
	  REPRODUCIBLE=$(call pick,REPRODUCIBLE,1)

## The demo's SSR rows (REFINES with caa+sgc: its CAMs, CRF masks and decoder, a third candidate), then the table
sgc: setup
	$(FORKED) $(MAKE) --no-print-directory -j$(WORKERS) -O report DENSE= DENSE_SEEDS= AFFINITY_ROWS= \
	  REPRODUCIBLE=$(call pick,REPRODUCIBLE,1)

## The demo's SAM rows (PSEUDO=crf sam: sam-pseudo's masks from every refinement's vision CAMs, with the toy SAM
## of another world; their decoders are candidates of the choice), then the table
sam: setup
	$(FORKED) $(MAKE) --no-print-directory -j$(WORKERS) -O report DENSE= DENSE_SEEDS= AFFINITY_ROWS= REFINES='$(DEMO_REFINES)' \
	  PSEUDO='$(call pick,PSEUDO,crf sam)' REPRODUCIBLE=$(call pick,REPRODUCIBLE,1) $(DEMO_START)

# SAM 3 (as it is) and ActiveSAM with the shipped toy SAM 3 (`make toy-sam3`: world seed 20's train split, never
# these scenes), zero-shot on val; their settings chosen on the demo world's train split alone
# (studies/study_sam3_demo.py, studies/results/sam3_demo.json): ActiveSAM without WordNet's hypernym tokens (the toy's
# text tower knows only the class words; docs/open-vocabulary.md)
SAM3_DEMO_WEIGHTS ?= vpltool/assets/toy-sam3
SAM3_DEMO_ARGS_sam3 ?= --confidence-threshold 0.1 --prob-threshold 0.1
SAM3_DEMO_ARGS_activesam ?= --confidence-threshold 0.3 --prob-threshold 0.1 --hypernym-tokens 0
## The demo's SAM 3 and ActiveSAM rows (the toy SAM 3, zero-shot on val) beside all-background and chance
sam3: $(RUN)/metrics/dense_sam3/sam3.json $(RUN)/metrics/dense_sam3/activesam.json
	$(VENV)/bin/python studies/sam3_demo_rows.py $(RUN)
$(RUN)/dense_sam3/%/_stage.json: $(DATA_DEP)
	$(VPL) segment $(DATA) --split $(VAL_SPLIT) -o $(@D) --dense $* --sam3-weights $(SAM3_DEMO_WEIGHTS) \
	  $(SAM3_DEMO_ARGS_$*) --device $(DEVICE) --overwrite
$(RUN)/metrics/dense_sam3/%.json: $(RUN)/dense_sam3/%/_stage.json
	$(VPL) eval $(<D) --json $@ --overwrite

# RADSeg with the shipped toy RADIO (`make toy-radio`: a toy SigLIP and a toy C-RADIOv3 distilled from it and the toy
# DINO, on fresh scenes, never these), zero-shot on val; its settings chosen on the demo world's train split alone
# (studies/study_radseg_demo.py, studies/results/radseg_demo.json)
RADSEG_DEMO_WEIGHTS ?= vpltool/assets/toy-radio
RADSEG_DEMO_ARGS ?= --templates "a photo of a {}." --short-side 576 --slide-crop 192 --slide-stride 192 \
  --scra-scale 40 --scga-scale 20 --prob-threshold 0.98
## The demo's RADSeg row (the toy RADIO, zero-shot on val) beside all-background and chance
radseg: $(RUN)/metrics/dense_radseg/radseg.json
	$(VENV)/bin/python studies/radseg_demo_rows.py $(RUN)
$(RUN)/dense_radseg/radseg/_stage.json: $(DATA_DEP) $(wildcard $(RADSEG_DEMO_WEIGHTS)/radio.pth.tar \
  $(RADSEG_DEMO_WEIGHTS)/siglip/*.safetensors)
	$(VPL) segment $(DATA) --split $(VAL_SPLIT) -o $(@D) --dense radseg \
	  --proxy-weights $(RADSEG_DEMO_WEIGHTS)/radio.pth.tar --language-model $(RADSEG_DEMO_WEIGHTS)/siglip \
	  --background "$(BACKGROUND)" $(RADSEG_DEMO_ARGS) --device $(DEVICE) --overwrite
$(RUN)/metrics/dense_radseg/radseg.json: $(RUN)/dense_radseg/radseg/_stage.json
	$(VPL) eval $(<D) --json $@ --overwrite

## Render the demo world (synthetic scenes with exact masks)
world: $(RUN)/world/_stage.json
$(RUN)/world/_stage.json: | setup-demo
	$(VPL) make-world $(@D) --train $(WORLD_TRAIN) --val $(WORLD_VAL) --seed $(SEED)

## Dense CLIP features + last-block cache for the training split
features: $(RUN)/features/_stage.json
$(RUN)/features/_stage.json: $(DATA_DEP) $(MODEL_DEP)
	$(VPL) extract $(DATA) --split $(TRAIN_SPLIT) -o $(@D) --model $(MODEL) --pretrained $(PRETRAINED) --device $(DEVICE) \
	  --overwrite

## Text prototypes (class names x templates + background words)
text-prototypes: $(RUN)/text_prototypes.safetensors
$(RUN)/text_prototypes.safetensors: $(RUN)/features/_stage.json
	$(VPL) text-prototypes $(<D) -o $@ --templates "$(TEMPLATES)" --background "$(BACKGROUND)" --device $(DEVICE)

# CAMs and CRF masks of a refinement, in D = RUN (REFINE's) or RUN/R (refinement R's): text and vision CAMs, the CRF
# masks of each (D/pseudo: from the vision CAMs, the pipeline's pseudo masks), on the training split and on VAL_SPLIT
CAM = $(VPL) cam $(<D) -p $(lastword $^) -o $(@D) $(call cam_args,$(call refine_of,$*)) --device $(DEVICE) --overwrite
%/cams_text/_stage.json: $(RUN)/features/_stage.json $(RUN)/text_prototypes.safetensors
	$(CAM)
%/cams_vision/_stage.json: $(RUN)/features/_stage.json $(RUN)/vision_prototypes.safetensors
	$(CAM)
%/cams_text_val/_stage.json: $(RUN)/features_val/_stage.json $(RUN)/text_prototypes.safetensors
	$(CAM)
%/cams_vision_val/_stage.json: $(RUN)/features_val/_stage.json $(RUN)/vision_prototypes.safetensors
	$(CAM)
# one GradCAM for two rows: where REFINE's CAMs (RUN's) are none's and REFINES compares caa (RUN/caa) on CLIP's
# attention, caa's run writes none's folder too (cam --raw-out: the files and records a --refine none run makes, bit
# for bit), so the pair costs one GradCAM pass, not two. A grouped target (&:, GNU make 4.3): one recipe, both folders
SHARED_GRADCAM = $(and $(filter none,$(REFINE)),$(filter none,$(REFINES)),$(filter caa,$(REFINES)),\
  $(filter clip,$(AFFINITY)))
# $(call shared_cam,FOLDER,FEATURES,PROTOTYPES): RUN/caa/FOLDER and RUN/FOLDER from one cam run
define shared_cam
$(RUN)/caa/$(1)/_stage.json $(RUN)/$(1)/_stage.json &: $(2) $(3)
	$$(VPL) cam $$(<D) -p $$(lastword $$^) -o $(RUN)/caa/$(1) --raw-out $(RUN)/$(1) $$(call cam_args,caa) \
	  --device $$(DEVICE) --overwrite
endef
ifneq ($(SHARED_GRADCAM),)
$(eval $(call shared_cam,cams_text,$(RUN)/features/_stage.json,$(RUN)/text_prototypes.safetensors))
$(eval $(call shared_cam,cams_vision,$(RUN)/features/_stage.json,$(RUN)/vision_prototypes.safetensors))
$(eval $(call shared_cam,cams_text_val,$(RUN)/features_val/_stage.json,$(RUN)/text_prototypes.safetensors))
$(eval $(call shared_cam,cams_vision_val,$(RUN)/features_val/_stage.json,$(RUN)/vision_prototypes.safetensors))
endif
CRF = $(VPL) crf $(<D) -o $(@D) --workers $(WORKERS) --overwrite
# with START_LABELS=1 the vision CAMs' crf run also writes sam-pseudo's start labels, D/start/pseudo[_val] (crf
# --start-out: its labels at --confidence 0 from the same CRF), which the SAM rules below read (sam-pseudo --start)
# instead of running that CRF again. 1 where PSEUDO has a SAM rule, and in the demo's targets, whose `make sam` and
# `make sam3-pseudo` come after `make demo`. Set START_LABELS=0 where sam-pseudo's options change its start
# (--start argmax, --bg-exponent) in SAM_PSEUDO_ARGS or SAM3_PSEUDO_ARGS
START_LABELS ?= $(if $(filter sam sam3,$(PSEUDO)),1,0)
ifeq ($(START_LABELS),1)
%/pseudo/_stage.json %/start/pseudo/_stage.json: %/cams_vision/_stage.json
	$(VPL) crf $(<D) -o $*/pseudo --start-out $*/start/pseudo --workers $(WORKERS) --overwrite
%/pseudo_val/_stage.json %/start/pseudo_val/_stage.json: %/cams_vision_val/_stage.json
	$(VPL) crf $(<D) -o $*/pseudo_val --start-out $*/start/pseudo_val --workers $(WORKERS) --overwrite
else
%/pseudo/_stage.json: %/cams_vision/_stage.json
	$(CRF)
%/pseudo_val/_stage.json: %/cams_vision_val/_stage.json
	$(CRF)
endif
%/pseudo_text/_stage.json: %/cams_text/_stage.json
	$(CRF)
%/pseudo_text_val/_stage.json: %/cams_text_val/_stage.json
	$(CRF)
# and the CRF masks of that pair in one crf run (crf --with-cams: each image read and its CRF's pairwise terms built
# once for both; the masks and records of two runs, bit for bit); $(3): with both start-label folders (START_LABELS)
define shared_crf
$(RUN)/caa/$(1)/_stage.json $(RUN)/$(1)/_stage.json $(if $(3),$(RUN)/caa/start/$(1)/_stage.json \
  $(RUN)/start/$(1)/_stage.json) &: $(RUN)/caa/$(2)/_stage.json $(RUN)/$(2)/_stage.json
	$$(VPL) crf $(RUN)/caa/$(2) -o $(RUN)/caa/$(1) --with-cams $(RUN)/$(2) --with-out $(RUN)/$(1) --workers $$(WORKERS) \
	  $(if $(3),--start-out $(RUN)/caa/start/$(1) --with-start-out $(RUN)/start/$(1)) --overwrite
endef
ifneq ($(SHARED_GRADCAM),)
$(eval $(call shared_crf,pseudo,cams_vision,$(filter 1,$(START_LABELS))))
$(eval $(call shared_crf,pseudo_val,cams_vision_val,$(filter 1,$(START_LABELS))))
$(eval $(call shared_crf,pseudo_text,cams_text))
$(eval $(call shared_crf,pseudo_text_val,cams_text_val))
endif
# sam-pseudo's rules (PSEUDO's words but crf; vpltool.config.SAM_PSEUDO_RULES, which tests check this against):
# rule K's pseudo masks of refinement R are `sam-pseudo --masks K` of RUN[/R]/cams_vision in RUN[/R]/K/pseudo
# (make prefers these rules to the crf ones above: the shorter stem), with K's options SAM_OPTS_K and the weights
# file it waits for, SAM_DEPS_K
SAM_RULES = sam sam3
SAM_OPTS_sam = --sam-model $(SAM_PSEUDO_MODEL) --sam-weights $(SAM_PSEUDO_WEIGHTS) $(SAM_PSEUDO_ARGS)
SAM_DEPS_sam = $(wildcard $(SAM_PSEUDO_WEIGHTS))
SAM_OPTS_sam3 = --sam-weights $(SAM3_PSEUDO_WEIGHTS) $(SAM3_PSEUDO_ARGS)
# a folder's weights files (or the sam3.pt named): masks made before the weights changed are made again
sam3_deps = $(if $(wildcard $(1)/.),$(wildcard $(1)/*.safetensors $(1)/config.json),$(wildcard $(1)))
SAM_DEPS_sam3 = $(call sam3_deps,$(SAM3_PSEUDO_WEIGHTS))
# (START_LABELS=1: from the start labels crf wrote beside its masks, D/start/pseudo[_val], not a CRF of its own)
define sam_rule
%/$(1)/pseudo/_stage.json: %/cams_vision/_stage.json $(if $(filter 1,$(START_LABELS)),%/start/pseudo/_stage.json) \
  $$(SAM_DEPS_$(1))
	$$(VPL) sam-pseudo $$(<D) -o $$(@D) --masks $(1) $(if $(filter 1,$(START_LABELS)),--start $$*/start/pseudo) \
	  $$(SAM_OPTS_$(1)) --device $$(DEVICE) --overwrite
%/$(1)/pseudo_val/_stage.json: %/cams_vision_val/_stage.json \
  $(if $(filter 1,$(START_LABELS)),%/start/pseudo_val/_stage.json) $$(SAM_DEPS_$(1))
	$$(VPL) sam-pseudo $$(<D) -o $$(@D) --masks $(1) $(if $(filter 1,$(START_LABELS)),--start $$*/start/pseudo_val) \
	  $$(SAM_OPTS_$(1)) --device $$(DEVICE) --overwrite
endef
$(foreach k,$(SAM_RULES),$(eval $(call sam_rule,$(k))))
# eval: a folder of the training split is scored on EVAL_SPLIT, one of VAL_SPLIT on its own split
# (its own files, like its folders, are re-made with --overwrite: also those of a vpltool that recorded no file kinds)
$(RUN)/metrics/%_val.json: $(RUN)/%_val/_stage.json
	$(VPL) eval $(<D) --json $@ --overwrite
$(RUN)/metrics/%.json: $(RUN)/%/_stage.json
	$(VPL) eval $(<D) $(EVAL_SPLIT_ARG) --json $@ --overwrite

## CAMs from the text prototypes, and their mIoU (seeds)
cams-text: $(RUN)/metrics/cams_text.json

## VPL phase 1: vision prototypes learned from the text-prototype CAMs
learn-prototypes: $(RUN)/vision_prototypes.safetensors
$(RUN)/vision_prototypes.safetensors: $(RUN)/cams_text/_stage.json $(RUN)/text_prototypes.safetensors
	$(VPL) learn-prototypes $(RUN)/features --cams $(<D) --text $(RUN)/text_prototypes.safetensors -o $@ \
	  --tau-i $(TAU_I) --iters $(ITERS) --lr $(LR) $(LEARN_ARGS) --device $(DEVICE) --overwrite

## CAMs from the vision prototypes, and their mIoU
cams-vision: $(RUN)/metrics/cams_vision.json

# the pseudo-mask candidates: each refinement's CRF masks (R) and, for each rule K of SAM_RULES in PSEUDO, its
# sam-pseudo masks (R+K); $(call cand_dir,C) / $(call cand_metrics,C): candidate C's folder (pseudo, decoder,
# pred_train) and its scores'; $(call cand_rule,C): C's rule K, none for a CRF candidate
cand_rule = $(strip $(foreach k,$(SAM_RULES),$(if $(filter %+$(k),$(1)),$(k))))
cand_base = $(if $(call cand_rule,$(1)),$(patsubst %+$(call cand_rule,$(1)),%,$(1)),$(1))
cand_kind = $(addprefix /,$(call cand_rule,$(1)))
cand_dir = $(call refine_dir,$(call cand_base,$(1)))$(call cand_kind,$(1))
cand_metrics = $(call refine_metrics,$(call cand_base,$(1)))$(call cand_kind,$(1))
CANDIDATES = $(foreach r,$(or $(REFINES),$(REFINE)),$(if $(filter crf,$(PSEUDO)),$(r)) \
  $(addprefix $(r)+,$(filter $(SAM_RULES),$(PSEUDO))))
# more than one candidate, or REFINES named: the choice runs (choose-pseudo)
CHOOSING = $(or $(REFINES),$(word 2,$(CANDIDATES)))
## Pseudo masks from the vision-prototype CAMs (dense CRF; with PSEUDO=sam also SAM's), and their mIoU (with REFINES:
## those of every refinement)
PSEUDO_SCORES = $(foreach c,$(if $(CHOOSING),$(CANDIDATES)),$(call cand_metrics,$(c))/pseudo.json)
pseudo: $(RUN)/metrics/pseudo.json $(PSEUDO_SCORES)

## VPL phase 2: decoder on the frozen CLIP, trained on the pseudo masks with CE + RSC (with REFINES: one per refinement)
# $(call refine_dir,R): the folder of refinement R's CAMs, masks and decoder: RUN for REFINE, else RUN/R
refine_dir = $(if $(filter $(REFINE),$(1)),$(RUN),$(RUN)/$(1))
# the candidates whose masks train a decoder: every one when the rule chooses (PSEUDO_REFINE=auto), the one named by
# hand, or the only one (make voc, make coco: REFINE's CRF masks, or its SAM masks with PSEUDO=sam)
DEC_REFINES = $(if $(CHOOSING),$(if $(filter auto,$(PSEUDO_REFINE)),$(CANDIDATES),$(PSEUDO_REFINE)),$(CANDIDATES))
DECODERS = $(foreach c,$(DEC_REFINES),$(call cand_dir,$(c))/decoder/decoder.safetensors)
# the rule's scores: each decoder's prediction on the train-side split, scored there
DECODER_SCORES = $(if $(CHOOSING),$(if $(filter auto,$(PSEUDO_REFINE)),$(foreach c,$(CANDIDATES),\
  $(call cand_metrics,$(c))/pred_train.json)))
decoder: $(DECODERS)
%/decoder/decoder.safetensors: %/pseudo/_stage.json $(RUN)/vision_prototypes.safetensors
	$(VPL) train-decoder $(<D) -p $(RUN)/vision_prototypes.safetensors -o $(@D) --iters $(DEC_ITERS) $(DEC_ARGS) \
	  --lambda-proto $(LAMBDA_PROTO) $(if $(IGNORE_CLASSES),--ignore-classes $(IGNORE_CLASSES)) --device $(DEVICE) \
	  --overwrite
%/pred_train/_stage.json: %/decoder/decoder.safetensors
	$(VPL) predict $< --split $(or $(EVAL_SPLIT),$(TRAIN_SPLIT)) -o $(@D) $(CHOICE_PRED_ARGS) \
	  $(if $(CHOICE_STORE),--feature-store $(CHOICE_STORE)) \
	  $(if $(PRED_CLASSES),--classes $(PRED_CLASSES)) --device $(DEVICE) --overwrite
## The choice among REFINES (PSEUDO_REFINE): every refinement's decoder, scored on train (`vpltool choose-pseudo`)
decoders: $(DECODER_SCORES) $(DECODERS)

# with REFINES, the decoder that predicts val is the chosen refinement's (RUN[/R]/decoder); a failed choice stops the
# recipe (`&&`, not an empty argument). The refinement of each folder is read from its records; the scores must be
# on the train-side EVAL_SPLIT
CHOICE = $(if $(CHOOSING),pseudo=$$($(VPL) choose-pseudo $(strip $(RUN) $(CANDIDATES) $(EVAL_SPLIT_ARG) \
  --pick $(PSEUDO_REFINE) --by $(if $(filter auto,$(PSEUDO_REFINE)),decoder,masks) --overwrite)) &&)
CHOSEN_DECODER = $(if $(CHOOSING),"$${pseudo%/pseudo}/decoder/decoder.safetensors",$(call cand_dir,$(CANDIDATES))/decoder/decoder.safetensors)

## Decoder masks for the validation split, and their mIoU
predict: $(RUN)/metrics/pred_val.json
$(RUN)/pred_val/_stage.json: $(DECODERS) $(DECODER_SCORES) $(if $(CHOOSING),$(PSEUDO_SCORES))
	$(CHOICE) $(VPL) predict $(CHOSEN_DECODER) --split $(VAL_SPLIT) -o $(@D) $(PRED_ARGS) \
	  $(if $(PRED_CLASSES),--classes $(PRED_CLASSES)) --device $(DEVICE) --overwrite
$(RUN)/metrics/pred_val.json: $(RUN)/pred_val/_stage.json
	$(VPL) eval $(<D) --json $@ --overwrite

## Held-out scoring: features of VAL_SPLIT, text and vision CAMs (W learned on train), CRF masks, their mIoU
heldout: $(RUN)/metrics/cams_text_val.json $(RUN)/metrics/cams_vision_val.json $(RUN)/metrics/pseudo_val.json
$(RUN)/features_val/_stage.json: $(DATA_DEP) $(MODEL_DEP)
	$(VPL) extract $(DATA) --split $(VAL_SPLIT) -o $(@D) --model $(MODEL) --pretrained $(PRETRAINED) --device $(DEVICE) \
	  --overwrite

## The refinements of REFINES side by side (the demo's table): text and vision CAMs and their CRF masks, both splits
COMPARED = $(foreach r,$(REFINES) $(AFFINITY_ROWS),$(addprefix $(call refine_metrics,$(r))/,cams_text.json cams_vision.json \
  pseudo_text.json pseudo.json $(if $(HELDOUT),cams_text_val.json cams_vision_val.json pseudo_text_val.json \
  pseudo_val.json)))
# sam-pseudo's masks beside the CRF's, on both splits, for each refinement of REFINES (PSEUDO with a SAM rule)
SAM_COMPARED = $(foreach k,$(filter $(SAM_RULES),$(PSEUDO)),$(foreach r,$(or $(REFINES),$(REFINE)),\
  $(addprefix $(call cand_metrics,$(r)+$(k))/,pseudo.json $(if $(HELDOUT),pseudo_val.json))))
refines: $(COMPARED) $(SAM_COMPARED)

## Phase-1 diagnosis on the held-out split: pixel classifier, GradCAM per layer and modality gap, text vs vision
diagnose: $(RUN)/metrics/diagnose_val.json
$(RUN)/metrics/diagnose_val.json: $(RUN)/features_val/_stage.json $(RUN)/vision_prototypes.safetensors
	$(VPL) diagnose $(<D) -p $(RUN)/vision_prototypes.safetensors -t $(RUN)/text_prototypes.safetensors --json $@ \
	  --device $(DEVICE) --overwrite

## The demo's open-vocabulary rows (DENSE, DENSE_SEEDS): training-free dense CLIP masks and seeds, then the table
# again (the rows alone, with no table: the dense-metrics target); segment's size options of DENSE_SIZE_<method>
# spelled as cam's and predict's --dense-* options
dense_size = $(subst --short-side,--dense-side,$(subst --slide-crop,--dense-crop,$(subst \
  --slide-stride,--dense-stride,$(DENSE_SIZE_$(1)))))
DENSE_METRICS = $(foreach m,$(DENSE),$(RUN)/metrics/dense/$(m)/segment_val.json) \
  $(foreach m,$(DENSE_SEEDS),$(addprefix $(RUN)/metrics/dense/$(m)/,cams.json pseudo.json pred_val.json))
dense: setup
	$(FORKED) $(MAKE) --no-print-directory -j$(WORKERS) -O report AFFINITY_ROWS= REFINES='$(DEMO_REFINES)' \
	  REPRODUCIBLE=$(call pick,REPRODUCIBLE,1)
dense-metrics: $(DENSE_METRICS)
$(RUN)/dense/%/segment_val/_stage.json: $(DATA_DEP) $(MODEL_DEP)
	$(VPL) segment $(DATA) --split $(VAL_SPLIT) -o $(@D) --dense $* --model $(MODEL) --pretrained $(PRETRAINED) \
	  --templates "$(TEMPLATES)" --background "$(BACKGROUND)" $(DENSE_SIZE_$*) --prob-threshold $(DENSE_THR_$*) \
	  --device $(DEVICE) --overwrite
# method M with SAM 3's regions (RUN/dense/M@sam3): M's DENSE_SIZE_M@sam3 and DENSE_THR_M@sam3
$(RUN)/dense/%@sam3/segment_val/_stage.json: $(DATA_DEP) $(MODEL_DEP) $(call sam3_deps,$(SAM3_REGION_WEIGHTS))
	$(VPL) segment $(DATA) --split $(VAL_SPLIT) -o $(@D) --dense $* --model $(MODEL) --pretrained $(PRETRAINED) \
	  --templates "$(TEMPLATES)" --background "$(BACKGROUND)" $(DENSE_SIZE_$*@sam3) \
	  --prob-threshold $(DENSE_THR_$*@sam3) --region-masks sam3 --sam-weights $(SAM3_REGION_WEIGHTS) \
	  --confidence-threshold $(SAM3_REGION_CONF_$*) \
	  --device $(DEVICE) --overwrite
$(RUN)/dense/%/cams/_stage.json: $(RUN)/text_prototypes.safetensors
	$(VPL) cam $(DATA) --split $(TRAIN_SPLIT) -p $< -o $(@D) --dense $* $(call dense_size,$*) --device $(DEVICE) \
	  --overwrite
$(RUN)/dense/%/crf/_stage.json: $(RUN)/dense/%/cams/_stage.json
	$(CRF)
$(RUN)/dense/%/pred_val/_stage.json: $(RUN)/decoder/decoder.safetensors
	$(VPL) predict $< --split $(VAL_SPLIT) -o $(@D) --classes "$$(tail -n +2 $(DATA)/classes.txt | paste -sd,)" \
	  --dense $* $(call dense_size,$*) --dense-threshold $(DENSE_THR_$*) --device $(DEVICE) --overwrite
$(RUN)/metrics/dense/%/segment_val.json: $(RUN)/dense/%/segment_val/_stage.json
	$(VPL) eval $(<D) --json $@ --overwrite
$(RUN)/metrics/dense/%/pred_val.json: $(RUN)/dense/%/pred_val/_stage.json
	$(VPL) eval $(<D) --json $@ --overwrite
$(RUN)/metrics/dense/%/cams.json: $(RUN)/dense/%/cams/_stage.json
	$(VPL) eval $(<D) $(EVAL_SPLIT_ARG) --json $@ --overwrite
$(RUN)/metrics/dense/%/pseudo.json: $(RUN)/dense/%/crf/_stage.json
	$(VPL) eval $(<D) $(EVAL_SPLIT_ARG) --json $@ --overwrite

.PHONY: sam3-pseudo sam3-regions
# PSEUDO=crf sam3: sam-pseudo --masks sam3, the toy SAM 3 of another world (SAM3_PSEUDO_WEIGHTS) prompted with each
# image's labels, on every refinement's vision CAMs; their decoders are candidates of the choice. Not in make demo
## The demo's SAM 3 pseudo-mask rows (sam-pseudo --masks sam3, toy SAM 3; decoders chosen on train), then the table
sam3-pseudo: setup
	$(FORKED) $(MAKE) --no-print-directory -j$(WORKERS) -O report DENSE= DENSE_SEEDS= AFFINITY_ROWS= REFINES='$(DEMO_REFINES)' \
	  PSEUDO='$(call pick,PSEUDO,crf sam3)' REPRODUCIBLE=$(call pick,REPRODUCIBLE,1) $(DEMO_START)

# SAM3_REGIONS' methods (`segment --dense M --region-masks sam3`, zero-shot on val), their settings above. Not in
# make demo
## The demo's CorrCLIP, OV-Stitcher and TextRegion rows with the toy SAM 3's region masks, then the table
sam3-regions: setup
	$(FORKED) $(MAKE) --no-print-directory -j$(WORKERS) -O report DENSE='$(addsuffix @sam3,$(SAM3_REGIONS))' DENSE_SEEDS= \
	  AFFINITY_ROWS= REFINES='$(DEMO_REFINES)' REPRODUCIBLE=$(call pick,REPRODUCIBLE,1)

# the HTML report (`vpltool report`): every image's thumbnails, IoU per stage and detail view, from disk, offline
## Print the mIoU table per stage next to chance (metrics.json, contact sheets), then the HTML report RUN/report/
report: $(RUN)/report/index.html
$(RUN)/metrics.json: $(RUN)/metrics/cams_text.json $(RUN)/metrics/cams_vision.json $(RUN)/metrics/pseudo.json \
                    $(RUN)/metrics/pred_val.json $(if $(HELDOUT),$(RUN)/metrics/cams_text_val.json \
                    $(RUN)/metrics/cams_vision_val.json $(RUN)/metrics/pseudo_val.json \
                    $(if $(DIAGNOSE),$(RUN)/metrics/diagnose_val.json)) \
                    $(COMPARED) $(SAM_COMPARED) $(DENSE_METRICS)
	$(VPL) demo-report $(RUN) --overwrite
$(RUN)/report/index.html: $(RUN)/metrics.json
	$(VPL) report $(RUN) -o $(@D) --workers $(WORKERS)

## The paper's whole pipeline on PASCAL VOC (VOC_ROOT=...), then the mIoU per stage; see docs/reproduce.md
voc: setup
	$(MAKE) report $(PAPER_ARGS) $(VOC_ARGS)

## The paper's whole pipeline on COCO 2014 (COCO_ROOT=...), then the mIoU per stage; see docs/reproduce.md
coco: setup
	$(MAKE) report $(PAPER_ARGS) $(COCO_ARGS)

## Benchmarks: each script prints one JSON object into bench/results/, then docs/performance.md is rebuilt
# BENCH_DEVICE=cuda runs them on the GPU (bench_crf's pydensecrf is CPU-only and records that); BENCH_ARGS=--quick
# smoke-tests them
# CLIP_ES=/path/to/CLIP-ES CLIP_ES_PYTHON=/its/python: the cam benchmark runs the original code (else its fallback)
CLIP_ES ?=
CLIP_ES_PYTHON ?= python3
BENCH_DEVICE ?= cpu
BENCH_ARGS ?=
BENCH_OUT ?= bench/results
BENCH = $(VENV)/bin/python bench
# the benchmarks that mean something on a GPU only: run with BENCH_DEVICE=cuda, or smoke-tested with --quick
BENCH_GPU_ONLY = $(or $(filter cuda%,$(BENCH_DEVICE)),$(filter --quick,$(BENCH_ARGS)))
# results written elsewhere (e.g. a --quick smoke test) render next to them, never over the docs
BENCH_DOCS = $(if $(filter bench/results,$(BENCH_OUT)),,--out $(BENCH_OUT)/performance.md --reproduce /dev/null)
# $(call run_bench,SCRIPT,ARGS,RESULT): a failed run leaves the previous result in place, not a truncated file
run_bench = $(BENCH)/$(1) --device $(BENCH_DEVICE) $(2) $(BENCH_ARGS) > $(BENCH_OUT)/$(3).tmp \
	&& mv $(BENCH_OUT)/$(3).tmp $(BENCH_OUT)/$(3)
bench: setup
	mkdir -p $(BENCH_OUT)
	$(call run_bench,bench_cam.py,$(if $(CLIP_ES),--clip-es $(CLIP_ES) --clip-es-python $(CLIP_ES_PYTHON)),cam.json)
	$(call run_bench,bench_learn_prototypes.py,--iters 30,learn_prototypes.json)
	$(call run_bench,bench_crf.py,,crf.json)
	$(call run_bench,bench_densecrf.py,$(if $(filter cuda%,$(BENCH_DEVICE)),--images 1000),densecrf.json)
	$(call run_bench,bench_decoder.py,,decoder.json)
	$(call run_bench,bench_decoder.py,--mode host,decoder_host.json)
	$(call run_bench,stage_costs.py,,stage_costs.json)
	$(call run_bench,bench_memory.py,,memory.json)
	$(call run_bench,bench_host.py,,host.json)
	$(call run_bench,bench_flops.py,,flops.json)
	$(call run_bench,bench_demo.py,--toy-clip,demo.json)
	$(call run_bench,bench_report.py,,report.json)
	# train-pgseg's step against the reference's fp32 loop (PGSEG_REF: a clone of Ferenas/PGSeg; without it vpltool's
	# side alone): on the CPU whatever BENCH_DEVICE says, as the reference's loop runs without apex there
	$(BENCH)/bench_train_pgseg.py --device cpu $(if $(PGSEG_REF),--ref $(PGSEG_REF) --fused) $(BENCH_ARGS) \
	  > $(BENCH_OUT)/train_pgseg.json.tmp && mv $(BENCH_OUT)/train_pgseg.json.tmp $(BENCH_OUT)/train_pgseg.json
	# a VOC-scale run of every stage (10,582 photos), and where cam's and extract's time goes on the device (torch's
	# profiler): on a GPU only (BENCH_DEVICE=cuda), or smoke-tested (--quick)
	$(if $(BENCH_GPU_ONLY),$(call run_bench,bench_gpu_pipeline.py,,gpu_pipeline.json))
	$(if $(BENCH_GPU_ONLY),$(call run_bench,profile_stage.py,,profile.json))
	$(VENV)/bin/python docgen/make_table.py --results $(BENCH_OUT) $(BENCH_DOCS)

## Parity: each peer's own code, run from a clone outside the project, against vpltool (fp32, CPU; parity/README.md)
# DENSE_REFS=/folder/of/clones (SCLIP, ClearCLIP, NACLIP): the dense methods (dense_parity.py; DENSE_WORK=/a/folder
# keeps the clones' outputs for a later run)
DENSE_REFS ?=
DENSE_WORK ?=
# OVSS_REFS=/folder/of/clones: the benchmarks' configs and class files (NACLIP, SCLIP, ClearCLIP, ProxyCLIP,
# SC-CLIP, CASS, Trident, CorrCLIP, TextRegion: benchmarks_parity.py) and SC-CLIP's and ProxyCLIP's dense logits (with
# facebookresearch/dino as dino: ovss_parity.py; ProxyCLIP's DINO ViT-B/8 per window makes its photos the costly
# part: OVSS_PROXY_IMAGES); with OVSS_WORK also CASS's block parity and its free run on weights shaped so that its head
# matching is unique (cass_weights.py into $(OVSS_WORK)-cass, then ovss_parity.py --methods cass)
OVSS_REFS ?=
OVSS_WORK ?=
OVSS_PROXY_IMAGES ?= 12
# PGSEG_REF=a clone of Ferenas/PGSeg (9f167cd), GROUPVIT_REF=one of NVlabs/GroupViT (13b7861): the pgseg family
# (pgseg_parity.py) and the whole train-pgseg trainer against their training loops (pgseg_trainer_parity.py)
PGSEG_REF ?=
GROUPVIT_REF ?=
# TALK2DINO_REF=a clone of lorebianchi98/Talk2DINO (4918c2d), DINOV2_REF=one of facebookresearch/dinov2 (b8931f7, what
# its torch.hub.load fetches): the talk2dino family against its training and zero-shot code (talk2dino_parity.py)
TALK2DINO_REF ?=
DINOV2_REF ?=
# WECLIP_REF=/path/to/a/clone of zbf1991/WeCLIP (0f47db4): --recipe weclip against WeCLIP's own code (weclip_parity.py)
WECLIP_REF ?=
WECLIP_WORK ?=
# WECLIP_DINO_REF=a clone of facebookresearch/dinov2 (b8931f7): adds --recipe weclip+ against WeCLIP+'s own code
WECLIP_DINO_REF ?=
# CORRCLIP_REF=a clone of zdk258/CorrCLIP (103bc18), CORRCLIP_DINO_REF=one of facebookresearch/dino: --dense corrclip
# against CorrCLIPv1's own code (corrclip_parity.py; CORRCLIP_WORK keeps both sides' outputs for a later run)
CORRCLIP_REF ?=
CORRCLIP_DINO_REF ?=
CORRCLIP_WORK ?=
# OVSTITCHER_REF=the OV-Stitcher clone of parity/ov_stitcher_parity.py's docstring (atw617/OV-Stitcher 91a9489),
# OVSTITCHER_DINO_REF=one of facebookresearch/dino: --dense ov-stitcher against its own code (OVSTITCHER_WORK keeps
# both sides' outputs for a later run)
OVSTITCHER_REF ?=
OVSTITCHER_DINO_REF ?=
OVSTITCHER_WORK ?=
# TEXTREGION_REF=a clone of avaxiao/TextRegion (e392cd2): --dense textregion against its own model_semantic.py, both fed
# the same region masks, and (where the sam2 package is installed: --sam2) its SAM 2 generator against vpltool's
# (textregion_parity.py; TEXTREGION_WORK keeps both sides' outputs for a later run)
TEXTREGION_REF ?=
TEXTREGION_WORK ?=
# RADSEG_REF=a clone of RADSeg-OVSS/RADSeg (05ec86f), RADSEG_RADIO_REF=one of NVlabs/RADIO (c0f3701): --dense radseg
# against RADSeg's own code on RADIO's own hub code (radseg_parity.py; RADSEG_WORK keeps both sides' files)
RADSEG_REF ?=
RADSEG_RADIO_REF ?=
RADSEG_WORK ?=
# SAM3_REF=a clone of VILA-Lab/ActiveSAM (41cad43): the sam3 family against the Meta sam3 code it vendors and its
# bucketed processor (sam3_parity.py; a reduced ViT and text tower on both sides; SAM3_WORK keeps both sides' files)
SAM3_REF ?=
SAM3_WORK ?=
# ACTIVESAM_REF=a clone of VILA-Lab/ActiveSAM (41cad43): --dense sam3 and --dense activesam against its own code
# (activesam_parity.py, on a reduced SAM 3; ACTIVESAM_WORK keeps both sides' files)
ACTIVESAM_REF ?=
ACTIVESAM_WORK ?=
PARITY_OUT ?= parity/results
parity: setup
	mkdir -p $(PARITY_OUT)
	$(if $(DENSE_REFS),$(VENV)/bin/python parity/dense_parity.py --ref $(DENSE_REFS) $(if $(DENSE_WORK),--work $(DENSE_WORK)) \
	  > $(PARITY_OUT)/dense_parity.json.tmp && mv $(PARITY_OUT)/dense_parity.json.tmp $(PARITY_OUT)/dense_parity.json, \
	  @echo "make parity: pass DENSE_REFS=/folder/of/clones (parity/README.md says which clones and commits)")
	$(if $(OVSS_REFS),$(VENV)/bin/python parity/benchmarks_parity.py --ref $(OVSS_REFS) \
	  > $(PARITY_OUT)/benchmarks_parity.json.tmp && mv $(PARITY_OUT)/benchmarks_parity.json.tmp $(PARITY_OUT)/benchmarks_parity.json)
	$(if $(OVSS_REFS),$(VENV)/bin/python parity/ovss_parity.py --ref $(OVSS_REFS) $(if $(OVSS_WORK),--work $(OVSS_WORK)) \
	  --methods sc-clip,proxyclip --proxy-images $(OVSS_PROXY_IMAGES) --proxy-pos-std 1 > $(PARITY_OUT)/ovss_parity.json.tmp \
	  && mv $(PARITY_OUT)/ovss_parity.json.tmp $(PARITY_OUT)/ovss_parity.json, \
	  @echo "make parity: pass OVSS_REFS=/folder/of/clones (SC-CLIP @0417ba9, ProxyCLIP @e7b767f, dino: docs/open-vocabulary.md)")
	$(if $(OVSS_REFS),$(if $(OVSS_WORK),$(VENV)/bin/python parity/cass_block_parity.py --clone $(OVSS_REFS)/CASS \
	  --work $(OVSS_WORK) > $(PARITY_OUT)/cass_block_parity.json.tmp \
	  && mv $(PARITY_OUT)/cass_block_parity.json.tmp $(PARITY_OUT)/cass_block_parity.json))
	$(if $(OVSS_REFS),$(if $(OVSS_WORK),$(VENV)/bin/python parity/cass_weights.py --base $(OVSS_WORK) --out $(OVSS_WORK)-cass \
	  --probe --held-out 6 > $(PARITY_OUT)/cass_weights.json.tmp && mv $(PARITY_OUT)/cass_weights.json.tmp $(PARITY_OUT)/cass_weights.json \
	  && $(VENV)/bin/python parity/ovss_parity.py --ref $(OVSS_REFS) --work $(OVSS_WORK)-cass --methods cass \
	  --shared-matching > $(PARITY_OUT)/ovss_parity_cass.json.tmp \
	  && mv $(PARITY_OUT)/ovss_parity_cass.json.tmp $(PARITY_OUT)/ovss_parity_cass.json))
	$(if $(PGSEG_REF),$(VENV)/bin/python parity/pgseg_parity.py --ref $(PGSEG_REF) --slide \
	  $(if $(GROUPVIT_REF),--groupvit $(GROUPVIT_REF)) --out $(PARITY_OUT)/pgseg_parity.json > /dev/null)
	$(if $(PGSEG_REF),OMP_NUM_THREADS=1 $(VENV)/bin/python parity/pgseg_trainer_parity.py --ref $(PGSEG_REF) \
	  $(if $(GROUPVIT_REF),--groupvit $(GROUPVIT_REF)) > $(PARITY_OUT)/pgseg_trainer_parity.json.tmp \
	  && mv $(PARITY_OUT)/pgseg_trainer_parity.json.tmp $(PARITY_OUT)/pgseg_trainer_parity.json)
	$(if $(TALK2DINO_REF),OMP_NUM_THREADS=1 $(VENV)/bin/python parity/talk2dino_parity.py --ref $(TALK2DINO_REF) \
	  --dinov2 $(DINOV2_REF) > $(PARITY_OUT)/talk2dino_parity.json.tmp \
	  && mv $(PARITY_OUT)/talk2dino_parity.json.tmp $(PARITY_OUT)/talk2dino_parity.json)
	$(if $(WECLIP_REF),$(VENV)/bin/python parity/weclip_parity.py --ref $(WECLIP_REF) $(if $(WECLIP_WORK),--work $(WECLIP_WORK)) \
	  $(if $(WECLIP_DINO_REF),--dino-repo $(WECLIP_DINO_REF)) \
	  --previous $(PARITY_OUT)/weclip_parity.json > $(PARITY_OUT)/weclip_parity.json.tmp && mv $(PARITY_OUT)/weclip_parity.json.tmp $(PARITY_OUT)/weclip_parity.json, \
	  @echo "make parity: pass WECLIP_REF=/path/to/a/clone/of/zbf1991/WeCLIP at 0f47db4 (docs/parity.md)")
	$(if $(CORRCLIP_REF),OMP_NUM_THREADS=1 $(VENV)/bin/python parity/corrclip_parity.py --ref $(CORRCLIP_REF)/CorrCLIPv1 \
	  --dino-ref $(CORRCLIP_DINO_REF) $(if $(CORRCLIP_WORK),--work $(CORRCLIP_WORK)) \
	  --out $(PARITY_OUT)/corrclip_parity.json > /dev/null, \
	  @echo "make parity: pass CORRCLIP_REF=/path/to/a/clone/of/zdk258/CorrCLIP at 103bc18 and CORRCLIP_DINO_REF (docs/parity.md)")
	$(if $(OVSTITCHER_REF),OMP_NUM_THREADS=1 $(VENV)/bin/python parity/ov_stitcher_parity.py --ref $(OVSTITCHER_REF) \
	  --dino-ref $(OVSTITCHER_DINO_REF) $(if $(OVSTITCHER_WORK),--work $(OVSTITCHER_WORK)) \
	  --out $(PARITY_OUT)/ov_stitcher_parity.json > /dev/null, \
	  @echo "make parity: pass OVSTITCHER_REF=/path/to/the/OV-Stitcher/clone and OVSTITCHER_DINO_REF (docs/parity.md)")
	$(if $(OVSTITCHER_REF),OMP_NUM_THREADS=1 $(VENV)/bin/python parity/ov_stitcher_parity.py --ref $(OVSTITCHER_REF) \
	  --dino-ref $(OVSTITCHER_DINO_REF) $(if $(OVSTITCHER_WORK),--work $(OVSTITCHER_WORK)/448) --images 2 \
	  --short-side 448 --slide-crop 336 --slide-stride 112 --out $(PARITY_OUT)/ov_stitcher_parity_448.json > /dev/null)
	$(if $(TEXTREGION_REF),OMP_NUM_THREADS=1 $(VENV)/bin/python parity/textregion_parity.py --ref $(TEXTREGION_REF) \
	  $(if $(TEXTREGION_WORK),--work $(TEXTREGION_WORK)) $(if $(shell $(VENV)/bin/python -c "import sam2" 2>/dev/null && echo y),--sam2) \
	  --out $(PARITY_OUT)/textregion_parity.json > /dev/null, \
	  @echo "make parity: pass TEXTREGION_REF=/path/to/a/clone/of/avaxiao/TextRegion at e392cd2 (docs/parity.md)")
	$(if $(RADSEG_REF),OMP_NUM_THREADS=1 $(VENV)/bin/python parity/radseg_parity.py --ref $(RADSEG_REF) \
	  --radio-ref $(RADSEG_RADIO_REF) $(if $(RADSEG_WORK),--work $(RADSEG_WORK)) \
	  --out $(PARITY_OUT)/radseg_parity.json > /dev/null, \
	  @echo "make parity: pass RADSEG_REF=/path/to/a/clone/of/RADSeg-OVSS/RADSeg at 05ec86f and RADSEG_RADIO_REF (docs/parity.md)")
	$(if $(SAM3_REF),OMP_NUM_THREADS=1 $(VENV)/bin/python parity/sam3_parity.py --ref $(SAM3_REF) \
	  $(if $(SAM3_WORK),--work $(SAM3_WORK)) --out $(PARITY_OUT)/sam3_parity.json > /dev/null, \
	  @echo "make parity: pass SAM3_REF=/path/to/a/clone/of/VILA-Lab/ActiveSAM at 41cad43 (docs/parity.md)")
	$(if $(ACTIVESAM_REF),OMP_NUM_THREADS=1 $(VENV)/bin/python parity/activesam_parity.py --ref $(ACTIVESAM_REF) \
	  $(if $(ACTIVESAM_WORK),--work $(ACTIVESAM_WORK)) --out $(PARITY_OUT)/activesam_parity.json > /dev/null, \
	  @echo "make parity: pass ACTIVESAM_REF=/path/to/a/clone/of/VILA-Lab/ActiveSAM at 41cad43 (docs/parity.md)")
	$(VENV)/bin/python docgen/parity_page.py --results $(PARITY_OUT)

## Regenerate docs/cli.md from the commands' --help and docs/robustness.md from the tested bad-input cases
docs: setup
	$(VENV)/bin/python docgen/cli_docs.py
	$(VENV)/bin/python docgen/licences_page.py
	$(VENV)/bin/python docgen/robustness_table.py

## Retrain the shipped toy CLIP from its seed (not part of CI; about 8 min on one thread, bit-identical)
toy-clip: setup
	$(VPL) train-toy-clip vpltool/assets/toy-clip

# (the default world's train images, no labels; about 25 min on one thread of shared cores)
## Retrain the shipped toy DINO of `--affinity dino` from its seed (not part of CI; bit-identical)
toy-dino: runs/toy-dino/world/_stage.json
	$(VPL) train-toy-dino vpltool/assets/toy-dino/model.safetensors --data runs/toy-dino/world --overwrite
runs/toy-dino/world/_stage.json: | setup
	$(VPL) make-world $(@D)

# (the default world's train masks, class-agnostic; no labels, no captions, no val)
## Retrain the shipped toy SAM of `--dense trident` from its seed (not part of CI; bit-identical)
toy-sam: runs/toy-sam/world/_stage.json
	$(VPL) train-toy-sam vpltool/assets/toy-sam/model.safetensors --data runs/toy-sam/world --overwrite
runs/toy-sam/world/_stage.json: | setup
	$(VPL) make-world $(@D)

# (the train masks of world seed 20, never the demo's scenes, class-agnostic; the shipped toy's recipe)
## Retrain sam-pseudo's toy SAM (another world's scenes) from its seed (not part of CI; bit-identical)
toy-sam-world20: runs/toy-sam-world20/world/_stage.json
	$(VPL) train-toy-sam vpltool/assets/toy-sam-world20/model.safetensors --data runs/toy-sam-world20/world \
	  --overwrite
runs/toy-sam-world20/world/_stage.json: | setup
	$(VPL) make-world $(@D) --seed 20

# (the train masks and class names of world seed 20, never the demo's scenes; SAM 3's detector recipe at toy size)
## Retrain the shipped toy SAM 3 of `--dense sam3` / `--dense activesam` from its seed (not part of CI; bit-identical)
toy-sam3: runs/toy-sam3/world/_stage.json
	$(VPL) train-toy-sam3 vpltool/assets/toy-sam3 --data runs/toy-sam3/world --overwrite
runs/toy-sam3/world/_stage.json: | setup
	$(VPL) make-world $(@D) --seed 20

# (fresh scenes of the demo world, rendered as it trains: never a make-world split; a toy SigLIP, then a toy C-RADIOv3
# distilled from it and the toy DINO; the shipped one took 1002.9 s on one thread of shared cores)
## Retrain the shipped toy RADIO of `--dense radseg` from its seed (not part of CI; bit-identical)
toy-radio: setup
	$(VPL) train-toy-radio vpltool/assets/toy-radio --overwrite

## Remove the demo run folder
clean-demo:
	rm -rf $(RUN)

# $(call quoted,TEXT): TEXT inside a single-quoted shell word
quoted = $(subst ','"'"',$(1))
# `make help` documents these variables (the README's `make report RUN=... DATA=... DATA_DEP= ...` line sets them);
# their defaults are those above, the demo world's; the comments above each say more
HELP_VARS = RUN DATA DATA_DEP MODEL PRETRAINED MODEL_DEP DEVICE TRAIN_SPLIT EVAL_SPLIT VAL_SPLIT TEMPLATES BACKGROUND \
  REFINE REFINES PSEUDO PSEUDO_REFINE START_LABELS SAM_PSEUDO_MODEL SAM_PSEUDO_WEIGHTS SAM3_PSEUDO_WEIGHTS ITERS DEC_ITERS DEC_ARGS PRED_ARGS WORKERS \
  TEST_WORKERS FORK_SERVER
doc_RUN = the run folder: every stage writes its folder here
doc_DATA = the dataset (a VOC or COCO root, a folder or a manifest); the demo renders its world here
doc_DATA_DEP = the file the features depend on: the rendered world; empty (DATA_DEP=) for a real dataset
doc_MODEL = the CLIP (open_clip name, local-dir:PATH, or vpltool-toy, the demo world's)
doc_PRETRAINED = its weights: an open_clip tag (openai), a file, or none
doc_MODEL_DEP = the file the features depend on besides the data: the toy CLIP; empty (MODEL_DEP=) for another
doc_DEVICE = auto | cpu | cuda | cuda:N
doc_TEST_WORKERS = make test's processes for all its tests (pytest-xdist, one test file each at a time); 0 = one process; its numeric pass runs in one
doc_TRAIN_SPLIT = the split the train-side stages run on (VOC: train_aug)
doc_EVAL_SPLIT = the split they are scored on; empty = the one they ran on (VOC: train)
doc_VAL_SPLIT = the held-out split predict and the held-out scores use
doc_TEMPLATES = text-prototypes --templates (real CLIP: clip-es)
doc_BACKGROUND = text-prototypes --background (real CLIP: auto, voc or coco)
doc_REFINE = cam --refine of the pipeline's own CAMs: none | caa | caa+sgc
doc_REFINES = the refinements compared side by side; empty = REFINE alone
doc_PSEUDO = the pseudo masks: crf | sam (sam-pseudo: SAM's masks given the CRF masks' classes) | sam3 | crf sam
doc_PSEUDO_REFINE = whose pseudo masks train the decoder: auto (best on the training split) or a candidate (R, R+sam, R+sam3)
doc_START_LABELS = 1: crf also writes sam-pseudo's start labels (crf --start-out), read by its SAM rules (default: 1 with a SAM rule in PSEUDO and in the demo targets)
doc_SAM_PSEUDO_MODEL = sam-pseudo's SAM: vit_b | vit_l | vit_h | toy (the demo's, trained on another world)
doc_SAM_PSEUDO_WEIGHTS = its weights (make voc / make coco with PSEUDO=sam: SAM's released checkpoint)
doc_SAM3_PSEUDO_WEIGHTS = SAM 3's weights of PSEUDO=sam3 and make sam3-regions (the demo's: a toy SAM 3 trained on another world; make voc / make coco: SAM 3's own)
doc_ITERS = learn-prototypes --iters
doc_FORK_SERVER = 1: the demo world's targets run their commands as forks of one process that imported the libraries once; 0: a process each
doc_DEC_ITERS = train-decoder --iters (the paper: 30000)
doc_DEC_ARGS = other train-decoder options (the paper: --recipe vpl; empty = the vpl recipe's own)
doc_PRED_ARGS = other predict options (the paper: --crf)
doc_WORKERS = parallel commands and CRF processes

## List targets, and the variables a run sets (`make TARGET VAR=value`)
help:
	@awk '/^## /{d=substr($$0,4)} /^[a-z0-9-]+:/{if(d){sub(/:.*/,"");printf "  %-18s %s\n",$$0,d;d=""}}' $(MAKEFILE_LIST)
	@echo
	@echo "Variables (make TARGET VAR=value; default in brackets, the demo world's):"
	@$(foreach v,$(HELP_VARS),printf '  %-15s %s [%s]\n' '$(v)' '$(call quoted,$(doc_$(v)))' \
	  '$(call quoted,$(if $(findstring shell,$(value $(v))),$($(v)): the cores,$(value $(v))))';)

# ---- WeCLIP's recipe (train-decoder --recipe weclip: online pseudo masks from image labels, conv classifier,
# affinity loss) on the demo world, WECLIP_SEEDS decoder seeds, beside VPL's decoder (RUN/metrics/pred_val.json).
# Its own target: each iteration runs GradCAM and PAR on every crop, far slower on a CPU than `make demo`'s cached
# decoder. The toy CLIP's text prototypes (TEMPLATES, BACKGROUND) stand in for WeCLIP's "a clean origami {}."
# WECLIP_ITERS / WECLIPPLUS_ITERS: each recipe's fewest hundreds of iterations whose decoder is out of all-background
# on the training split (WECLIP_CHECK_SEEDS' train-split mIoU; val not read), within ~10 CPU-minutes per seed
# (docs/decoder.md, "A reduced demo run")
WECLIP_SEEDS ?= 0 1 2
WECLIP_CHECK_SEEDS ?= 0
WECLIP_ITERS ?= 100
WECLIPPLUS_ITERS ?= 500
WECLIP_ARGS ?= --dim 64 --layers 1 --heads 4 --crop-size 96 --batch-size 16
## WeCLIP's and WeCLIP+'s (toy DINO) recipes on the demo world over WECLIP_SEEDS decoder seeds; mean ± spread
weclip: $(foreach s,$(WECLIP_SEEDS),$(RUN)/metrics/weclip_seed$(s).json $(RUN)/metrics/weclipplus_seed$(s).json) \
  $(foreach s,$(WECLIP_CHECK_SEEDS),$(RUN)/metrics/train_weclip_seed$(s).json $(RUN)/metrics/train_weclipplus_seed$(s).json)
	$(VENV)/bin/python studies/weclip_demo.py $(RUN) --seeds $(WECLIP_SEEDS)
$(RUN)/weclip_seed%/decoder.safetensors: $(RUN)/text_prototypes.safetensors $(DATA_DEP)
	$(VPL) train-decoder $(DATA) -p $< -o $(@D) --recipe weclip --split $(TRAIN_SPLIT) --iters $(WECLIP_ITERS) \
	  $(WECLIP_ARGS) --seed $* --device $(DEVICE) --overwrite
$(RUN)/pred_weclip_seed%/_stage.json: $(RUN)/weclip_seed%/decoder.safetensors
	$(VPL) predict $< --split $(VAL_SPLIT) -o $(@D) $(PRED_ARGS) --device $(DEVICE) --overwrite
$(RUN)/metrics/weclip_seed%.json: $(RUN)/pred_weclip_seed%/_stage.json
	$(VPL) eval $(<D) --json $@ --overwrite
$(RUN)/weclipplus_seed%/decoder.safetensors: $(RUN)/text_prototypes.safetensors $(DATA_DEP)
	$(VPL) train-decoder $(DATA) -p $< -o $(@D) --recipe weclip+ --dino-model $(DINO_MODEL) \
	  --dino-weights $(DINO_WEIGHTS) --split $(TRAIN_SPLIT) --iters $(WECLIPPLUS_ITERS) $(WECLIP_ARGS) --seed $* \
	  --device $(DEVICE) --overwrite
$(RUN)/pred_weclipplus_seed%/_stage.json: $(RUN)/weclipplus_seed%/decoder.safetensors
	$(VPL) predict $< --split $(VAL_SPLIT) -o $(@D) $(PRED_ARGS) --device $(DEVICE) --overwrite
$(RUN)/metrics/weclipplus_seed%.json: $(RUN)/pred_weclipplus_seed%/_stage.json
	$(VPL) eval $(<D) --json $@ --overwrite
$(RUN)/predtrain_%/_stage.json: $(RUN)/%/decoder.safetensors
	$(VPL) predict $< --split $(TRAIN_SPLIT) -o $(@D) $(PRED_ARGS) --device $(DEVICE) --overwrite
$(RUN)/metrics/train_%.json: $(RUN)/predtrain_%/_stage.json
	$(VPL) eval $(<D) --json $@ --overwrite

## The hostile-input generator, longer than the suite's bounded run (tests/test_fuzz.py; FUZZ_EXAMPLES per command)
FUZZ_EXAMPLES ?= 40
# then two commands with one input changed between them (tests/test_fuzz_two_command.py; FUZZ_TWO_EXAMPLES per
# story; the largest story has 6 changes x 2 ways of stopping)
FUZZ_TWO_EXAMPLES ?= 14
.PHONY: fuzz
fuzz:
	VPLTOOL_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest -q tests/test_fuzz.py
	VPLTOOL_FUZZ_TWO_EXAMPLES=$(FUZZ_TWO_EXAMPLES) OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest -q tests/test_fuzz_two_command.py

## The demo decoder's val mIoU over DECODER_SEEDS decoder seeds, after `make demo` (the README's spread beside its run)
DECODER_SEEDS ?= 0,1,2
decoder-seeds: setup
	$(VENV)/bin/python studies/study_decoder_seeds.py --run $(RUN) --seeds $(DECODER_SEEDS) \
	  > studies/results/decoder_seeds.json.tmp 2> studies/results/decoder_seeds.md.tmp && \
	  mv studies/results/decoder_seeds.json.tmp studies/results/decoder_seeds.json && \
	  mv studies/results/decoder_seeds.md.tmp studies/results/decoder_seeds.md

## GroupViT, then PGSeg fine-tuned from it, on make-pairs shards (train-pgseg --recipe demo, PGSEG_SEEDS, PGSEG_JOBS
## seeds side by side): zero-shot val mIoU of the README's world next to the toy CLIP's MaskCLIP rows, NPR on train
PGSEG_RUN ?= runs/pgseg
PGSEG_SEEDS ?= 0,1,2
PGSEG_JOBS ?= 3
pgseg: setup
	OMP_NUM_THREADS=1 $(VENV)/bin/python studies/study_pgseg_demo.py --run $(PGSEG_RUN) --seeds $(PGSEG_SEEDS) \
	  --jobs $(PGSEG_JOBS) > studies/results/pgseg_demo.json.tmp && \
	  mv studies/results/pgseg_demo.json.tmp studies/results/pgseg_demo.json

# every pattern rule's target pattern (above), so that make keeps what they make instead of deleting it as an
# intermediate. make 4.3 matches .PRECIOUS against a rule's own target pattern, not a file's name (`%.json`
# would keep nothing here), and has no .NOTINTERMEDIATE. Not a bare `.SECONDARY:`: that makes every target an
# intermediate file, which make never rebuilds while what depends on it is newer, so after `make demo` the rows
# of `make sgc`, `make dense` and `make affinity` (missing metrics files under a newer metrics.json) were never
# made. A new pattern rule adds its target here (tests/test_make_targets.py checks that none is deleted)
.PRECIOUS: %/cams_text/_stage.json \
  %/cams_vision/_stage.json \
  %/cams_text_val/_stage.json \
  %/cams_vision_val/_stage.json \
  %/pseudo/_stage.json \
  %/pseudo_val/_stage.json \
  %/pseudo_text/_stage.json \
  %/pseudo_text_val/_stage.json \
  $(foreach k,$(SAM_RULES),%/$(k)/pseudo/_stage.json %/$(k)/pseudo_val/_stage.json) \
  $(RUN)/metrics/%_val.json \
  $(RUN)/metrics/%.json \
  %/decoder/decoder.safetensors \
  %/pred_train/_stage.json \
  $(RUN)/dense/%/segment_val/_stage.json \
  $(RUN)/dense/%@sam3/segment_val/_stage.json \
  $(RUN)/dense/%/cams/_stage.json \
  $(RUN)/dense/%/crf/_stage.json \
  $(RUN)/dense/%/pred_val/_stage.json \
  $(RUN)/metrics/dense/%/segment_val.json \
  $(RUN)/metrics/dense/%/pred_val.json \
  $(RUN)/metrics/dense/%/cams.json \
  $(RUN)/metrics/dense/%/pseudo.json \
  $(RUN)/weclip_seed%/decoder.safetensors \
  $(RUN)/pred_weclip_seed%/_stage.json \
  $(RUN)/metrics/weclip_seed%.json \
  $(RUN)/weclipplus_seed%/decoder.safetensors \
  $(RUN)/pred_weclipplus_seed%/_stage.json \
  $(RUN)/metrics/weclipplus_seed%.json \
  $(RUN)/predtrain_%/_stage.json \
  $(RUN)/metrics/train_%.json \
  $(RUN)/dense_sam3/%/_stage.json \
  $(RUN)/metrics/dense_sam3/%.json \
  $(RUN)/dense_radseg/radseg/_stage.json \
  $(RUN)/metrics/dense_radseg/radseg.json
