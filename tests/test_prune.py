"""Pruning, checked by independent routes: masked models equal the loop of their step and an
unmasked model whose weights were zeroed, in every form; masked entries stay exactly zero
through optimizer updates and checkpoints; the gradual schedules equal their formulas
(numbers worked out by hand); one-shot magnitude pruning masks exactly the k smallest |w|;
removing a unit or a head by its dependency group equals a smaller layer built without it
(torch.nn.RNN / GRU / LSTM with fewer hidden units, the leaky RNN's equation, a mixer with a
head fewer); `seqmem prune` end to end and its one-line errors."""

import json
import re

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from seqmem.analysis.probes import load_stage
from seqmem.analysis.pruning import pruning_figure, spearman
from seqmem.cli.main import main
from seqmem.config import load_config
from seqmem.engine.jobs import train_run
from seqmem.errors import SeqmemError
from seqmem.mixers import build as build_mixer
from seqmem.models import SequenceModel
from seqmem.report import load_entries
from seqmem.report.render import CANVAS, figure_checks
from seqmem.store import RunStore
from seqmem.train import prune as P

#: (mixer, options) covered: the RNNs (units) and the linear-attention layers (heads).
MIXERS = {
    "leaky_rnn": ("leaky_rnn", {}),
    "leaky_rnn_no_U": ("leaky_rnn", {"input_proj": False, "h0": "random"}),
    "elman": ("elman", {}),
    "gru": ("gru", {}),
    "lstm": ("lstm", {}),
    "linear_attn": ("linear_attn", {}),
    "gla": ("gla", {}),
    "deltanet": ("deltanet", {}),
    "gated_deltanet": ("gated_deltanet", {}),
}
D = 8


def _model(key, *, seed=0, d_input=2, n_layers=1):
    name, opts = MIXERS[key]
    torch.manual_seed(seed)
    return SequenceModel(d_input, D, mixer=name, mixer_options=opts, heads=[2, 3],
                         n_layers=n_layers).double()


def _pruned(key, **kw):
    m = _model(key, **kw)
    P.attach_masks(m, P.magnitude_masks(m, 0.5))
    P.attach_masks(m, P.group_masks(m, len(m.blocks) - 1, [1]))
    return m


def _step_loop(m, x, gen_seed=0):
    st = m.init_state(x.shape[0], generator=torch.Generator().manual_seed(gen_seed))
    hs = []
    for t in range(x.shape[1]):
        h, st = m.step(x[:, t], st)
        hs.append(h)
    return torch.stack(hs, 1), st


