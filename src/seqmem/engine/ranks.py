"""The follower ranks of a data-parallel training run (`seqmem.train.distributed`).

A follower is started by its lead (`seqmem train --nproc N`: `python -m seqmem.engine.ranks`
with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in its environment) or by torchrun (every
rank runs `seqmem train`; ranks above 0 come here from the command line). It joins the
process group, receives the run's config, id and resume flag from the lead, and trains with
them, writing nothing: the lead alone writes the store and the checkpoints.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys

import torch.distributed as dist

from seqmem import build
from seqmem.config import load_config
from seqmem.train import distributed
from seqmem.train.loop import fit


def follower(backend: str) -> int:
    """Train as rank RANK of the run the lead describes; 0 at the end, or 1 with one line on
    stderr when the lead has gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the lead
    rank = int(os.environ.get("RANK", "0"))
    try:
        dist.init_process_group(backend, init_method="env://", timeout=distributed.TIMEOUT)
        msg = distributed.broadcast_object()
        cfg = load_config(msg["config"])
        parts = build.train_parts(cfg)
        fit(cfg, distributed.FollowerRun(msg["run_id"]), parts, resume=bool(msg["resume"]))
    except (RuntimeError, dist.DistBackendError) as e:
        why = re.sub(r"^\[[^\]]*\]\s*", "", str(e).splitlines()[0])  # gloo's source line
        print(f"seqmem rank {rank}: the run's lead has gone ({why[:120]})", file=sys.stderr)
        return 1
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(follower(os.environ.get(distributed.FOLLOWER_BACKEND, "gloo")))
