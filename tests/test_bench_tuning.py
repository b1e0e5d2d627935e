"""`seqmem.ops.tuning`: the order in which a chunked op's default chunk length is looked up
(this machine's measured best, else the packaged default), a corrupt file ignored with one
warning line, and `chunk_size=None` reaching the ops from the mixers."""

from __future__ import annotations

import importlib
import json

import pytest
import torch

from seqmem import mixers, ops
from seqmem.ops import tuning


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "chunk_sizes.json"
    monkeypatch.setenv("SEQMEM_CHUNK_SIZES", str(path))
    return path


def test_cache_path_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("SEQMEM_CHUNK_SIZES", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tuning.cache_path() == tmp_path / "xdg" / "seqmem" / "chunk_sizes.json"
    monkeypatch.setenv("SEQMEM_CHUNK_SIZES", str(tmp_path / "mine.json"))
    assert tuning.cache_path() == tmp_path / "mine.json"


def test_lookup_order_measured_then_packaged(cache, monkeypatch):
    monkeypatch.setitem(tuning.DEFAULTS, "gla", 48)
    assert not cache.exists() and tuning.chunk_size("gla") == 48  # no file: packaged
    assert tuning.chunk_size("no_such_op") == tuning.FALLBACK
    # another machine's (or thread count's) measurement does not apply here
    other = tuning.machine_key(threads=torch.get_num_threads() + 1)
    cache.write_text(json.dumps({other: {"gla": 16}}))
    assert tuning.chunk_size("gla") == 48
    tuning.save({"gla": 128, "ssd": 32})
    data = json.loads(cache.read_text())
    assert data[other] == {"gla": 16}  # kept
    assert data[tuning.machine_key()] == {"gla": 128, "ssd": 32}
    assert tuning.chunk_size("gla") == 128 and tuning.chunk_size("ssd") == 32
    assert tuning.chunk_size("retention") == tuning.DEFAULTS["retention"]  # not measured
    assert tuning.resolve("gla", 8) == 8 and tuning.resolve("gla", None) == 128


@pytest.mark.parametrize("text", ["{not json", '["a list"]', '{"key": 3}'])
def test_a_corrupt_file_is_ignored_with_one_warning_line(cache, capsys, monkeypatch, text):
    monkeypatch.setitem(tuning.DEFAULTS, "delta_rule", 32)
    cache.write_text(text)
    assert tuning.chunk_size("delta_rule") == 32
    assert tuning.chunk_size("delta_rule") == 32  # the same file: warned once
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: ignoring the chunk-size file {cache}")


def test_an_unreadable_file_is_ignored(cache, capsys):
    cache.mkdir()  # a folder where the file should be: reading it fails
    assert tuning.chunk_size("gla") == tuning.DEFAULTS["gla"]
    assert "ignoring the chunk-size file" in capsys.readouterr().err


def test_a_measured_chunk_length_reaches_the_op(cache, monkeypatch):
    """The op called with chunk_size=None runs at the length in the file: the chunk form's
    own calls at that length and at None give the same output; and a poisoned entry (a
    length the op refuses) proves the file is read."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 40, 2, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    g = -torch.rand(1, 40, 2, 8, generator=gen, dtype=torch.float64)
    tuning.save({"gla": 8})
    seen = []
    la = importlib.import_module("seqmem.ops.linear_attention")
    real = la.gla_chunk

    def spy(*a, chunk_size, **kw):
        seen.append(chunk_size)
        return real(*a, chunk_size=chunk_size, **kw)

    monkeypatch.setattr(la, "gla_chunk", spy)
    o_none, _ = ops.gla(q, k, v, g)
    o_eight, _ = ops.gla(q, k, v, g, chunk_size=8)
    assert seen == [8, 8]
    torch.testing.assert_close(o_none, o_eight, rtol=0, atol=0)
    o_loop, _ = ops.gla(q, k, v, g, mode="recurrent")
    torch.testing.assert_close(o_none, o_loop)


CHUNKED = [n for n in mixers.names() if "chunk" in mixers.get(n).modes]


@pytest.mark.parametrize("name", CHUNKED)
def test_mixers_run_with_chunk_size_none(name, cache):
    """Mixer.forward's default chunk_size is None, passed through to the ops: the default
    and an explicit chunk length give the loop's output."""
    torch.manual_seed(0)
    m = mixers.build(name, 16).double()
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    with torch.no_grad():
        y_none, _ = m(x, mode="chunk")
        y_four, _ = m(x, mode="chunk", chunk_size=4)
        y_loop, _ = mixers.step_loop(m, x, None)
    torch.testing.assert_close(y_none, y_loop, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(y_four, y_loop, rtol=1e-9, atol=1e-9)
