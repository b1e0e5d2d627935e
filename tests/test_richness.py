"""Rich and lazy learning: the recurrent initialisations (init, init_gain, init_rank,
init_noise) and the richness analysis's measures, each against a closed form or a direct
computation (a finite-difference jacobian, the checkpoints themselves)."""

import math

import pytest
import torch

from seqmem import mixers
from seqmem.analysis.analyze import analyze_run, headline
from seqmem.analysis.registry import FIGURE_REGISTRY, Entry
from seqmem.analysis.richness import (
    effective_rank,
    kernel_alignment,
    model_kernel,
    participation_ratio,
    relative_change,
)
from seqmem.build import build_model
from seqmem.config import load_config
from seqmem.engine.jobs import train_run
from seqmem.errors import SeqmemError
from seqmem.models import SequenceModel
from seqmem.report.render import Canvas
from seqmem.store import RunStore
from seqmem.tasks.base import Batch

RNNS = ("leaky_rnn", "elman", "gru", "lstm")
GATES = {"leaky_rnn": 1, "elman": 1, "gru": 3, "lstm": 4}
D = 12


def build(name, seed=0, d=D, **kw):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return mixers.build(name, d, **kw)


def W_of(m):
    return (m.W if m.name == "leaky_rnn" else m.weight_hh).detach().double()


def blocks(m):
    W = W_of(m)
    return [W[i * m.d_model:(i + 1) * m.d_model] for i in range(GATES[m.name])]


# ---- the measures -----------------------------------------------------------------------------
def test_effective_rank_closed_forms():
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(9, 1, generator=g), torch.randn(1, 7, generator=g)
    assert effective_rank(u @ v) == pytest.approx(1.0, abs=1e-9)  # a rank-1 update
    assert participation_ratio(u @ v) == pytest.approx(1.0, abs=1e-9)
    assert effective_rank(3 * torch.eye(5)) == pytest.approx(5.0)  # n equal singular values
    # singular values (3, 1): p = (3/4, 1/4), erank = exp(H(p)); PR = (9 + 1)^2 / (81 + 1)
    W = torch.diag(torch.tensor([3.0, -1.0, 0.0]))
    H = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert effective_rank(W) == pytest.approx(math.exp(H))
    assert participation_ratio(W) == pytest.approx(100 / 82)
    assert effective_rank(torch.zeros(3, 3)) == 0.0


def test_relative_change_of_hand_built_matrices():
    W0 = torch.tensor([[3.0, 0.0], [0.0, 4.0]])  # ||W0||_F = 5
    assert relative_change(W0 + torch.tensor([[0.0, 1.0], [0.0, 0.0]]), W0) == pytest.approx(0.2)
    assert relative_change(-W0, W0) == pytest.approx(2.0)
    assert relative_change(W0, W0) == 0.0
    with pytest.raises(SeqmemError, match="initial weights are all zero"):
        relative_change(W0, torch.zeros(2, 2))
    with pytest.raises(SeqmemError, match="cannot be compared"):
        relative_change(torch.zeros(3, 3), W0)


def test_kernel_alignment_closed_forms():
    K = torch.tensor([[2.0, 1.0], [1.0, 3.0]])
    assert kernel_alignment(K, K) == pytest.approx(1.0)
    assert kernel_alignment(K, 7 * K) == pytest.approx(1.0)  # scale-free
    # <I, diag(1, 2)> = 3, ||I|| = sqrt 2, ||diag(1, 2)|| = sqrt 5
    assert kernel_alignment(torch.eye(2), torch.diag(torch.tensor([1.0, 2.0]))) == \
        pytest.approx(3 / math.sqrt(10))
    # <diag(1, 0), ones> = 1, norms 1 and 2
    assert kernel_alignment(torch.diag(torch.tensor([1.0, 0.0])), torch.ones(2, 2)) == \
        pytest.approx(0.5)
    with pytest.raises(SeqmemError, match="same probe"):
        kernel_alignment(torch.eye(2), torch.eye(3))


