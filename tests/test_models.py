"""SequenceModel: the step form equals the sequence form; the masked loss equals a direct sum."""

import pytest
import torch
import torch.nn.functional as F

from seqmem import mixers
from seqmem.errors import SeqmemError
from seqmem.models import SequenceModel, masked_heads_loss


@pytest.mark.parametrize("mixer", mixers.names())
@pytest.mark.parametrize("block,n_layers", [("plain", 1), ("residual", 2)])
def test_step_equals_forward(mixer, block, n_layers):
    torch.manual_seed(0)
    m = SequenceModel(3, 8, mixer=mixer, n_layers=n_layers, block=block, heads=[2, 5]).double()
    x = torch.randn(2, 7, 3, dtype=torch.float64)
    s0 = m.init_state(2, generator=torch.Generator().manual_seed(1))
    h, _s = m.features(x, s0)
    state, hs = s0, []
    for t in range(7):
        h_t, state = m.step(x[:, t], state)
        hs.append(h_t)
    torch.testing.assert_close(torch.stack(hs, 1), h, rtol=0, atol=1e-12)
    logits, _ = m(x, s0, heads=[1])
    assert logits[0].shape == (2, 7, 5)


def test_masked_heads_loss_matches_direct_sum():
    torch.manual_seed(0)
    m = SequenceModel(1, 6, heads=[2, 2, 3]).double()
    h = torch.randn(4, 5, 6, dtype=torch.float64)
    mask = torch.zeros(4, 5, dtype=torch.bool)
    mask[:, -1] = True
    mask[0, 2] = True
    targets = torch.randint(0, 2, (4, 5, 2))
    loss, acc = masked_heads_loss(m, h, targets, mask, heads=[0, 2])
    want, accs = 0.0, []
    for j, i in enumerate([0, 2]):
        ls, hits, n = 0.0, 0, 0
        for b in range(4):
            for t in range(5):
                if mask[b, t]:
                    logit = m.heads[i](h[b, t])
                    ls += F.cross_entropy(logit[None], targets[b, t, j][None]).item()
                    hits += int(logit.argmax() == targets[b, t, j])
                    n += 1
        want += ls / n
        accs.append(hits / n)
    assert loss.item() == pytest.approx(want, rel=1e-12)
    assert acc.tolist() == pytest.approx(accs)


def test_model_input_errors():
    m = SequenceModel(1, 4)
    with pytest.raises(SeqmemError, match=r"inputs must have shape \(batch, time, 1\)"):
        m.features(torch.randn(2, 3, 2))
    with pytest.raises(SeqmemError, match="heads must be"):
        SequenceModel(1, 4, heads=[1])
    with pytest.raises(SeqmemError, match="unknown block 'x'; accepted: plain, residual"):
        SequenceModel(1, 4, block="x")
