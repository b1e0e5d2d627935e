"""Per-task training defaults, "auto" task options made explicit, and one line of help for
every task option (`seqmem config --show task`)."""

from __future__ import annotations

import inspect

import pytest
import yaml

from seqmem import tasks
from seqmem.config import load_config
from seqmem.config.describe import describe
from seqmem.config.run import TrainConfig
from seqmem.tasks.digits import mnist1d_package_installed

WITH_DEFAULTS = [n for n in tasks.names() if tasks.get(n).train_defaults]


def test_some_tasks_declare_defaults_with_their_source():
    assert {"parity", "mod_arith", "mqar", "listops", "induction_heads", "dynamics"} \
        <= set(WITH_DEFAULTS)
    for name in WITH_DEFAULTS:
        cls = tasks.get(name)
        assert set(cls.train_defaults) <= set(TrainConfig.model_fields), name
        assert cls.paper_setting, f"{name} declares training defaults but not its source's"
        TrainConfig(**cls.train_defaults)  # valid values


@pytest.mark.parametrize("name", WITH_DEFAULTS)
def test_task_defaults_fill_only_unset_keys(name):
    cls = tasks.get(name)
    cfg = load_config(None, [f"task.kind={name}", "curriculum.kind=none"])
    for key, value in cls.train_defaults.items():
        assert getattr(cfg.train, key) == value
    # a key the config sets wins, the others still follow the task
    key = next(iter(cls.train_defaults))
    mine = TrainConfig.model_fields[key].default + 1
    cfg = load_config(None, [f"task.kind={name}", "curriculum.kind=none", f"train.{key}={mine}"])
    assert getattr(cfg.train, key) == mine
    for other, value in cls.train_defaults.items():
        if other != key:
            assert getattr(cfg.train, other) == value


def test_tasks_without_defaults_keep_the_global_ones():
    cfg = load_config(None, [])  # the flagship task
    assert not tasks.get(cfg.task.kind).train_defaults
    for key in ("batch_size", "eval_batches", "steps_per_epoch"):
        assert getattr(cfg.train, key) == TrainConfig.model_fields[key].default


def test_the_stored_config_reloads_to_the_same_config(tmp_path):
    cfg = load_config(None, ["task.kind=parity", "curriculum.kind=none"])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    again = load_config(str(path), [])
    assert again == cfg and again.train.batch_size == 64


def test_mnist1d_auto_source_is_stored_as_the_generator_used():
    cfg = load_config(None, ["task.kind=mnist1d", "curriculum.kind=none"])
    assert cfg.task.source == ("package" if mnist1d_package_installed() else "builtin")
    cfg = load_config(None, ["task.kind=mnist1d", "curriculum.kind=none", "task.source=builtin"])
    assert cfg.task.source == "builtin"
    # the resolved source is the one the task itself picks for "auto"
    assert tasks.get("mnist1d").resolve_options({"source": "auto"})["source"] \
        == tasks.build("mnist1d", n_samples=20, source="auto").source


@pytest.mark.parametrize("name", tasks.names())
def test_every_task_option_has_help(name):
    rows = {r["key"]: r for r in describe("task", name)}
    params = tasks.hyperparameters(tasks.get(name))
    for option in params:
        assert rows[f"task.{option}"]["help"], f"{name}.{option} has no help in config --show"
    for key in tasks.get(name).train_defaults:
        assert rows[f"train.{key}"]["default"] == tasks.get(name).train_defaults[key]


def test_help_comes_from_the_args_section():
    doc = inspect.getdoc(tasks.get("mqar"))
    line = next(x for x in doc.splitlines() if x.strip().startswith("n_pairs:"))
    rows = {r["key"]: r["help"] for r in describe("task", "mqar")}
    assert rows["task.n_pairs"] == line.split(":", 1)[1].strip().rstrip(".")


@pytest.mark.parametrize("name", __import__("seqmem").mixers.names())
def test_every_mixer_option_has_help(name):
    from seqmem import mixers

    rows = {r["key"]: r for r in describe("mixer", name)}
    for option in mixers.hyperparameters(mixers.get(name)):
        assert rows[f"model.mixer.{option}"]["help"], \
            f"{name}.{option} has no help in config --show (its docstring's Args: section)"
