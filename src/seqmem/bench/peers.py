"""`seqmem bench --peers`: seqmem's ops and mixers beside the field's own implementations of
the same math, on the same inputs, timed in interleaved rounds.

A pair (`Pair`) builds both sides on one set of inputs. For every pair the bench first checks
that the two compute the same thing (the largest difference of their outputs relative to the
largest output, against the pair's tolerance); only a pair that agrees is timed. Timing runs
forward and backward (of the sum of the outputs) of the two sides in alternating order,
`rounds` times (each round repeating a short call until it lasts `ROUND_S`), after a
warm-up of each; a round's ratio is the peer's time over seqmem's
(above 1: seqmem is faster). Rows give the median ratio and its range over the rounds, and
each side's median tokens/s. Interleaving keeps both sides under the same machine load: on a
shared machine back-to-back repetitions drift by up to 15 %.

The peers, each skipped with a line naming its package when that is not installed
(`pip install 'seqmem[peers]'`):
- HF transformers' torch paths: `torch_chunk_gated_delta_rule` of Qwen3-Next, and the
  `MambaMixer`, `Mamba2Mixer` and `Qwen3NextGatedDeltaNet` layers, against the seqmem mixer
  that `seqmem.mixers.from_hf` builds from the layer (the same weights);
- fla's pure-PyTorch references (`fla/ops/*/naive.py`), read from their files: fla's package
  imports triton, which a machine without a GPU may lack, and the reference files need only
  torch and einops;
- torch.nn.RNN, GRU and LSTM, against elman, gru and lstm with the same weights (`load_torch`);
- `torch.compile` of seqmem's own forms (compiled once in the warm-up, not timed).
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmem import mixers, ops
from seqmem.bench.config import BenchConfig
from seqmem.bench.measure import ROUND_S, interleaved_rounds, machine, thread_count, write_rows
from seqmem.build import seeded
from seqmem.devices import resolve_device
from seqmem.errors import SeqmemError


@dataclass(frozen=True)
class Shapes:
    """The shapes of one peers run: ops take (b, t, h, d) heads, mixers (b, t_mixer,
    d_model)."""

    b: int = 4
    t: int = 2048
    h: int = 4
    d: int = 64
    d_model: int = 256
    t_mixer: int = 256


QUICK_SHAPES = Shapes(b=2, t=256, h=2, d=32, d_model=64, t_mixer=64)


@dataclass(frozen=True)
class Sides:
    """Both sides of a pair, built: `seqmem(*inputs)` and `peer(*inputs)` return the output
    compared and differentiated; `tokens` per call."""

    seqmem: Callable[..., Tensor]
    peer: Callable[..., Tensor]
    inputs: list[Tensor]
    tokens: int


@dataclass(frozen=True)
class Pair:
    """One seqmem subject beside one peer. `needs` is the package the peer takes (None: torch
    itself); `build(shapes, gen)` makes the `Sides`; `tol` the largest relative difference of
    the outputs that counts as the same math (float32)."""

    subject: str
    peer: str
    needs: str | None
    build: Callable[[Shapes, torch.Generator], Sides]
    tol: float = 1e-4


# ---- inputs ----------------------------------------------------------------------------------
def _heads(s: Shapes, gen: torch.Generator, *, gates: bool) -> list[Tensor]:
    """q, k (L2-normalised keys, as the delta rules need), v (b, t, h, d), and with `gates`
    g = logsigmoid (<= 0) and beta = sigmoid, each (b, t, h)."""
    def r(*shape):
        return torch.randn(*shape, generator=gen)

    q, k, v = r(s.b, s.t, s.h, s.d), F.normalize(r(s.b, s.t, s.h, s.d), dim=-1), \
        r(s.b, s.t, s.h, s.d)
    out = [q, k, v]
    if gates:
        out += [F.logsigmoid(r(s.b, s.t, s.h) + 2.0), torch.sigmoid(r(s.b, s.t, s.h))]
    return [x.requires_grad_(True) for x in out]


def _fla_reference(module: str, name: str) -> Callable:
    """The function `name` of fla's pure-PyTorch reference file fla/ops/<module>/naive.py,
    loaded from the file without importing fla (whose package imports triton)."""
    spec = importlib.util.find_spec("fla")
    path = Path(next(iter(spec.submodule_search_locations))) / "ops" / module / "naive.py"
    loader = importlib.util.spec_from_file_location(f"seqmem_peer_fla_{module}", path)
    mod = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(mod)
    return getattr(mod, name)


# ---- op pairs --------------------------------------------------------------------------------
def _gdr_hf(s, gen):
    from transformers.models.qwen3_next.modeling_qwen3_next import torch_chunk_gated_delta_rule

    def peer(q, k, v, g, beta):
        return torch_chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=64)[0]

    return Sides(lambda q, k, v, g, beta: ops.gated_delta_rule(q, k, v, g=g, beta=beta)[0],
                 peer, _heads(s, gen, gates=True), s.b * s.t)


def _gdr_fla(s, gen):
    ref = _fla_reference("gated_delta_rule", "naive_chunk_gated_delta_rule")
    return Sides(lambda q, k, v, g, beta: ops.gated_delta_rule(q, k, v, g=g, beta=beta)[0],
                 lambda q, k, v, g, beta: ref(q, k, v, g, beta, chunk_size=64)[0],
                 _heads(s, gen, gates=True), s.b * s.t)


def _delta_fla(s, gen):
    ref = _fla_reference("delta_rule", "delta_rule_chunkwise")

    def peer(q, k, v, beta):  # fla's reference: (b, h, t, d), t a multiple of its chunk
        o = ref(*(x.transpose(1, 2) for x in (q, k, v, beta)), chunk_size=64)[0]
        return o.transpose(1, 2)

    q, k, v, _, beta = _heads(s, gen, gates=True)
    return Sides(lambda q, k, v, beta: ops.delta_rule(q, k, v, beta=beta)[0], peer,
                 [q, k, v, beta], s.b * s.t)


def _ssd_fla(s, gen):
    ref = _fla_reference("simple_gla", "naive_chunk_simple_gla")
    q, k, v, g, _ = _heads(s, gen, gates=True)
    scale = s.d ** -0.5

    def mine(q, k, v, g):  # ssd's h_t = exp(a_t) h_{t-1} + x_t^T B_t, y_t = h_t C_t is simple
        # GLA's S_t = exp(g_t) S_{t-1} + k_t^T v_t, o_t = scale q_t S_t with x = v, B = k, C = q
        return ops.ssd(v, g, k, q * scale, chunk_size=64)[0]

    return Sides(mine, lambda q, k, v, g: ref(q, k, v, g, chunk_size=64)[0], [q, k, v, g],
                 s.b * s.t)


def _linear_attention_fla(s, gen):
    ref = _fla_reference("linear_attn", "naive_chunk_linear_attn")
    def peer(q, k, v):  # fla's versions return o, or (o, final state)
        o = ref(q, k, v)
        return o[0] if isinstance(o, tuple) else o

    return Sides(lambda q, k, v: ops.linear_attention(q, k, v)[0], peer,
                 _heads(s, gen, gates=False), s.b * s.t)


# ---- mixer pairs -----------------------------------------------------------------------------
def _hf_layer(make_layer: Callable[[int], nn.Module]):
    def build(s, gen):
        with seeded(int(torch.randint(0, 2**31 - 1, (), generator=gen))):
            layer = make_layer(s.d_model).float()
        mixer = mixers.from_hf(layer).float()
        x = torch.randn(s.b, s.t_mixer, s.d_model, generator=gen).requires_grad_(True)
        return Sides(lambda x: mixer(x)[0], lambda x: layer(x), [x], s.b * s.t_mixer)

    return build


def _mamba_layer(d):
    from transformers import MambaConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer

    return MambaMixer(MambaConfig(hidden_size=d, state_size=16, intermediate_size=2 * d,
                                  conv_kernel=4, time_step_rank=math.ceil(d / 16),
                                  num_hidden_layers=1), 0)


def _mamba2_layer(d):
    from transformers import Mamba2Config
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    headdim = min(64, d)
    return Mamba2Mixer(Mamba2Config(hidden_size=d, state_size=64, expand=2, head_dim=headdim,
                                    num_heads=2 * d // headdim, n_groups=1, conv_kernel=4,
                                    chunk_size=64, num_hidden_layers=1), 0)


def _gated_deltanet_layer(d):
    from transformers import Qwen3NextConfig
    from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextGatedDeltaNet

    heads = max(1, d // 64)
    return Qwen3NextGatedDeltaNet(Qwen3NextConfig(
        hidden_size=d, linear_num_value_heads=heads, linear_num_key_heads=heads,
        linear_key_head_dim=d // heads, linear_value_head_dim=d // heads,
        linear_conv_kernel_dim=4, num_hidden_layers=1, layer_types=["linear_attention"],
        num_attention_heads=heads, num_key_value_heads=heads, head_dim=d // heads), 0)


def _torch_rnn(name: str, torch_cls: type[nn.RNNBase]):
    def build(s, gen):
        with seeded(int(torch.randint(0, 2**31 - 1, (), generator=gen))):
            ref = torch_cls(s.d_model, s.d_model, batch_first=True)
        mixer = mixers.build(name, s.d_model)
        mixer.load_torch(ref)
        x = torch.randn(s.b, s.t_mixer, s.d_model, generator=gen).requires_grad_(True)
        return Sides(lambda x: mixer(x)[0], lambda x: ref(x)[0], [x], s.b * s.t_mixer)

    return build


def _compiled(name: str, mode: str):
    def build(s, gen):
        with seeded(int(torch.randint(0, 2**31 - 1, (), generator=gen))):
            mixer = mixers.build(name, s.d_model)
        x = torch.randn(s.b, s.t_mixer, s.d_model, generator=gen).requires_grad_(True)

        def eager(x):
            return mixer(x, mode=mode)[0]

        return Sides(eager, torch.compile(eager, dynamic=False), [x], s.b * s.t_mixer)

    return build


PAIRS: tuple[Pair, ...] = (
    Pair("gated_delta_rule [chunk]", "HF Qwen3-Next torch_chunk_gated_delta_rule",
         "transformers", _gdr_hf),
    Pair("gated_delta_rule [chunk]", "fla naive_chunk_gated_delta_rule", "fla", _gdr_fla),
    Pair("delta_rule [chunk]", "fla delta_rule_chunkwise", "fla", _delta_fla),
    Pair("ssd [chunk]", "fla naive_chunk_simple_gla (the same recurrence)", "fla", _ssd_fla),
    Pair("linear_attention [chunk]", "fla naive_chunk_linear_attn", "fla",
         _linear_attention_fla),
    Pair("mamba mixer", "HF MambaMixer (torch path)", "transformers", _hf_layer(_mamba_layer)),
    Pair("mamba2 mixer", "HF Mamba2Mixer (torch path)", "transformers",
         _hf_layer(_mamba2_layer), tol=1e-3),
    Pair("gated_deltanet mixer", "HF Qwen3NextGatedDeltaNet (torch path)", "transformers",
         _hf_layer(_gated_deltanet_layer), tol=1e-3),
    Pair("elman mixer", "torch.nn.RNN", None, _torch_rnn("elman", nn.RNN)),
    Pair("gru mixer", "torch.nn.GRU", None, _torch_rnn("gru", nn.GRU)),
    Pair("lstm mixer", "torch.nn.LSTM", None, _torch_rnn("lstm", nn.LSTM)),
    # compiled once in the warm-up (minutes on a small CPU: left out of --quick); a recurrent
    # form is not offered: torch.compile unrolls its loop over t
    Pair("gla mixer [chunk]", "torch.compile of it", "compile", _compiled("gla", "chunk")),
    Pair("mamba2 mixer [chunk]", "torch.compile of it", "compile",
         _compiled("mamba2", "chunk")),
)
#: The pairs left out of a quick run, and why.
SLOW = {"torch.compile of it": "torch.compile takes minutes on a small CPU (the full run "
                               "measures it)"}


def missing(needs: str | None) -> str | None:
    """Why a peer cannot run here (None: it can)."""
    if needs is None:
        return None
    if needs == "compile":
        if shutil.which("cc") is None and shutil.which("gcc") is None:
            return "torch.compile on the CPU needs a C compiler (cc), which is not on PATH"
        return None
    if importlib.util.find_spec(needs) is None:
        package = {"fla": "flash-linear-attention"}.get(needs, needs)
        return f"{package} is not installed (pip install 'seqmem[peers]')"
    return None


# ---- measuring -------------------------------------------------------------------------------
def agreement(sides: Sides) -> float:
    """Largest |seqmem - peer| over the largest |peer| of the two outputs, without grad."""
    with torch.no_grad():
        a = sides.seqmem(*sides.inputs).float()
        b = sides.peer(*sides.inputs).float()
    if a.shape != b.shape:
        return math.inf
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _fwd_bwd(fn: Callable[..., Tensor], inputs: list[Tensor]) -> Callable[[], None]:
    """A closure running one forward and backward of fn(*inputs).sum()."""
    def run():
        for x in inputs:
            x.grad = None
        fn(*inputs).sum().backward()

    return run


def interleaved(sides: Sides, rounds: int) -> dict:
    """Times of both sides in alternating order (seqmem first in even rounds), after one
    warm-up each (`measure.interleaved_rounds`); a round times each side over the same number
    of calls, enough for the slower one to last `ROUND_S`. Per round the ratio peer /
    seqmem; medians and the ratio's range."""
    runs = [_fwd_bwd(sides.seqmem, sides.inputs), _fwd_bwd(sides.peer, sides.inputs)]
    (mine, theirs), (calls, _) = interleaved_rounds(runs, rounds, warmup=1, same_calls=True,
                                                    round_s=ROUND_S)
    ratio = [p / m for p, m in zip(theirs, mine, strict=True)]
    return {"ratio": statistics.median(ratio), "ratio_low": min(ratio),
            "ratio_high": max(ratio), "rounds": rounds, "calls": calls,
            "seqmem_tok_s": sides.tokens / statistics.median(mine),
            "peer_tok_s": sides.tokens / statistics.median(theirs)}


