"""Continual learning: metrics on hand-made accuracy matrices, EWC / SI with no penalty equal
fine-tuning step for step, the reservoir buffer keeps a uniform sample, the hypernetwork
output regulariser, protocols, resuming, and the command."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from seqmem.build import build_continual as build
from seqmem.cli.main import main
from seqmem.continual import (
    ContinualConfig,
    ReservoirBuffer,
    average_accuracy,
    backward_transfer,
    build_method,
    build_protocol,
    fit_continual,
    forgetting,
    forward_transfer,
    learning_curve_area,
)
from seqmem.continual.hnet import output_regularizer
from seqmem.errors import SeqmemError
from seqmem.models import SequenceModel
from seqmem.store import RunStore
from seqmem.tasks import build as build_task

R3 = [[0.9, 0.1, 0.2],
      [0.5, 0.8, 0.3],
      [0.4, 0.6, 0.7]]
SMALL = dict(steps=4, batch_size=16, curve_every=2, eval_batches=1, eval_batch_size=32,
             d_model=8, protocol_options={"n_max": 4})


def train_continual(cfg: ContinualConfig, run=None, *, emit=None, resume: bool = False) -> dict:
    """Build the config's protocol and method and run the continual loop."""
    protocol, method = build(cfg)
    return fit_continual(cfg, run, protocol, method, emit=emit, resume=resume)


# ---- metrics ---------------------------------------------------------------------------------
def test_metrics_on_a_hand_made_matrix():
    assert average_accuracy(R3) == pytest.approx((0.4 + 0.6 + 0.7) / 3)
    assert backward_transfer(R3) == pytest.approx(((0.4 - 0.9) + (0.6 - 0.8)) / 2)
    assert forward_transfer(R3, [0.5, 0.5, 0.5]) == pytest.approx(((0.1 - 0.5) + (0.3 - 0.5)) / 2)
    assert forgetting(R3) == pytest.approx(((0.9 - 0.4) + (0.8 - 0.6)) / 2)
    # Z_0 = (0 + 0.5) / 2, Z_1 = (1 + 0.5) / 2, Z_2 = (1 + 1) / 2
    assert learning_curve_area([[0, 1, 1], [0.5, 0.5, 1]]) == pytest.approx((0.25 + 0.75 + 1) / 3)
    assert learning_curve_area([[0, 1, 1], [0.5, 0.5, 1]], beta=0) == pytest.approx(0.25)


def test_metrics_of_perfect_memory_and_of_one_experience():
    R = [[1.0, 0.5], [1.0, 1.0]]
    assert backward_transfer(R) == 0 and forgetting(R) == 0 and average_accuracy(R) == 1
    assert math.isnan(backward_transfer([[0.7]])) and average_accuracy([[0.7]]) == 0.7
    with pytest.raises(SeqmemError, match="square"):
        average_accuracy([[1, 2, 3]])
    with pytest.raises(SeqmemError, match="one accuracy per experience"):
        forward_transfer(R, [0.5])


# ---- methods equal fine-tuning without their penalty ------------------------------------------
def _losses(cfg: ContinualConfig) -> tuple[list[float], dict]:
    losses = []
    summary = train_continual(cfg, emit=lambda ev: losses.append(ev["loss"])
                              if ev["event"] == "step" else None)
    return losses, summary


@pytest.mark.parametrize("method,options", [("ewc", {"ewc_lambda": 0.0}), ("si", {"si_c": 0.0})])
def test_no_penalty_equals_finetuning_step_for_step(method, options):
    ref_losses, ref = _losses(ContinualConfig(method="finetune", **SMALL))
    losses, out = _losses(ContinualConfig(method=method, method_options=options, **SMALL))
    assert losses == ref_losses  # exactly: same batches, same updates
    assert out["R"] == ref["R"]


def test_ewc_penalty_is_the_fisher_weighted_distance():
    cfg = ContinualConfig(method="ewc", method_options={"ewc_lambda": 3.0, "fisher_batches": 1,
                                                        "fisher_batch_size": 4}, **SMALL)
    _, method = build(cfg)
    assert method.penalty(0) == 0.0
    method.after_experience(0, torch.Generator())
    # the Fisher by an independent route: per-example gradients of the log-likelihood
    gen = torch.Generator().manual_seed(10007)
    batch = method.protocol.experiences[0].train.sample(4, generator=gen)
    names = [n for n, p in method.model.named_parameters()]
    ref = {n: torch.zeros_like(p) for n, p in method.model.named_parameters()}
    for b in range(4):
        method.model.zero_grad()
        z = method.logits(0, batch.inputs[b:b + 1])[batch.mask[b:b + 1]]
        torch.log_softmax(z, -1)[0, batch.targets[b, -1, 0]].backward()
        for n, p in method.model.named_parameters():
            ref[n] += (p.grad if p.grad is not None else 0) ** 2 / 4
    for n in names:
        torch.testing.assert_close(method.F[n], ref[n])
    with torch.no_grad():
        for p in method.model.parameters():
            p.add_(0.1)
    expected = 1.5 * sum((method.F[n] * 0.01).sum() for n in names)
    assert method.penalty(1).item() == pytest.approx(float(expected), rel=1e-5)