def test_tangent_kernel_equals_a_finite_difference_jacobian_per_example():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = SequenceModel(2, 4, mixer="leaky_rnn", heads=[2, 3]).double().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, 2, generator=g, dtype=torch.float64)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[0, 4] = mask[1, 1] = mask[1, 2] = mask[2, 0] = True  # last supervised: 4, 2, 0
    batch = Batch(x, torch.zeros(3, 5, 1, dtype=torch.long), mask)
    head = 1  # three logits per example
    K = model_kernel(model, batch, head, seed=0)
    assert K.shape == (9, 9)

    params = [p for p in model.parameters() if p.requires_grad]
    theta = torch.nn.utils.parameters_to_vector(params).detach().clone()

    def f(i, vec):  # example i alone, read out at its last supervised step (found by a loop)
        torch.nn.utils.vector_to_parameters(vec, params)
        t_last = max(t for t in range(5) if mask[i, t])
        with torch.no_grad():
            h, _ = model.features(x[i:i + 1], model.init_state(1))
            return model.heads[head](h[0, t_last])  # (3,)

    eps = 1e-6
    J = torch.zeros(3, 3, theta.numel(), dtype=torch.float64)  # (example, logit, P)
    for i in range(3):
        for k in range(theta.numel()):
            e = torch.zeros_like(theta)
            e[k] = eps
            J[i, :, k] = (f(i, theta + e) - f(i, theta - e)) / (2 * eps)
    torch.nn.utils.vector_to_parameters(theta, params)
    direct = torch.einsum("iap,jbp->iajb", J, J).reshape(9, 9)
    assert torch.allclose(K, direct, rtol=1e-6, atol=1e-8)
    assert kernel_alignment(K, direct) == pytest.approx(1.0, abs=1e-10)
    # over the recurrent weights only: the columns of W in the parameter vector
    start = 0
    for name, p in model.named_parameters():
        if name == "blocks.0.mixer.W":
            break
        start += p.numel()
    Jw = J[..., start:start + 16]
    K_rec = model_kernel(model, batch, head, seed=0, params="recurrent")
    assert torch.allclose(K_rec, torch.einsum("iap,jbp->iajb", Jw, Jw).reshape(9, 9),
                          rtol=1e-6, atol=1e-8)
    with pytest.raises(SeqmemError, match="unknown ntk_params 'some'; accepted: all, recurrent"):
        model_kernel(model, batch, head, seed=0, params="some")


# ---- the initialisations ----------------------------------------------------------------------
@pytest.mark.parametrize("name", RNNS)
def test_defaults_draw_exactly_as_before(name):
    """The default options give torch.nn's U(-1/sqrt(d), 1/sqrt(d)) draws in the order the
    mixers always made them (recomputed here by hand), and explicit defaults change nothing."""
    m, explicit = build(name, 5), build(name, 5, init="default", init_gain=1.0, init_rank=None,
                                         init_noise=0.0)
    k, n = 1 / math.sqrt(D), GATES[name] * D
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        if name == "leaky_rnn":
            expected = {"W": torch.empty(D, D).uniform_(-k, k),
                        "U": torch.empty(D, D).uniform_(-k, k)}
        else:
            expected = {"weight_ih": torch.empty(n, D).uniform_(-k, k),
                        "weight_hh": torch.empty(n, D).uniform_(-k, k)}
    for key, value in expected.items():
        assert torch.equal(m.state_dict()[key], value)
    for key, value in m.state_dict().items():
        assert torch.equal(explicit.state_dict()[key], value)


@pytest.mark.parametrize("name", RNNS)
def test_another_init_changes_the_recurrent_weights_only(name):
    base, other = build(name, 2), build(name, 2, init="normal", init_gain=2.0)
    key = "W" if name == "leaky_rnn" else "weight_hh"
    for k, v in base.state_dict().items():
        assert torch.equal(other.state_dict()[k], v) == (k != key), k


@pytest.mark.parametrize("name", RNNS)
def test_init_gain_scales_the_spectrum(name):
    for init in ("default", "normal", "orthogonal"):
        one, g = build(name, 1, init=init), build(name, 1, init=init, init_gain=0.3)
        for a, b in zip(blocks(one), blocks(g), strict=True):
            assert torch.allclose(torch.linalg.svdvals(b), 0.3 * torch.linalg.svdvals(a),
                                  rtol=1e-5, atol=1e-7)
    big = build(name, 1, d=64, init="normal", init_gain=1.7)
    assert W_of(big).std().item() == pytest.approx(1.7 / 8, rel=0.05)  # N(0, g^2 / d)
    dflt = build(name, 1, d=64, init_gain=1.7)
    assert W_of(dflt).abs().max().item() <= 1.7 / 8  # U(-g/sqrt(d), g/sqrt(d))
    assert W_of(dflt).std().item() == pytest.approx(1.7 / 8 / math.sqrt(3), rel=0.05)


@pytest.mark.parametrize("name", RNNS)
def test_orthogonal_init_gives_w_wt_equal_g2_identity(name):
    m = build(name, 4, init="orthogonal", init_gain=0.7)
    for B in blocks(m):
        assert torch.allclose(B @ B.T, 0.49 * torch.eye(D, dtype=torch.float64), atol=1e-6)


@pytest.mark.parametrize("name", RNNS)
@pytest.mark.parametrize("r", [1, 3])
def test_init_rank_gives_rank_r_with_the_stated_norm_plus_noise(name, r):
    m = build(name, 6, init_rank=r, init_gain=0.5)
    for B in blocks(m):
        assert torch.linalg.matrix_rank(B.float()).item() == r  # at float32's tolerance
        s = torch.linalg.svdvals(B)
        assert s[r:].max().item() < 1e-5 * s[0].item()
        assert torch.linalg.norm(B).item() == pytest.approx(0.5 * math.sqrt(D), rel=1e-5)
    noisy = build(name, 6, init_rank=r, init_gain=0.5, init_noise=0.2, d=48)
    clean = build(name, 6, init_rank=r, init_gain=0.5, d=48)
    # the first block: the same low-rank part, the noise drawn after it
    noise = (W_of(noisy) - W_of(clean))[:48]
    assert torch.linalg.matrix_rank(noise).item() == 48
    assert noise.std().item() == pytest.approx(0.5 * 0.2 / math.sqrt(48), rel=0.06)