@contextlib.contextmanager
def quiet_transformers():
    """Inside the block, transformers' notices that a fused kernel is missing and it falls
    back to its torch path (that path is the peer) are silenced; its verbosity is restored
    after it."""
    if importlib.util.find_spec("transformers") is None:
        yield
        return
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def run_peers(shapes: Shapes, *, rounds: int = 7, seed: int = 0, threads: int | None = 1,
              only: tuple[str, ...] = (), quick: bool = False,
              progress: Callable[[str], None] | None = None) -> tuple[list[dict], list[str]]:
    """(rows, skipped): every pair whose peer is installed (and whose subject or peer
    contains one of `only`, if given; `quick` leaves out the `SLOW` ones), checked for
    agreement, then timed."""
    progress = progress or (lambda msg: None)
    rows, skipped = [], []
    with thread_count(threads), quiet_transformers():
        for i, pair in enumerate(PAIRS):
            label = f"{pair.subject} / {pair.peer}"
            if only and not any(o in label for o in only):
                continue
            if quick and pair.peer in SLOW:
                skipped.append(f"{label}: {SLOW[pair.peer]}")
                continue
            why = missing(pair.needs)
            if why:
                skipped.append(f"{label}: {why}")
                continue
            progress(label)
            gen = torch.Generator().manual_seed(seed + i)
            try:
                sides = pair.build(shapes, gen)
                err = agreement(sides)
            except Exception as e:  # a peer's API that changed, a compiler that fails
                skipped.append(f"{label}: the peer failed: {str(e).splitlines()[0][:160]}")
                continue
            row = {"subject": pair.subject, "peer": pair.peer, "rel_diff": err, "tol": pair.tol,
                   "agree": err <= pair.tol}
            if row["agree"]:
                row.update(interleaved(sides, rounds))
            else:
                skipped.append(f"{label}: outputs differ (relative {err:.2g} > {pair.tol:g}): "
                               f"not timed")
            rows.append(row)
    return rows, skipped


