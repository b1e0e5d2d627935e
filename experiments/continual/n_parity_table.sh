#!/usr/bin/env bash
# The continual-learning table on the N-parity curriculum (leaky RNN, N = 2..6, a head per N):
# every method with the same budget (300 steps of batch 128 per experience), seeds 0, 1, 2.
# Usage: bash experiments/continual/n_parity_table.sh [store root, default runs/continual]
set -euo pipefail
ROOT=${1:-runs/continual}
.venv/bin/seqmem continual --protocol n_curriculum --setting task \
  --method finetune,ewc,si,replay,hnet,rnn_hnet,multihead,joint --seeds 0,1,2 \
  --root "$ROOT" --no-progress steps=300 protocol_options.n_max=6