@pytest.mark.parametrize(("kw", "match"), [
    ({"init": "xavier"}, r"unknown gru init 'xavier'; accepted: default, normal, orthogonal"),
    ({"init_gain": 0.0}, "init_gain must be a number > 0"),
    ({"init_rank": 13}, "init_rank must be an integer from 1 to d_model=12"),
    ({"init_rank": 2, "init": "orthogonal"}, "leave init at 'default'"),
    ({"init_noise": 0.1}, "give init_rank too"),
    ({"init_rank": 2, "init_noise": -1.0}, "init_noise must be a number >= 0"),
])
def test_bad_init_options_are_one_line_errors(kw, match):
    with pytest.raises(SeqmemError, match=match) as info:
        build("gru", **kw)
    assert "\n" not in str(info.value)


# ---- the analysis of a run --------------------------------------------------------------------
SMALL = ["model.d_model=8", "train.batch_size=16", "train.steps_per_epoch=2",
         "train.eval_batches=1", "curriculum.threshold=0.01", "curriculum.n_max=3",
         "model.mixer.input_proj=false", "model.mixer.init_gain=0.5"]


def test_richness_of_a_trained_run(tmp_path):
    cfg = load_config(None, SMALL)
    store = RunStore(tmp_path)
    run = store.create_run(cfg.model_dump(mode="json"))
    train_run(cfg, run)
    # the init checkpoint holds the initial weights: those the config's seed draws
    init = run.load_checkpoint("init")["model"]
    fresh = build_model(cfg).state_dict()
    assert init.keys() == fresh.keys()
    assert all(torch.equal(init[k], fresh[k]) for k in fresh)
    out = analyze_run(cfg, run, what=("richness",), ntk_examples=3)["richness"]
    assert out["w0_source"] == "checkpoint init" and [s["N"] for s in out["stages"]] == [2, 3]
    off = 1 - torch.eye(8)  # leaky_rnn uses W with its diagonal zeroed
    W0 = init["blocks.0.mixer.W"] * off
    assert out["init"]["effective_rank"] == pytest.approx(effective_rank(W0))
    for row, tag in [*((s, f"N{s['N']:03d}") for s in out["stages"]), (out["last"], "last")]:
        W = run.load_checkpoint(tag)["model"]["blocks.0.mixer.W"] * off
        assert row["weight_change"] == pytest.approx(relative_change(W, W0))
        assert row["effective_rank"] == pytest.approx(effective_rank(W))
        assert row["effective_rank_delta"] == pytest.approx(effective_rank(W - W0))
        assert row["weight_change"] > 0 and 0 < row["kernel_alignment"] <= 1 + 1e-12
    assert headline({"richness": out}) == {
        "richness_weight_change": out["last"]["weight_change"],
        "richness_kernel_alignment": out["last"]["kernel_alignment"],
        "richness_effective_rank": out["last"]["effective_rank"]}
    # the report's figures: one table row per stage and the final state, with a caption
    entry = Entry("rich", run.id, run.read_summary(), {"richness": out})
    _fig, header, rows, caption = FIGURE_REGISTRY["richness_weights"].draw([entry], Canvas())
    assert [r[1] for r in rows] == [2, 3, "last"] and len(rows[0]) == len(header)
    assert rows[-1][2] == f"{out['last']['weight_change']:.4f}" and "Roy & Vetterli" in caption
    _fig, header, rows, caption = FIGURE_REGISTRY["richness_kernel"].draw([entry], Canvas())
    assert [r[2] for r in rows] == [f"{s['kernel_alignment']:.4f}"
                                    for s in (*out["stages"], out["last"])]
    assert "3 sequences" in caption and "all trainable parameters" in caption
    rec = analyze_run(cfg, run, what=("richness",), ntk_examples=3,
                      ntk_params="recurrent")["richness"]
    assert rec["ntk_params"] == "recurrent"
    assert [s["weight_change"] for s in rec["stages"]] == \
        [s["weight_change"] for s in out["stages"]]
    assert all(0 < s["kernel_alignment"] <= 1 + 1e-12 for s in rec["stages"])
    assert FIGURE_REGISTRY["richness_kernel"].draw([Entry("x", "x", {})], Canvas()) is None
    with pytest.raises(SeqmemError, match="ntk_examples must be an integer >= 1"):
        analyze_run(cfg, run, what=("richness",), ntk_examples=0)


@pytest.mark.parametrize("name", RNNS)
def test_a_non_default_init_builds_on_the_meta_device(name):
    with torch.device("meta"):
        m = build(name, init_rank=2, init_noise=0.1)
    assert W_of(m).is_meta and W_of(m).shape == (GATES[name] * D, D)