def peers_markdown(rows: list[dict], skipped: list[str], *, shapes: Shapes, context: dict,
                   command: str) -> str:
    """The peers table as Markdown, with how to read it."""
    lines = [
        "# seqmem bench --peers", "",
        f"Regenerate with `{command}`.", "",
        f"Machine: {context['machine']}; torch {context['torch']}, {context['threads']} "
        f"thread(s); float32; measured {context['date']}.",
        "Peers: " + (", ".join(f"{k} {v}" for k, v in (context.get("peers") or {}).items())
                     or "torch only") + ".",
        f"Ops: b = {shapes.b}, t = {shapes.t}, h = {shapes.h}, d = {shapes.d}. Mixers: "
        f"b = {shapes.b}, t = {shapes.t_mixer}, d_model = {shapes.d_model}.", "",
        "Each pair ran on the same inputs; `rel diff` is the largest difference of the two "
        "outputs over the largest output (the pair is timed only when it is within `tol`). "
        "`seqmem / peer` is the peer's fwd+bwd time over seqmem's, the median of interleaved "
        "rounds with its range: above 1, seqmem is faster.", "",
        "| seqmem | peer | rel diff | seqmem / peer (range) | seqmem tok/s | peer tok/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["agree"]:
            ratio = f"{r['ratio']:.2f}x ({r['ratio_low']:.2f}-{r['ratio_high']:.2f})"
            lines.append(f"| {r['subject']} | {r['peer']} | {r['rel_diff']:.1e} | {ratio} | "
                         f"{r['seqmem_tok_s']:,.0f} | {r['peer_tok_s']:,.0f} |")
        else:
            lines.append(f"| {r['subject']} | {r['peer']} | {r['rel_diff']:.1e} | "
                         f"outputs differ: not timed | | |")
    if skipped:
        lines += ["", "Not measured:", "", *(f"- {s}" for s in skipped)]
    return "\n".join(lines) + "\n"


def peer_versions() -> dict[str, str]:
    """The installed version of each peer package (absent ones left out)."""
    from importlib import metadata

    out = {}
    for dist in ("transformers", "flash-linear-attention"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            if dist == "flash-linear-attention" and importlib.util.find_spec("fla"):
                out[dist] = "present (no package metadata)"
    return out


def peers_to(cfg: BenchConfig, out_dir: str | Path, *, command: str,
             progress: Callable[[str], None] | None = None
             ) -> tuple[dict, list[dict], dict[str, Path]]:
    """Run the peers (`cfg.peer_shapes`, `cfg.peer_rounds`, `cfg.threads`, `cfg.seed`) and
    write peers.jsonl, peers.csv and peers.md to `out_dir`; returns (context, rows, paths),
    the context's "skipped" naming every pair not measured and why. The peers measure on the
    CPU only: another `cfg.device` is refused in one line."""
    if cfg.device != "cpu" and resolve_device(cfg.device).type != "cpu":
        raise SeqmemError(f"the peers measure on the CPU only; device {cfg.device!r} is "
                          f"accepted by the grid alone (seqmem bench --quick, --mixers, ...)")
    quick = cfg.peer_shapes == "quick"
    shapes = QUICK_SHAPES if quick else Shapes()
    rows, skipped = run_peers(shapes, rounds=cfg.peer_rounds, seed=cfg.seed,
                              threads=cfg.threads, quick=quick, progress=progress)
    ctx = {"kind": "peers", "torch": torch.__version__, "threads": cfg.threads or
           torch.get_num_threads(), "machine": machine(),
           "date": time.strftime("%Y-%m-%d %H:%M:%S"), "shapes": shapes.__dict__,
           "peers": peer_versions(), "skipped": skipped}
    md = peers_markdown(rows, skipped, shapes=shapes, context=ctx, command=command)
    paths = write_rows(rows, ctx, Path(out_dir), "peers", md, fields=("subject", "peer"))
    return ctx, rows, paths
