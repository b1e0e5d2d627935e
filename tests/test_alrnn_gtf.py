"""The AL-RNN and its symbolic code, latent generalised teacher forcing with the adaptive
alpha, and MoM's load-balancing loss, each against an independent computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from seqmem import mixers, tasks
from seqmem.analysis.symbolic import simple_cycles, symbolic_code, transition_counts
from seqmem.build import build_model
from seqmem.config import load_config
from seqmem.errors import ConfigError, SeqmemError
from seqmem.models import SequenceModel
from seqmem.tasks.base import Batch
from seqmem.train import gtf, loop


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- the AL-RNN ------------------------------------------------------------------------------
def test_alrnn_step_follows_the_papers_equation_unit_by_unit():
    torch.manual_seed(0)
    M, P = 5, 2
    m = mixers.build("al_rnn", M, n_relu=P).double()
    with torch.no_grad():
        m.h.uniform_(-0.5, 0.5)
    z = torch.randn(3, M, dtype=torch.float64)
    s = torch.randn(3, M, dtype=torch.float64)
    y, new = m.step(s, z)
    A, W, h, C = (t.detach().numpy() for t in (m.A, m.W, m.h, m.C.weight))
    for b in range(3):
        zb = z[b].numpy()
        phi = [zb[i] if i < M - P else max(0.0, zb[i]) for i in range(M)]
        for i in range(M):
            want = (A[i] * zb[i] + sum(W[i, j] * phi[j] for j in range(M)) + h[i]
                    + sum(C[i, j] * s[b, j].item() for j in range(M)))
            assert abs(new[b, i].item() - want) < 1e-12
    assert torch.equal(y, new)


def test_alrnn_subregion_is_the_sign_pattern_of_the_relu_units():
    M, P = 7, 3
    m = mixers.build("al_rnn", M, n_relu=P)
    z = torch.randn(50, M, generator=gen(1))
    z[0, M - P:] = 0.0  # zero counts as not positive (the ReLU is off)
    codes = m.subregion(z)
    for b in range(50):
        want = sum(2 ** i for i in range(P) if z[b, M - P + i].item() > 0)
        assert codes[b].item() == want
    assert codes[0].item() == 0
    # the linear units do not count
    z2 = z.clone()
    z2[:, : M - P] = -z2[:, : M - P]
    assert torch.equal(m.subregion(z2), codes)


def test_plrnn_subregion_is_the_sign_pattern_of_its_hidden_units():
    m = mixers.build("plrnn", 4, d_hidden=5)
    z = torch.randn(20, 4, generator=gen(2))
    pre = z @ m.W2.detach().T + m.h2.detach()
    for b in range(20):
        want = sum(2 ** i for i in range(5) if pre[b, i].item() > 0)
        assert m.subregion(z)[b].item() == want


def test_alrnn_refuses_bad_options():
    with pytest.raises(SeqmemError, match="n_relu"):
        mixers.build("al_rnn", 4, n_relu=5)
    with pytest.raises(SeqmemError, match="n_relu"):
        mixers.build("al_rnn", 4, n_relu=0)
    with pytest.raises(SeqmemError, match="a_init"):
        mixers.build("al_rnn", 4, a_init=(0.5, 1.5))


def test_alrnn_model_reads_out_its_first_units():
    cfg = load_config(None, ["task.kind=dynamics", "model.mixer.kind=al_rnn",
                             "model.d_model=6", "model.mixer.n_relu=2"])
    model = build_model(cfg)
    r = model.regressor
    want = torch.zeros(3, 6)
    want[:, :3] = torch.eye(3)
    assert torch.equal(r.weight, want) and not r.bias.any()
    assert not r.weight.requires_grad and not r.bias.requires_grad
    z = torch.randn(2, 6)
    assert torch.equal(model.predict(z), z[:, :3])


# ---- symbolic code ---------------------------------------------------------------------------
def test_simple_cycles_of_a_hand_built_graph():
    # 0 -> 1 -> 2 -> 0, 1 -> 0, 2 -> 2 (self-loop), 2 -> 3 -> 4 -> 2, 4 -> 5 (no way back)
    edges = [(0, 1), (1, 2), (2, 0), (1, 0), (2, 2), (2, 3), (3, 4), (4, 2), (4, 5)]
    cycles, cut = simple_cycles(edges)
    assert not cut
    assert cycles == [[0, 1], [0, 1, 2], [2], [2, 3, 4]]
    # bounded length: only the cycles of at most 2 nodes
    assert simple_cycles(edges, max_len=2)[0] == [[0, 1], [2]]
    cut_cycles, cut = simple_cycles(edges, max_cycles=2)
    assert cut and len(cut_cycles) == 2
    assert simple_cycles([(0, 1), (1, 2)]) == ([], False)  # a DAG has none


def test_simple_cycles_of_a_complete_graph_count():
    # complete digraph on n nodes with self-loops: sum_k C(n, k) (k - 1)! simple cycles
    n = 5
    edges = [(a, b) for a in range(n) for b in range(n)]
    cycles, _ = simple_cycles(edges)
    want = sum(math.comb(n, k) * math.factorial(k - 1) for k in range(1, n + 1))
    assert len(cycles) == want
    assert len({tuple(c) for c in cycles}) == want  # each once
    for c in cycles:
        assert c[0] == min(c) and len(set(c)) == len(c)


def test_symbolic_code_counts_transitions_and_visits():
    s = [3, 3, 1, 0, 3, 1, 0, 3, 3]
    counts = transition_counts(s)
    assert counts == {(3, 3): 2, (3, 1): 2, (1, 0): 2, (0, 3): 2}
    out = symbolic_code(s, n_bits=2, max_len=8, max_cycles=100)
    assert out["n_visited"] == 3 and out["n_possible"] == 4
    assert out["visited"][0] == 3 and abs(out["occupancy"][0] - 5 / 9) < 1e-12
    assert out["cycles"] == [[0, 3, 1], [3]]
    assert sorted(map(tuple, out["transitions"])) == [(0, 3, 2), (1, 0, 2), (3, 1, 2),
                                                       (3, 3, 2)]


# ---- latent generalised teacher forcing -------------------------------------------------------
def alrnn_model(M: int = 6, P: int = 2, seed: int = 0) -> SequenceModel:
    torch.manual_seed(seed)
    m = SequenceModel(3, M, mixer="al_rnn", mixer_options={"n_relu": P}, heads=[],
                      d_output=3).double()
    gtf.set_identity_observation(m)
    return m


def paper_loop(m: SequenceModel, x: np.ndarray, alpha: float) -> np.ndarray:
    """Latent GTF written out with numpy: z_{k+1} = A z~_k + W Phi*(z~_k) + h + C (E s_k + e),
    s_0 = x_0 and s_k = z~_k[:N] after; x^_{k+1} = z_{k+1}[:N];
    z~_{k+1}[:N] = alpha x_{k+1} + (1 - alpha) z_{k+1}[:N]."""
    mix = m.blocks[0].mixer
    A, W, h = (t.detach().numpy() for t in (mix.A, mix.W, mix.h))
    C = mix.C.weight.detach().numpy()
    E, e = m.encoder.weight.detach().numpy(), m.encoder.bias.detach().numpy()
    P, M, N = mix.n_relu, A.shape[0], 3
    b, t, _ = x.shape
    out = np.zeros((b, t, N))
    for i in range(b):
        z = np.zeros(M)
        s = x[i, 0]
        for k in range(t):
            phi = np.concatenate([z[: M - P], np.maximum(z[M - P:], 0)])
            z = A * z + W @ phi + h + C @ (E @ s + e)
            out[i, k] = z[:N]
            if k + 1 < t:
                z = z.copy()
                z[:N] = alpha * x[i, k + 1] + (1 - alpha) * z[:N]
                s = z[:N]
    return out


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_latent_gtf_equals_a_direct_loop_of_the_papers_equations(alpha):
    m = alrnn_model()
    x = tasks.build("dynamics", seq_len=12).sample(2, generator=gen(3)).inputs.double()
    pred = gtf.latent_gtf_predictions(m, x, alpha, m.init_state(2))
    want = paper_loop(m, x.numpy(), alpha)
    np.testing.assert_allclose(pred.detach().numpy(), want, rtol=0, atol=1e-10)
    ((pred - x) ** 2).mean().backward()  # gradients flow through the forced states
    assert m.blocks[0].mixer.W.grad is not None and m.blocks[0].mixer.W.grad.abs().sum() > 0


def test_latent_gtf_with_plrnn_and_the_identity_check():
    torch.manual_seed(1)
    m = SequenceModel(3, 5, mixer="plrnn", heads=[], d_output=3).double()
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    with pytest.raises(SeqmemError, match="identity observation"):
        gtf.latent_gtf_predictions(m, x, 0.5, m.init_state(2))
    gtf.set_identity_observation(m)
    pred = gtf.latent_gtf_predictions(m, x, 1.0, m.init_state(2))
    # alpha = 1: each step starts from (x_k, z_k[N:]) with input x_k
    state = m.init_state(2)
    h, state = m.step(x[:, 0], state)
    for k in range(1, 6):
        z = torch.cat([x[:, k], state[0][:, 3:]], dim=-1)
        h, state = m.step(x[:, k], [z])
        torch.testing.assert_close(pred[:, k], h[:, :3], rtol=0, atol=1e-12)
    g = SequenceModel(3, 5, mixer="gru", heads=[], d_output=3).double()
    with pytest.raises(SeqmemError, match=r"al_rnn.*plrnn|plrnn.*al_rnn"):
        gtf.latent_gtf_predictions(g, x, 0.5, g.init_state(2))


def linear_alrnn(a: list[float], C: np.ndarray, E: np.ndarray) -> SequenceModel:
    """An AL-RNN model whose step map is linear: W = 0, so G(z) = diag(a) z + C E z[:N] + c."""
    M = len(a)
    m = alrnn_model(M=M, P=1)
    mix = m.blocks[0].mixer
    with torch.no_grad():
        mix.A.copy_(torch.tensor(a, dtype=torch.float64))
        mix.W.zero_()
        mix.C.weight.copy_(torch.from_numpy(C))
        m.encoder.weight.copy_(torch.from_numpy(E))
    return m


@pytest.mark.parametrize(("a", "coupled"), [([2.0, 0.5, 0.5, 0.3], False),
                                            ([0.5, 0.4, 0.3, 0.2], False),
                                            ([0.9, 0.8, 0.7, 0.6], True)])
def test_adaptive_alpha_on_a_linear_model_with_known_jacobian(a, coupled):
    rng = np.random.default_rng(0)
    M = len(a)
    C = rng.normal(size=(M, M)) * 0.5 if coupled else np.zeros((M, M))
    E = rng.normal(size=(M, 3)) * 0.5 if coupled else np.zeros((M, 3))
    m = linear_alrnn(a, C, E)
    # the Jacobian is the same at every state: diag(a) + C E [I_N 0]
    P = np.zeros((3, M))
    P[:, :3] = np.eye(3)
    J = np.diag(a) + C @ E @ P
    norm = np.linalg.norm(J, 2)
    x = tasks.build("dynamics", seq_len=10).sample(3, generator=gen(4)).inputs.double()
    got = gtf.adaptive_alpha(m, x, m.init_state(3))
    assert abs(got - max(0.0, 1 - 1 / norm)) < 1e-10
    if not coupled:
        assert abs(got - max(0.0, 1 - 1 / max(a))) < 1e-10  # 0.5 for a_max = 2, else 0


def test_adaptive_alpha_is_the_papers_formula_on_a_nonlinear_model():
    m = alrnn_model(M=5, P=3, seed=3)
    with torch.no_grad():
        m.blocks[0].mixer.W.mul_(6.0)  # Jacobians that differ across subregions
    x = tasks.build("dynamics", seq_len=8).sample(2, generator=gen(5)).inputs.double()
    got = gtf.adaptive_alpha(m, x, m.init_state(2))
    # by hand: the states forced with alpha = 1, each Jacobian by autograd, its largest
    # singular value, the geometric mean per sequence, 1 - 1/G, the largest of the batch
    want = []
    for i in range(2):
        state = m.init_state(1)
        s = x[i:i + 1, 0]
        logs = []
        for k in range(7):
            _, state = m.step(s, state)
            z = torch.cat([x[i:i + 1, k + 1], state[0][:, 3:]], dim=-1)

            def G(v):
                return m.step(v[None, :3], [v[None]])[1][0][0]

            Jk = torch.autograd.functional.jacobian(G, z[0])
            logs.append(math.log(np.linalg.svd(Jk.numpy(), compute_uv=False)[0]))
            state, s = [z], z[:, :3]
        want.append(max(0.0, 1 - 1 / math.exp(sum(logs) / len(logs))))
    assert got > 0 and abs(got - max(want)) < 1e-10


def test_training_with_latent_adaptive_gtf(tmp_path):
    from seqmem.engine import train_run
    from seqmem.store import RunStore
    cfg = load_config(None, ["task.kind=dynamics", "task.seq_len=12", "model.d_model=6",
                             "model.mixer.kind=al_rnn", "model.mixer.n_relu=2",
                             "train.batch_size=4", "train.steps_per_epoch=2",
                             "train.eval_batches=1", "train.max_epochs=1",
                             "eval.free_run_steps=100", "eval.free_run_trajectories=1",
                             "train.gtf=latent", "train.gtf_alpha=adaptive"])
    run = RunStore(tmp_path).create_run(cfg.model_dump(mode="json"))
    s = train_run(cfg, run)
    assert math.isfinite(s["mse"]) and s["d_stsp"] >= 0


def test_config_checks_latent_gtf():
    base = ["task.kind=dynamics"]
    with pytest.raises(ConfigError, match="al_rnn") as e:
        load_config(None, [*base, "model.mixer.kind=gru", "train.gtf=latent",
                           "train.gtf_alpha=0.2"])
    assert "plrnn" in str(e.value) and "train.gtf" in str(e.value)
    with pytest.raises(ConfigError, match=r"train\.gtf=latent"):
        load_config(None, [*base, "model.mixer.kind=plrnn", "train.gtf_alpha=adaptive"])
    with pytest.raises(ConfigError, match="gtf_alpha"):
        load_config(None, [*base, "model.mixer.kind=plrnn", "train.gtf=latent"])
    with pytest.raises(ConfigError, match="n_layers"):
        load_config(None, [*base, "model.mixer.kind=plrnn", "model.n_layers=2",
                           "train.gtf=latent", "train.gtf_alpha=0.1"])
    with pytest.raises(ConfigError):
        load_config(None, [*base, "model.mixer.kind=plrnn", "train.gtf=output",
                           "train.gtf_alpha=0.1"])
    cfg = load_config(None, [*base, "model.mixer.kind=plrnn", "train.gtf=latent",
                             "train.gtf_alpha=adaptive"])
    assert cfg.train.gtf_alpha == "adaptive"
    model = build_model(cfg)  # latent forcing gives the plrnn the identity read-out
    gtf.check_latent(model)


# ---- MoM's load-balancing loss ---------------------------------------------------------------
def test_mom_aux_loss_is_the_switch_balancing_formula():
    torch.manual_seed(0)
    d, M, k = 8, 4, 2
    mom = mixers.build("mom", d, n_memories=M, top_k=k, aux_loss_weight=0.01).double()
    x = torch.randn(3, 7, d, dtype=torch.float64)
    got = mom.aux_loss(x)
    # by hand: router probabilities, each token's top-k, counts per memory
    logits = x.reshape(-1, d) @ mom.router.weight.detach().T  # (n, M)
    p = torch.softmax(logits, -1).numpy()
    n = p.shape[0]
    counts = np.zeros(M)
    for row in p:
        for m_ in np.argsort(-row)[:k]:
            counts[m_] += 1
    f = counts / (n * k)
    P = p.mean(0)
    want = 0.01 * M * float((f * P).sum())
    assert abs(got.item() - want) < 1e-12
    # uniform routing gives M * sum (1/M)(1/M) = 1 (times the weight)
    with torch.no_grad():
        mom.router.weight.zero_()
    assert abs(mom.aux_loss(x).item() - 0.01) < 1e-12
    assert mixers.build("mom", d).aux_loss(x.float()) is None  # weight 0: no loss


def test_mom_aux_loss_leaves_outputs_and_enters_the_training_loss():
    torch.manual_seed(0)
    kw = {"n_memories": 3, "top_k": 1}
    a = SequenceModel(3, 8, mixer="mom", mixer_options={**kw, "aux_loss_weight": 0.5},
                      heads=[], d_output=3).double()
    b = SequenceModel(3, 8, mixer="mom", mixer_options=kw, heads=[], d_output=3).double()
    b.load_state_dict(a.state_dict())
    task = tasks.build("dynamics", seq_len=6)
    batch = task.sample(2, generator=gen(0))
    batch = Batch(batch.inputs.double(), batch.targets.double(), batch.mask, batch.meta)
    x = batch.inputs
    ha, _ = a.features(x)
    hb, _ = b.features(x)
    assert torch.equal(ha, hb)  # the weight does not change the forward
    aux: list = []
    a.features(x, aux=aux)
    assert len(aux) == 1
    assert abs(aux[0].item() - a.blocks[0].mixer.aux_loss(a.encoder(x)).item()) < 1e-15
    a.train(), b.train()
    la, _ = loop.batch_loss(a, task, batch, [], gen(0))
    lb, _ = loop.batch_loss(b, task, batch, [], gen(0))
    assert abs(la.item() - (lb.item() + aux[0].item())) < 1e-12
    a.eval()  # evaluation losses carry no auxiliary term
    assert abs(loop.batch_loss(a, task, batch, [], gen(0))[0].item() - lb.item()) < 1e-12


def test_mom_aux_loss_weight_is_checked():
    with pytest.raises(SeqmemError, match="aux_loss_weight"):
        mixers.build("mom", 8, aux_loss_weight=-1.0)


# ---- seqmem analyze --what symbolic ---------------------------------------------------------
def test_symbolic_analysis_of_a_trained_al_rnn_run(tmp_path):
    from seqmem.analysis.analyze import analyze_run
    from seqmem.analysis.context import derived_seed
    from seqmem.analysis.dynamics import free_run
    from seqmem.analysis.registry import FIGURE_REGISTRY, Entry
    from seqmem.analysis.symbolic import latent_trajectory
    from seqmem.engine import train_run
    from seqmem.report.render import Canvas
    from seqmem.store import RunStore
    cfg = load_config(None, ["task.kind=dynamics", "task.seq_len=12", "model.d_model=6",
                             "model.mixer.kind=al_rnn", "model.mixer.n_relu=3",
                             "train.batch_size=4", "train.steps_per_epoch=2",
                             "train.eval_batches=1", "train.max_epochs=1",
                             "eval.free_run_steps=0"])
    run = RunStore(tmp_path).create_run(cfg.model_dump(mode="json"))
    train_run(cfg, run)
    out = analyze_run(cfg, run, what=["symbolic"], symbolic_steps=200)
    s = out["symbolic"]
    assert s["steps"] == 200 and s["n_possible"] == 8 and s["mixer"] == "al_rnn"
    # the symbols are the sign patterns of the ReLU units of the free-running states
    model = build_model(cfg)
    model.load_state_dict(run.load_checkpoint("last")["model"])
    model.eval()
    g = torch.Generator()
    g.manual_seed(derived_seed(0, "symbolic"))
    task = tasks.build("dynamics", seq_len=12)
    x = task.trajectory(12, 1, generator=g)
    Z = latent_trajectory(model, 0, x, 250, generator=g)[0, 50:]  # (200, M)
    want = [sum(2 ** i for i in range(3) if Z[t, 3 + i].item() > 0) for t in range(200)]
    assert s["symbols"] == want
    # the latent states are those of the free run: their first units are its predictions
    g.manual_seed(derived_seed(0, "symbolic"))
    x = task.trajectory(12, 1, generator=g)
    pred = free_run(model, x, 250, generator=g)[0]  # predictions x^_w, x^_{w+1}, ...
    torch.testing.assert_close(Z[:-1, :3], pred[51:250], rtol=0, atol=1e-6)
    assert s["n_visited"] == len(set(want))
    counts = transition_counts(want)
    assert sorted(map(tuple, s["transitions"])) == sorted((a, b, c) for (a, b), c in
                                                           counts.items())
    assert s["cycles"] == simple_cycles(counts, max_len=8, max_cycles=200)[0]
    entry = Entry("al_rnn", run.id, {"mixer": "al_rnn"}, out)
    _fig, _header, rows, caption = FIGURE_REGISTRY["symbolic"].draw([entry], Canvas())
    assert rows[0][2] == s["n_visited"] and "subregion" in caption
    # a run without a piecewise-linear mixer gives nothing
    cfg2 = load_config(None, ["task.kind=dynamics", "task.seq_len=12", "model.d_model=6",
                              "train.batch_size=4", "train.steps_per_epoch=1",
                              "train.eval_batches=1", "train.max_epochs=1",
                              "eval.free_run_steps=0", "model.mixer.kind=gru"])
    run2 = RunStore(tmp_path).create_run(cfg2.model_dump(mode="json"))
    train_run(cfg2, run2)
    assert "symbolic" not in analyze_run(cfg2, run2, what=["symbolic"])
