#!/usr/bin/env bash
# Three measurements on the memory task suite, each with a 240 s budget on a 2-core CPU:
#  1. MQAR (Zoology): softmax attention vs Gated DeltaNet, 2 residual layers, d_model 64,
#     seq_len 64, 8 key-value pairs, vocabulary 8192, batch 64.
#  2. Parity (Grazzi et al. 2025): DeltaNet with beta in (0, 1) vs (0, 2) (negative
#     eigenvalues), trained on lengths 3..40, tested on 40..256 (the task's test split).
#  3. MNIST-1D (Greydanus 2020): a GRU, d_model 128.
# Usage: bash experiments/tasks/memory_tasks.sh [store root, default runs/tasks]
set -euo pipefail
ROOT=${1:-runs/tasks}
T="train.max_time_s=240 train.max_epochs=1000 train.threads=2 --no-progress --root $ROOT"
S=.venv/bin/seqmem
MQAR="--task mqar task.vocab_size=8192 model.d_model=64 model.n_layers=2 model.block=residual task.n_pairs=8
      task.seq_len=64 train.batch_size=64 train.target_acc=0.99"
$S train $MQAR --mixer attention model.mixer.max_len=64 $T
$S train $MQAR --mixer gated_deltanet $T
for neg in false true; do
  $S train --task parity --mixer deltanet model.d_model=64 model.n_layers=2 \
    model.block=residual model.mixer.negative_eigenvalues=$neg $T
done
$S train --task mnist1d --mixer gru model.d_model=128 $T