@pytest.mark.parametrize("key", list(MIXERS))
def test_masked_forms_equal_the_step_loop_and_zeroed_weights(key):
    m = _pruned(key, n_layers=2 if key in ("gru", "linear_attn") else 1)
    masks = P.masks_of(m)
    assert masks and any((v == 0).any() for v in masks.values())
    for path, mask in masks.items():  # the weights the model uses are exactly zero there
        assert (P.weight(m, path)[mask == 0] == 0).all()
    # the independent route: an unmasked model holding the zeroed weights
    plain = _model(key, n_layers=len(m.blocks))
    plain.load_state_dict(P.plain_state_dict(m))
    assert not P.masks_of(plain)
    x = torch.randn(3, 11, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref, _ = _step_loop(plain, x)
    loop, _ = _step_loop(m, x)
    torch.testing.assert_close(loop, ref, rtol=0, atol=1e-12)
    for mode in m.blocks[0].mixer.modes:
        st = m.init_state(3, generator=torch.Generator().manual_seed(0))
        h, _ = m.features(x, st, mode=mode)
        torch.testing.assert_close(h, ref, rtol=1e-9, atol=1e-10, msg=f"mode {mode}")
    # gradients never reach a masked entry
    st = m.init_state(3, generator=torch.Generator().manual_seed(0))
    m(x, st)[0][0].sum().backward()
    for name, p in m.named_parameters():
        plain_name = P.plain_name(name)
        if plain_name in masks and p.grad is not None:
            assert (p.grad[masks[plain_name] == 0] == 0).all(), plain_name


@pytest.mark.parametrize("key, opt", [("leaky_rnn", "adamw"), ("lstm", "sgd"), ("gla", "adamw"),
                                      ("deltanet", "sgd")])
def test_masked_weights_stay_zero_through_updates(key, opt, tmp_path):
    m = _model(key)
    before = {p: P.weight(m, p).detach().clone() for p in P.prunable(m)}
    # an optimizer with momentum built on the dense model: its state is nonzero everywhere
    # by the time the masks come, so only the parametrisation keeps masked entries at zero
    make = {"sgd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1),
            "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.05, weight_decay=0.1)}[opt]
    x = torch.randn(4, 6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def update(model, optimizer):
        optimizer.zero_grad()
        (model(x, model.init_state(4, generator=torch.Generator().manual_seed(0)))[0][0]
         .pow(2).mean()).backward()
        optimizer.step()

    masks = P.magnitude_masks(m, 0.6)
    P.attach_masks(m, masks)
    optimizer = make(list(m.parameters()))
    for _ in range(5):
        update(m, optimizer)
    for path, mask in masks.items():
        w = P.weight(m, path)
        assert (w[mask == 0] == 0).all() and (w[mask == 0] == 0).sum() == (mask == 0).sum()
        assert not torch.equal(w[mask == 1], before[path][mask == 1])  # the rest trained
    # and through a checkpoint of the run store
    run = RunStore(tmp_path).create_run({"name": "prune-test"})
    run.save_checkpoint("prune-x", {"model": P.plain_state_dict(m), "masks": P.masks_of(m)})
    again = P.load_masked(_model(key, seed=5), run.load_checkpoint("prune-x"))
    for path, mask in masks.items():
        torch.testing.assert_close(P.masks_of(again)[path], mask, rtol=0, atol=0)
        torch.testing.assert_close(P.weight(again, path), P.weight(m, path), rtol=0, atol=0)


def test_one_shot_magnitude_prunes_exactly_the_k_smallest():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(7, 9, generator=g, dtype=torch.float64)
    for s in (0.0, 0.1, 0.3, 0.5, 0.99, 1.0):
        k = round(s * w.numel())
        mask = P.magnitude_mask(w, s)
        smallest = sorted(range(w.numel()), key=lambda i: abs(w.flatten()[i].item()))[:k]
        assert set((mask.flatten() == 0).nonzero().flatten().tolist()) == set(smallest)
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(SeqmemError, match=r"sparsity must lie in \[0, 1\], got 1.5"):
        P.magnitude_mask(w, 1.5)
    # per prunable tensor of a model; entries masked before stay masked at a higher sparsity
    m = _model("gru")
    P.attach_masks(m, P.magnitude_masks(m, 0.25))
    first = P.masks_of(m)
    P.attach_masks(m, P.magnitude_masks(m, 0.5))
    for path, mask in P.masks_of(m).items():
        assert (mask == 0).sum() == round(0.5 * mask.numel())
        assert (mask[first[path] == 0] == 0).all()
    assert P.prunable(m) == ["blocks.0.mixer.weight_ih", "blocks.0.mixer.weight_hh"]


def test_the_leaky_diagonal_counts_as_zero():
    # zero_diagonal: W's diagonal never acts, so it is what magnitude pruning takes first
    m = _model("leaky_rnn")
    assert m.blocks[0].mixer.zero_diagonal and (m.blocks[0].mixer.W.diagonal() != 0).all()
    mask = P.magnitude_masks(m, 1 / D, ["blocks.0.mixer.W"])["blocks.0.mixer.W"]
    torch.testing.assert_close(mask, 1 - torch.eye(D, dtype=torch.float64), rtol=0, atol=0)


def test_spearman_against_scipy():
    g = np.random.default_rng(0)
    for _ in range(5):
        a = g.integers(0, 4, 30).astype(float)  # many ties
        b = a + g.normal(0, 2, 30)
        b[::7] = b[0]
        assert spearman(a, b) == pytest.approx(scipy.stats.spearmanr(a, b).statistic)
    assert spearman([1, 2, np.nan, 3, 4], [2, 1, 5, 4, 3]) == pytest.approx(
        scipy.stats.spearmanr([1, 2, 3, 4], [2, 1, 4, 3]).statistic)
    assert spearman([1, 1, 1, 1], [1, 2, 3, 4]) is None


def test_zhu_gupta_schedule_against_its_formula():
    # s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3, s_f = 0.8, s_i = 0, t0 = 10, n = 4, dt = 5
    kw = {"final": 0.8, "start": 10, "n_steps": 4, "every": 5}
    for t, s in ((0, 0.0), (10, 0.0), (15, 0.4625), (17, 0.4625), (20, 0.7),
                 (25, 0.7875), (30, 0.8), (100, 0.8)):
        assert P.zhu_gupta_sparsity(t, **kw) == pytest.approx(s, abs=1e-12), t
    assert P.zhu_gupta_sparsity(15, initial=0.2, **kw) == pytest.approx(
        0.8 - 0.6 * 0.75 ** 3, abs=1e-12)
    # the pruner applies it: round(s_t n) entries of each tensor at the pruning steps
    m = _model("elman")
    P.attach_masks(m, {p: torch.ones_like(P.weight(m, p)) for p in P.prunable(m)})
    pruner = P.GradualPruner(m, "zhu_gupta", 0.8, 10, 4, 5, P.prunable(m))
    for t in range(0, 31):
        pruner(t)
        for mask in P.masks_of(m).values():
            expect = round(P.zhu_gupta_sparsity(t - t % 5 if t >= 10 else t, **kw)
                           * mask.numel())
            assert int((mask == 0).sum()) == expect, t


def test_narang_threshold_against_its_formula():
    # q = 1, start 0, ramp 10, end 20, freq 2: theta = 2 * 1 * 2 / (2 * 10 + 3 * 10) = 0.08,
    # phi = 0.12; eps(4) = 0.08 * 5 / 2; eps(12) = (0.08 * 11 + 0.12 * 3) / 2
    kw = {"q": 1.0, "start": 0, "ramp": 10, "end": 20, "freq": 2}
    assert P.narang_theta(1.0, start=0, ramp=10, end=20, freq=2) == pytest.approx(0.08)
    assert P.narang_threshold(4, **kw) == pytest.approx(0.2)
    assert P.narang_threshold(12, **kw) == pytest.approx(0.62)
    assert P.narang_threshold(18, **kw) == pytest.approx((0.88 + 0.12 * 9) / 2)
    for t in (0, 5, 13, 20, 22):  # not a pruning step: outside (start, end) or odd
        assert P.narang_threshold(t, **kw) is None
    eps = [P.narang_threshold(t, **kw) for t in range(2, 20, 2)]
    assert eps == sorted(eps)
    with pytest.raises(SeqmemError, match="start < ramp <= end"):
        P.narang_theta(1.0, start=5, ramp=5, end=9, freq=1)
    # the pruner masks |w| < eps, q the 90th percentile of |w| when it starts
    m = _model("gru")
    paths = P.prunable(m)
    P.attach_masks(m, {p: torch.ones_like(P.weight(m, p)) for p in paths})
    w = {p: P.weight(m, p).detach().clone() for p in paths}
    pruner = P.GradualPruner(m, "narang", 0.0, 0, 4, 2, paths)  # end 9, ramp 4
    pruner(6)
    for p in paths:
        q = torch.quantile(w[p].abs().flatten(), 0.9).item()
        theta = 2 * q * 2 / (2 * 4 + 3 * 5)
        e = (theta * 5 + 1.5 * theta * 3) / 2
        torch.testing.assert_close(P.masks_of(m)[p], (w[p].abs() >= e).double())


def _logits(m, x, h0_seed=0):
    return m(x, m.init_state(x.shape[0], generator=torch.Generator().manual_seed(h0_seed)))[0]


@pytest.mark.parametrize("key", ["elman", "gru", "lstm"])
def test_removing_a_unit_equals_a_torch_rnn_with_one_unit_fewer(key):
    m = _model(key)
    i, d = 2, D
    keep = [j for j in range(d) if j != i]
    P.attach_masks(m, P.group_masks(m, 0, [i]))
    mix = m.blocks[0].mixer
    g = {"elman": 1, "gru": 3, "lstm": 4}[key]
    rows = [k * d + j for k in range(g) for j in keep]
    cls = {"elman": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[key]
    small = cls(d, d - 1, batch_first=True).double()
    with torch.no_grad():
        small.weight_ih_l0.copy_(mix.weight_ih.detach()[rows])
        small.weight_hh_l0.copy_(mix.weight_hh.detach()[rows][:, keep])
        small.bias_ih_l0.copy_(mix.bias_ih.detach()[rows])
        small.bias_hh_l0.copy_(mix.bias_hh.detach()[rows])
    x = torch.randn(3, 9, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    h, _ = small(m.encoder(x))  # (b, t, d - 1)
    for k, head in enumerate(m.heads):
        expect = F.linear(h, head.weight.detach()[:, keep], head.bias.detach())
        torch.testing.assert_close(_logits(m, x)[k], expect, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("key", ["leaky_rnn", "leaky_rnn_no_U"])
def test_removing_a_unit_equals_the_leaky_equation_with_one_unit_fewer(key):
    m = _model(key)
    i, d = 5, D
    keep = [j for j in range(d) if j != i]
    group = P.group(m, 0, i)
    assert P.Slice("blocks.0.mixer.tau", 0, (i,), mask=False) in group
    assert (P.Slice("encoder.weight", 0, (i,)) in group) == (key == "leaky_rnn_no_U")
    P.attach_masks(m, P.group_masks(m, 0, [i]))
    mix = m.blocks[0].mixer
    W = (mix.W.detach() * (1 - torch.eye(d, dtype=torch.float64)))[keep][:, keep]
    a = 1 / mix.tau.detach().clamp(min=1)[keep]
    b = mix.b.detach()[keep]
    x = torch.randn(2, 9, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    if mix.U is None:  # the encoder is U: its row i goes with the unit
        u = F.linear(x, m.encoder.weight.detach()[keep], m.encoder.bias.detach()[keep]) + b
        h = 0.1 * torch.rand(2, d, generator=torch.Generator().manual_seed(0),
                             dtype=torch.float64)[:, keep]  # the same draws of h0, unit i out
    else:
        u = F.linear(m.encoder(x).detach(), mix.U.detach()[keep], b)
        h = torch.zeros(2, d - 1, dtype=torch.float64)
    hs = []
    for t in range(x.shape[1]):  # h_t = phi((1 - 1/tau) h + (1/tau)(W h + U x_t + b))
        h = F.leaky_relu((1 - a) * h + a * (h @ W.T + u[:, t]), 0.01)
        hs.append(h)
    hs = torch.stack(hs, 1)
    for k, head in enumerate(m.heads):
        expect = F.linear(hs, head.weight.detach()[:, keep], head.bias.detach())
        torch.testing.assert_close(_logits(m, x)[k], expect, rtol=1e-10, atol=1e-12)


def _copy_head(big, small, name, j):
    """Copy head j of `big` into the one-head `small`, slice by slice of the layouts."""
    dk, dv, h = big.d_k, big.d_v, big.n_heads
    w = 2 * dk + dv
    qkv = slice(j * w, (j + 1) * w)
    with torch.no_grad():
        small.qkv.weight.copy_(big.qkv.weight[qkv])
        small.out.weight.copy_(big.out.weight[:, j * dv:(j + 1) * dv])
        if name == "gla":
            small.gate_down.weight.copy_(big.gate_down.weight)
            small.gate_up.weight.copy_(big.gate_up.weight[j * dk:(j + 1) * dk])
            small.gate_up.bias.copy_(big.gate_up.bias[j * dk:(j + 1) * dk])
            small.out_gate.weight.copy_(big.out_gate.weight[j * dv:(j + 1) * dv])
            small.out_gate.bias.copy_(big.out_gate.bias[j * dv:(j + 1) * dv])
            small.norm_weight.copy_(big.norm_weight)
        if name in ("deltanet", "gated_deltanet"):
            small.conv.weight.copy_(big.conv.weight[qkv])
            small.out_gate.weight.copy_(big.out_gate.weight[j * dv:(j + 1) * dv])
            small.norm_weight.copy_(big.norm_weight)
            gates = [j, h + j] if name == "gated_deltanet" else [j]
            small.gates.weight.copy_(big.gates.weight[gates])
            if name == "gated_deltanet":
                small.A_log.copy_(big.A_log[[j]])
                small.dt_bias.copy_(big.dt_bias[[j]])


@pytest.mark.parametrize("key", ["linear_attn", "gla", "deltanet", "gated_deltanet"])
def test_removing_a_head_equals_the_mixer_with_one_head_fewer(key):
    name, _ = MIXERS[key]
    m = _model(key, d_input=D)
    big = m.blocks[0].mixer
    ek = big.d_k / D  # per-head widths stay: expand * d_model / n_heads with one head fewer
    ev = big.d_v / D
    small = build_mixer(name, D, n_heads=1, expand_k=ek, expand_v=ev).double()
    assert (small.d_k, small.d_v) == (big.d_k, big.d_v)
    _copy_head(big, small, name, 1)
    P.attach_masks(m, P.group_masks(m, 0, [0]))  # head 0 out: the model keeps head 1
    x = torch.randn(2, 13, D, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    for mode in big.modes:
        got, _ = m.blocks[0].mixer(x, mode=mode)
        expect, _ = small(x, mode=mode)
        torch.testing.assert_close(got, expect, rtol=1e-9, atol=1e-11, msg=f"mode {mode}")


def test_structured_pruning_errors():
    m = SequenceModel(2, D, mixer="leaky_rnn", block="residual", heads=[2])
    with pytest.raises(SeqmemError, match="structured pruning of units needs plain blocks"):
        P.group(m, 0, 0)
    with pytest.raises(SeqmemError, match="block 0 has 8 units; got unit 8"):
        P.group(_model("gru"), 0, 8)
    with pytest.raises(SeqmemError, match="no dependency groups for mixer 'mamba'"):
        P.group(SequenceModel(2, D, mixer="mamba", heads=[2]), 0, 0)
    with pytest.raises(SeqmemError, match=r"no parameter 'blocks\.0\.mixer\.Q' in the model"):
        P.attach_masks(_model("gru"), {"blocks.0.mixer.Q": torch.ones(1)})
    # removing a unit of a lower block takes the columns of the block above
    two = _model("elman", n_layers=2)
    assert P.Slice("blocks.1.mixer.weight_ih", 1, (3,)) in P.group(two, 0, 3)


SMALL = ["model.d_model=8", "train.batch_size=16", "train.steps_per_epoch=2",
         "train.eval_batches=1", "curriculum.threshold=0.01", "curriculum.n_max=3",
         "model.mixer.input_proj=false"]
FAST = ["--sparsities", "0.25,0.5"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("prune")
    cfg = load_config(None, SMALL)
    store = RunStore(root)
    run = store.create_run(cfg.model_dump(mode="json"))
    train_run(cfg, run)
    return root, run, cfg


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_seqmem_prune_end_to_end(trained, capsys):
    root, run, cfg = trained
    code, out, err = run_cli(capsys, "prune", run.id, "--root", root, *FAST,
                             "--finetune-epochs", 1, "--retrain", "--retrain-epochs", 1,
                             "--save", "--schedule", "zhu_gupta")
    assert code == 0, err
    assert "pruning of" in out and "written:" in out
    p = json.loads((run.dir / "analysis.json").read_text())["pruning"]
    points = {(q["method"], q["target"]): q for q in p["points"]}
    assert set(points) == {(m, s) for m in ("magnitude", "structured") for s in (0.25, 0.5)}
    dense = load_stage(cfg, run, p["N"])
    tau = dense.timescales()
    for (method, s), q in points.items():
        assert {"acc_oneshot", "acc_finetuned", "acc_retrained", "checkpoint"} <= set(q)
        ck = run.load_checkpoint(q["checkpoint"])
        m = P.load_masked(load_stage(cfg, run, p["N"]), ck)
        for path, mask in P.masks_of(m).items():  # zero after fine-tuning, in the checkpoint
            assert (ck["model"][path][mask == 0] == 0).all()
        if method == "magnitude":  # each prunable tensor exactly at s: W is 8 x 8
            assert q["sparsity"] == pytest.approx(round(s * 64) / 64)
        else:
            k = round(s * 8)
            assert q["n_removed"] == k and len(q["removed"]) == k
            assert q["removed"] == p["order"]["units"][:k]
            assert q["tau_removed_mean"] == pytest.approx(tau[q["removed"]].double().mean().item())
            assert q["sparsity"] == pytest.approx(1 - ((8 - k) / 8) ** 2)  # rows and columns
    assert p["order"]["tau"] == pytest.approx([tau[i].item() for i in p["order"]["units"]])
    # the report's figure: accuracy against sparsity, tau of the removed units
    fig, header, rows = pruning_figure(load_entries(RunStore(root), [run.id]), CANVAS)
    assert figure_checks(fig) == {"legend_overlaps": 0, "empty_panels": 0}
    assert len(fig.axes) == 2 and len(rows) == 4 and header[0] == "run"
    assert [r[3] for r in rows] == [f"{q['acc_oneshot']:.3f}" for q in p["points"]]


def test_seqmem_prune_heads_of_linear_attention(tmp_path, capsys, monkeypatch):
    cfg = load_config(None, [*SMALL[:-1], "model.mixer.kind=linear_attn"])
    run = RunStore(tmp_path).create_run(cfg.model_dump(mode="json"))
    train_run(cfg, run)
    # the held-out evaluation of the training loop, as for a task without a streaming form
    monkeypatch.setattr("seqmem.analysis.pruning.STREAM_TASKS", ())
    code, _out, err = run_cli(capsys, "prune", run.id, "--root", tmp_path, "--sparsities",
                              "0.5", "--method", "structured,magnitude")
    assert code == 0, err
    p = json.loads((run.dir / "analysis.json").read_text())["pruning"]
    assert p["measure"] == "eval" and p["order"]["structure"] == "heads"
    (q,) = [q for q in p["points"] if q["method"] == "structured"]
    assert q["n_total"] == 2 and q["n_removed"] == 1 and "tau_removed_mean" not in q
    # one head of two: half of qkv's rows and of out's columns
    assert q["sparsity"] == pytest.approx(0.5)


@pytest.mark.parametrize("args, message", [
    (["--sparsities", "0.5,x"], "--sparsities must be a comma-separated list"),
    (["--sparsities", "1.5"], r"prune_sparsities must be numbers in \(0, 1\)"),
    (["--schedule", "slow"], "unknown pruning schedule 'slow'"),
    (["--schedule", "narang"], "prunes while fine-tuning: give prune_finetune_epochs >= 1"),
    (["--method", "random"], "unknown pruning method 'random'"),
    (["--finetune-epochs", "-1"], "--finetune-epochs must be an integer >= 0"),
    (["--retrain-epochs", "0"], "--retrain-epochs must be an integer >= 1"),
])
def test_prune_errors_are_one_line(trained, capsys, args, message):
    root, run, _ = trained
    code, _out, err = run_cli(capsys, "prune", run.id, "--root", root, *args)
    assert code != 0 and err.count("\n") == 1 and err.startswith("error: "), err
    assert re.search(message, err), err


def test_prune_unknown_run_is_one_line(trained, capsys):
    root, _, _ = trained
    code, _out, err = run_cli(capsys, "prune", "nosuchrun", "--root", root)
    assert code != 0 and err.count("\n") == 1 and err.startswith("error: "), err
