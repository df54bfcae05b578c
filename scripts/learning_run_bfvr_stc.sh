#!/usr/bin/env bash
# BFVR-STC learning run at reduced scale on the embedded sample set (no pretrained files):
# train stage 1 (codebooks, HQ→HQ) and stage 2a/2b (lookup transformers, LQ→codes) on the
# clips of two people (wolfgang_*, single_*), then restore the held-out clips of a third
# person (carphone_*) degraded with bfvr_stc_bfr and score them next to bicubic.
#   bash scripts/learning_run_bfvr_stc.sh [extra train overrides]   (env: STEPS1, STEPS2A, STEPS2B, SIZE, FRAMES, TRAINER)
# The network is the paper's architecture at reduced width (nf 16, D 64, codebooks 256×64,
# 2-layer transformers) at SIZE² (default 128) — what 2 CPU cores or one short GPU lease fit.
# LPIPS-VGG and the DINOv2 discriminator need ImageNet/DINOv2 weights that cannot be fetched
# here; with random weights they would be noise, so this run sets their weights to 0 (L1 +
# codebook + MPR only in stage 1). Say so wherever its numbers are quoted.
set -euo pipefail
PY=${PY:-python}
OUT=${OUT:-outputs/learning_run}
SIZE=${SIZE:-128}; FRAMES=${FRAMES:-8}; TRAINER=${TRAINER:-default}
STEPS1=${STEPS1:-1500}; STEPS2A=${STEPS2A:-300}; STEPS2B=${STEPS2B:-600}
MODEL=(method=bfvr_stc_tiny method.architecture.autoencoder.nf=16 "method.architecture.autoencoder.ch_mult=[1,2,2,4]"
  method.architecture.autoencoder.emb_dim=64 method.architecture.autoencoder.norm_groups=8
  method.architecture.quantizer.codebook_size=256 method.architecture.quantizer.temporal_norm_groups=8
  method.architecture.transformer.dim=64 method.architecture.transformer.layers=2 method.architecture.transformer.mlp_dim=128
  "method.architecture.transformer.latent_grid=[$((SIZE / 8)),$((SIZE / 8))]"
  method.train.objectives.codebook_learning.perceptual_weight=0 method.train.objectives.codebook_learning.gan_weight=0
  method.train.module.usage_log_every=250
  method.restore.window=$FRAMES method.restore.overlap=2 lr=2e-4)
COMMON=("${MODEL[@]}" data=sample "paths.output_dir=$OUT" "trainer=$TRAINER" trainer.log_every_n_steps=10
  "size=$SIZE" "frames=$FRAMES" batch_size=2 "val_clips=[carphone_000,carphone_001]" checkpoint_every=100000)
$PY -m fvr_bench train "${COMMON[@]}" stage=1 "max_steps=$STEPS1" "$@"
$PY -m fvr_bench train "${COMMON[@]}" stage=2a "max_steps=$STEPS2A" "$@"
$PY -m fvr_bench train "${COMMON[@]}" stage=2b "max_steps=$STEPS2B" "$@"
CKPT="$OUT/train/sample/bfvr_stc_tiny/stage_2b/checkpoints/last.ckpt"
# Held-out scoring at the training scale (SIZE², PSNR/SSIM; NIQE needs >= 96x192 frames and the face
# detectors miss most faces this small — their skipped-frame counts are printed) and at 3×SIZE
# (every learning_run metric; the network then sees faces 3× larger than in training).
for EVAL_SIZE in "$SIZE" "$((3 * SIZE))"; do
  EVAL_OUT="$OUT/eval_$EVAL_SIZE"
  EVAL=(data=sample "paths.output_dir=$EVAL_OUT" "data.resize=$EVAL_SIZE" degradation=bfvr_stc_bfr metrics=learning_run
        limit_clips=2 seed=0 progress=false)
  [ "$EVAL_SIZE" -lt 192 ] && EVAL+=("~metrics.items.niqe")
  $PY -m fvr_bench run "${EVAL[@]}" "${MODEL[@]}" "method.checkpoint=$CKPT" method.restorer.allow_random_weights=false
  $PY -m fvr_bench run "${EVAL[@]}" method=bicubic
  $PY -m fvr_bench run "${EVAL[@]}" method=identity
  $PY -m fvr_bench leaderboard "paths.output_dir=$EVAL_OUT" format=csv,md baseline=bicubic
done
