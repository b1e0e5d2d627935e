"""`seqmem bench --decode`: the latency of one generation step, every mixer, and HF's cached
step beside it.

A decode step is one token through `step`, from the state the previous step left (the state
is carried: each call continues the sequence), without autograd. Two levels:
- mixer: the mixer alone at d_model 256 (quick: 64), x_t (b, d_model);
- model: a 2-block residual SequenceModel of the mixer on token inputs, one token id per
  sequence through the embedding, both blocks and the read-out head (the logits of the next
  token).
At batch 1 and 64. Every subject's step is timed against the others' in interleaved rounds
(each round repeats a subject's step until it lasts `ROUND_S`; a round's time is the mean step
there); the table gives the median over rounds with its range, after a warm-up of `warmup`
steps from a state built by a prefill of `prefill` tokens.

Peers (transformers installed): HF's MambaMixer and Qwen3-Next's Gated DeltaNet layer with
their cache (`DynamicCache`: the cached one-token path, conv state and recurrent state
updated per step), beside the seqmem mixer `seqmem.mixers.from_hf` builds from the same layer
(the same weights). Both are first run over the same tokens step by step and their outputs
compared (relative difference against `PEER_TOL`); only a pair that agrees is timed.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from seqmem import mixers
from seqmem.bench.config import BenchConfig
from seqmem.bench.measure import (
    interleaved_rounds,
    ms,
    table_context,
    thread_count,
    timing,
    write_rows,
)
from seqmem.bench.peers import _gated_deltanet_layer, _mamba_layer, quiet_transformers
from seqmem.build import seeded
from seqmem.models import SequenceModel

DECODE_ROUND_S = 0.02
PEER_TOL = 1e-4


@dataclass(frozen=True)
class DecodeShapes:
    """Widths, batches and the prefill before the timed steps."""

    d_model: int = 256
    batches: tuple[int, ...] = (1, 64)
    n_layers: int = 2
    vocab: int = 64
    prefill: int = 16
    warmup: int = 3


QUICK_DECODE = DecodeShapes(d_model=64)


@dataclass
class Subject:
    """One timed decoder: `step()` advances its own carried state by one token."""

    name: str
    level: str
    batch: int
    step: Callable[[], None]
    peer: str = ""


def _mixer_step(mixer: mixers.Mixer, batch: int, shapes: DecodeShapes,
                gen: torch.Generator) -> Callable[[], None]:
    x = torch.randn(batch, shapes.prefill, mixer.d_model, generator=gen)
    x_t = torch.randn(batch, mixer.d_model, generator=gen)
    with torch.no_grad():
        _, state = mixer(x)
    box = [state]

    def step():
        with torch.no_grad():
            _, box[0] = mixer.step(x_t, box[0])

    return step


def _model_step(model: SequenceModel, batch: int, shapes: DecodeShapes,
                gen: torch.Generator) -> Callable[[], None]:
    tokens = torch.randint(0, shapes.vocab, (batch, shapes.prefill), generator=gen)
    tok = torch.randint(0, shapes.vocab, (batch,), generator=gen)
    with torch.no_grad():
        _, state = model.features(tokens)
    box = [state]

    def step():
        with torch.no_grad():
            h, box[0] = model.step(tok, box[0])
            model.readout(h)

    return step


def _hf_pair(make: Callable[[int], nn.Module], d: int, batch: int, shapes: DecodeShapes,
             gen: torch.Generator) -> tuple[Callable[[], None], Callable[[], None], float]:
    """(seqmem step, HF cached step, relative difference of their outputs over the prefill
    run step by step from empty states)."""
    from transformers import DynamicCache

    with seeded(int(torch.randint(0, 2**31 - 1, (), generator=gen))):
        layer = make(d).float().eval()
    mixer = mixers.from_hf(layer).float().eval()
    config = getattr(layer, "config", None) or _gated_deltanet_config(d)
    x = torch.randn(batch, shapes.prefill, d, generator=gen)
    cache = DynamicCache(config=config)
    with torch.no_grad():
        theirs = torch.cat([layer(x[:, i:i + 1], cache=cache) for i in range(x.shape[1])], 1)
        state, mine = None, []
        for i in range(x.shape[1]):
            y, state = mixer.step(x[:, i], state)
            mine.append(y)
        err = float((torch.stack(mine, 1) - theirs).abs().max()
                    / theirs.abs().max().clamp_min(1e-30))
    x_t = torch.randn(batch, d, generator=gen)
    box = [state]

    def mine_step():
        with torch.no_grad():
            _, box[0] = mixer.step(x_t, box[0])

    def their_step():
        with torch.no_grad():
            layer(x_t[:, None], cache=cache)

    return mine_step, their_step, err


def _gated_deltanet_config(d: int):
    """The Qwen3-Next config `peers._gated_deltanet_layer` builds its layer from (the layer
    keeps no reference to it; its cache needs it)."""
    from transformers import Qwen3NextConfig

    heads = max(1, d // 64)
    return Qwen3NextConfig(
        hidden_size=d, linear_num_value_heads=heads, linear_num_key_heads=heads,
        linear_key_head_dim=d // heads, linear_value_head_dim=d // heads,
        linear_conv_kernel_dim=4, num_hidden_layers=1, layer_types=["linear_attention"],
        num_attention_heads=heads, num_key_value_heads=heads, head_dim=d // heads)


PEERS = (("mamba", "HF MambaMixer, cached step", _mamba_layer),
         ("gated_deltanet", "HF Qwen3NextGatedDeltaNet, cached step", _gated_deltanet_layer))


def run_decode(shapes: DecodeShapes, *, names: tuple[str, ...] = (), rounds: int = 7,
               seed: int = 0, threads: int | None = 1, peers: bool = True,
               progress: Callable[[str], None] | None = None
               ) -> tuple[dict, list[dict], list[str]]:
    """(context, rows, skipped): the decode step latency of every mixer (or `names`) at each
    batch, mixer- and model-level, and the HF peers (module docstring)."""
    progress = progress or (lambda msg: None)
    names = names or tuple(mixers.names())
    for n in names:
        mixers.get(n)  # unknown names: a one-line error before anything runs
    rows, skipped = [], []
    with thread_count(threads), quiet_transformers():
        ctx = table_context(shapes, rounds)
        for b in shapes.batches:
            gen = torch.Generator().manual_seed(seed + b)
            subjects: list[Subject] = []
            for i, n in enumerate(names):
                progress(f"decode batch {b}: {n}")
                try:
                    with seeded(seed + i):
                        mixer = mixers.build(n, shapes.d_model).eval()
                        model = SequenceModel(0, shapes.d_model, mixer=n,
                                              n_layers=shapes.n_layers, block="residual",
                                              heads=[shapes.vocab],
                                              vocab_size=shapes.vocab).eval()
                    subjects.append(Subject(n, "mixer", b, _mixer_step(mixer, b, shapes, gen)))
                    subjects.append(Subject(n, "model", b, _model_step(model, b, shapes, gen)))
                except (RuntimeError, ValueError, MemoryError) as e:
                    skipped.append(f"{n} batch {b}: {str(e).splitlines()[0][:120]}")
            diffs = {}
            if peers:
                if importlib.util.find_spec("transformers") is None:
                    if b == shapes.batches[0]:
                        skipped.append("HF peers: transformers is not installed "
                                       "(pip install 'seqmem[peers]')")
                else:
                    for n, label, make in PEERS:
                        progress(f"decode batch {b}: {label}")
                        try:
                            mine, theirs, err = _hf_pair(make, shapes.d_model, b, shapes, gen)
                        except Exception as e:  # a peer's API that changed
                            skipped.append(f"{label} batch {b}: the peer failed: "
                                           f"{str(e).splitlines()[0][:120]}")
                            continue
                        if not err <= PEER_TOL:
                            skipped.append(f"{label} batch {b}: outputs differ (relative "
                                           f"{err:.2g} > {PEER_TOL:g}): not timed")
                            continue
                        diffs[label] = err
                        subjects.append(Subject(f"{n} (from_hf)", "mixer", b, mine, label))
                        subjects.append(Subject(label, "peer", b, theirs, label))
            for s in subjects:
                for _ in range(shapes.warmup):
                    s.step()
            progress(f"decode batch {b}: {len(subjects)} subjects, {rounds} rounds")
            times, calls = interleaved_rounds([s.step for s in subjects], rounds, warmup=0,
                                              round_s=DECODE_ROUND_S)
            for s, t_i, n_i in zip(subjects, times, calls, strict=True):
                t = timing(t_i)
                rows.append({"subject": s.name, "level": s.level, "batch": b,
                             "d_model": shapes.d_model, "step_ms": 1e3 * t.median,
                             "step_ms_low": 1e3 * t.low, "step_ms_high": 1e3 * t.high,
                             "tok_s": b / t.median, "rounds": rounds, "calls": n_i,
                             "peer": s.peer, "rel_diff": diffs.get(s.peer)})
    return ctx, rows, skipped


def decode_markdown(rows: list[dict], skipped: list[str], ctx: dict, *, command: str) -> str:
    """The decode table: per batch, each mixer's mixer- and model-level step side by side,
    then the HF peers beside seqmem's mixer with their weights."""
    s = ctx["shapes"]
    lines = [
        "# seqmem bench --decode", "", f"Regenerate with `{command}`.", "",
        f"Machine: {ctx['machine']}; torch {ctx['torch']}, {ctx['threads']} thread(s); "
        f"float32, d_model {s['d_model']}; measured {ctx['date']}.", "",
        "One decode step: one token through `step` from the carried state (after a prefill of "
        f"{s['prefill']} tokens and {s['warmup']} warm-up steps), no autograd. `mixer`: the "
        f"mixer alone; `model`: a {s['n_layers']}-block residual SequenceModel (embedding, "
        "blocks, read-out head). Subjects ran in "
        f"{ctx['rounds']} interleaved rounds: median ms per step with its range; tokens/s = "
        "batch / step time.",
    ]
    for b in dict.fromkeys(r["batch"] for r in rows):
        here = [r for r in rows if r["batch"] == b]
        lines += ["", f"## batch {b}", "",
                  "| mixer | mixer step ms (range) | model step ms (range) | model tokens/s |",
                  "|---|---|---|---|"]
        by = {(r["subject"], r["level"]): r for r in here if not r["peer"]}
        for name in dict.fromkeys(r["subject"] for r in here if not r["peer"]):
            m, mo = by.get((name, "mixer")), by.get((name, "model"))
            tok_s = f"{mo['tok_s']:,.0f}" if mo else ""
            lines.append(f"| {name} | {_ms(m)} | {_ms(mo)} | {tok_s} |")
        peer_rows = [r for r in here if r["peer"]]
        if peer_rows:
            lines += ["", "| seqmem (same weights) | HF peer | rel diff | seqmem ms (range) | "
                      "peer ms (range) | peer / seqmem |", "|---|---|---|---|---|---|"]
            for label in dict.fromkeys(r["peer"] for r in peer_rows):
                mine = next(r for r in peer_rows if r["peer"] == label and r["level"] != "peer")
                theirs = next(r for r in peer_rows if r["peer"] == label and r["level"] == "peer")
                lines.append(f"| {mine['subject']} | {label} | {mine['rel_diff']:.1e} | "
                             f"{_ms(mine)} | {_ms(theirs)} | "
                             f"{theirs['step_ms'] / mine['step_ms']:.2f}x |")
    lines += ["", "peer / seqmem: the peer's step time over seqmem's (above 1: seqmem is "
              "faster)."]
    if skipped:
        lines += ["", "Not measured:", "", *(f"- {x}" for x in skipped)]
    return "\n".join(lines) + "\n"


def _ms(r: dict | None) -> str:
    if r is None:
        return ""
    return f"{ms(r['step_ms'])} ({ms(r['step_ms_low'])}-{ms(r['step_ms_high'])})"


def decode_to(cfg: BenchConfig, out_dir: Path, *, command: str,
              progress: Callable[[str], None] | None = None
              ) -> tuple[list[dict], dict[str, Path]]:
    """`run_decode` for the config's mixers (empty: all) at its shapes, `step_repeats`
    rounds, seed and threads; writes decode.jsonl, decode.csv and decode.md to out_dir."""
    shapes = QUICK_DECODE if cfg.shapes == "quick" else DecodeShapes()
    ctx, rows, skipped = run_decode(shapes, names=cfg.mixers, rounds=cfg.step_repeats,
                                    seed=cfg.seed, threads=cfg.threads, progress=progress)
    ctx["skipped"] = skipped
    md = decode_markdown(rows, skipped, ctx, command=command)
    return rows, write_rows(rows, ctx, out_dir, "decode", md)