def test_si_accumulates_minus_gradient_times_step():
    cfg = ContinualConfig(method="si", method_options={"si_c": 0.5, "si_xi": 0.1}, **SMALL)
    _, si = build(cfg)
    si.before_experience(0, torch.Generator())
    p = next(si.model.parameters())
    name = next(n for n, _ in si.model.named_parameters())
    gen = torch.Generator().manual_seed(0)
    g, step = torch.randn(p.shape, generator=gen), torch.randn(p.shape, generator=gen) * 0.01
    p.grad = g.clone()
    with torch.no_grad():
        p.add_(step)
    si.after_step(0, [], torch.Generator())
    torch.testing.assert_close(si.omega[name], -g * step)
    si.after_experience(0, torch.Generator())
    torch.testing.assert_close(si.Omega[name], -g * step / (step ** 2 + 0.1))


# ---- replay ------------------------------------------------------------------------------------
def test_reservoir_keeps_a_uniform_sample():
    n_items, cap, reps = 60, 12, 600
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(n_items)
    for _ in range(reps):
        buf = ReservoirBuffer(cap)
        for start in range(0, n_items, 7):  # offered in uneven batches
            buf.add(list(range(start, min(start + 7, n_items))), gen)
        assert len(buf) == cap and buf.n_seen == n_items and len(set(buf.items)) == cap
        counts[buf.items] += 1
    # every item kept with probability cap / n_items: a chi-square test of the counts
    expected = reps * cap / n_items
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert stats.chi2.sf(chi2, n_items - 1) > 1e-3
    # the late items are not favoured: first and second halves kept equally often
    assert abs(counts[: n_items // 2].sum() - counts[n_items // 2:].sum()) < 0.1 * counts.sum()


def test_replay_mixes_buffered_examples_of_earlier_experiences():
    cfg = ContinualConfig(method="replay", method_options={"replay_size": 20, "replay_batch": 8},
                          **SMALL)
    _, method = build(cfg)
    gen = torch.Generator().manual_seed(0)
    method.after_step(0, method.train_batches(0, 16, gen), gen)
    batches = method.train_batches(1, 16, gen)
    assert [j for j, _ in batches] == [1, 0]
    assert batches[1][1].mask.shape[0] == 8 and batches[1][1].mask.sum() == 8


# ---- hypernetworks -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["hnet", "rnn_hnet"])
def test_hnet_regulariser_is_zero_first_and_pulls_back(name):
    cfg = ContinualConfig(method=name, method_options={"hnet_beta": 0.5, "hnet_chunk": 32},
                          **SMALL)
    _, m = build(cfg)
    gen = torch.Generator().manual_seed(0)
    m.before_experience(0, gen)
    assert m.penalty(0) == 0.0
    m.before_experience(1, torch.Generator())  # stores f_h(e_0)
    assert abs(m.penalty(1).item()) < 1e-12  # the stored outputs are the current ones
    with torch.no_grad():
        for p in m.hnet.shared_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    W, W_star = m.hnet(0).detach(), m.stored[0]
    pen = m.penalty(1)
    assert pen.item() == pytest.approx(float(0.5 * ((W - W_star) ** 2).sum()), rel=1e-6)
    # d pen / d output bias = sum over chunks of 2 beta (W - W*) at that chunk position
    (g,) = torch.autograd.grad(pen, m.hnet.out.bias)
    pad = torch.zeros(m.hnet.n_chunks * m.hnet.chunk)
    pad[: W.numel()] = 2 * 0.5 * (W - W_star)
    torch.testing.assert_close(g, pad.view(m.hnet.n_chunks, -1).sum(0))
    # a gradient step on the regulariser alone moves the generated weights back
    opt = torch.optim.SGD(m.hnet.shared_parameters(), lr=0.05)
    before = ((m.hnet(0) - W_star) ** 2).sum().item()
    opt.zero_grad()
    m.penalty(1).backward()
    opt.step()
    assert ((m.hnet(0) - W_star) ** 2).sum().item() < before


def test_output_regularizer_averages_earlier_tasks():
    cfg = ContinualConfig(method="hnet", **SMALL)
    _, m = build(cfg)
    stored = [m.hnet(0).detach() + 1, m.hnet(1).detach() - 2]
    n = stored[0].numel()
    assert output_regularizer(m.hnet, stored, 0.1).item() == pytest.approx(0.1 / 2 * (n + 4 * n))


@pytest.mark.parametrize("mixer", ["leaky_rnn", "gated_deltanet"])
@pytest.mark.parametrize("name", ["hnet", "rnn_hnet"])
def test_hnet_generates_any_mixer(mixer, name):
    cfg = ContinualConfig(method=name, mixer=mixer, **{**SMALL, "steps": 2})
    out = train_continual(cfg)
    assert len(out["R"]) == 3 and all(0 <= a <= 1 for row in out["R"] for a in row)
    # the target's own weights are untouched: only the generated ones change
    _, m = build(cfg)
    assert all(not p.requires_grad for p in m.model.parameters())


# ---- protocols -------------------------------------------------------------------------------
def test_split_relabels_pairs_of_classes():
    proto = build_protocol("split", task="mnist1d", n_experiences=3)
    base = build_task("mnist1d")
    x, y = base._data()
    for i, e in enumerate(proto.experiences):
        batch = e.train.sample(64, generator=torch.Generator().manual_seed(i))
        labels = batch.targets[:, -1, 0]
        assert set(labels.tolist()) <= {0, 1} and e.head == i
        # each example is a training example of class 2i + label
        for b in range(8):
            hits = (x == batch.inputs[b]).all(-1).all(-1)
            assert int(y[hits][0]) == 2 * i + int(labels[b])
    assert build_protocol("split", "domain", n_experiences=2).heads == [2]


def test_permuted_reorders_time_steps_only():
    proto = build_protocol("permuted", n_experiences=2, seed=3)
    a = proto.experiences[1].train.sample(4, generator=torch.Generator().manual_seed(0))
    b = proto.experiences[1].train.base.sample(4, generator=torch.Generator().manual_seed(0))
    perm = proto.experiences[1].train.perm
    assert sorted(perm.tolist()) == list(range(40)) and perm.tolist() != list(range(40))
    torch.testing.assert_close(a.inputs, b.inputs[:, perm])
    assert torch.equal(a.targets, b.targets) and proto.heads == [10]


def test_bad_protocol_and_method_are_one_line_errors():
    with pytest.raises(SeqmemError, match="unknown protocol 'nope'; accepted: n_curriculum"):
        build_protocol("nope")
    model = SequenceModel(1, 4, heads=[2])
    proto = build_protocol("n_curriculum", n_max=3)
    with pytest.raises(SeqmemError, match="unknown method 'nope'; accepted: finetune"):
        build_method("nope", model, proto)
    with pytest.raises(SeqmemError, match=r"unknown option\(s\) lam for method 'ewc'; accepted: "
                       r"ewc_lambda, ewc_gamma, fisher_batches, fisher_batch_size$"):
        build_method("ewc", model, proto, lam=1)


# ---- store, resume, command ------------------------------------------------------------------
@pytest.mark.parametrize("method", ["finetune", "replay"])
def test_interrupted_run_resumes_to_the_same_result(tmp_path, method):
    cfg = ContinualConfig(method=method, **SMALL)
    ref = train_continual(cfg)
    store = RunStore(tmp_path)
    run = store.create_run(cfg.model_dump(mode="json"), kind="continual")

    def stop_in_third(ev):
        if ev["event"] == "step" and ev["experience"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_continual(cfg, run, emit=stop_in_third)
    assert run.checkpoints() == ["last"] and len(run.load_checkpoint()["R"]) == 2
    out = train_continual(cfg, run, resume=True)
    assert out["R"] == ref["R"] and out["avg_acc"] == ref["avg_acc"]


def test_continual_command_records_runs(tmp_path, capsys):
    rc = main(["continual", "--method", "finetune,ewc", "--root", str(tmp_path), "--no-progress",
               "steps=2", "eval_batches=1", "eval_batch_size=16", "batch_size=8", "d_model=4",
               "protocol_options.n_max=3"])
    assert rc == 0
    rows = RunStore(tmp_path).list_runs(kind="continual")
    assert len(rows) == 2 and all(r["status"] == "done" for r in rows)
    assert {r["summary"]["method"] for r in rows} == {"finetune", "ewc"}
    out = capsys.readouterr().out
    assert "continual learning: n_curriculum" in out and "ewc" in out
    assert main(["continual", "--method", "nope", "--root", str(tmp_path)]) == 2
    assert "error: method: Input should be" in capsys.readouterr().err
