"""Configs: defaults, dotted overrides, and one-line errors naming the dotted path."""

import inspect

import pytest

from seqmem import mixers, tasks
from seqmem.config import load_config, mixer_config_class, task_config_class
from seqmem.errors import ConfigError


def test_defaults_and_overrides():
    cfg = load_config(None, ["train.lr=3e-4", "model.d_model=64", "model.mixer.rule=mod",
                             "task.N=3", "curriculum.kind=single", "curriculum.n_start=3"])
    assert cfg.train.lr == 3e-4 and cfg.model.d_model == 64
    defaults = {k: p.default for k, p in mixers.hyperparameters(mixers.get("leaky_rnn")).items()}
    assert cfg.model.mixer.model_dump() == {**defaults, "kind": "leaky_rnn", "rule": "mod"}
    assert cfg.task.N == 3 and cfg.curriculum.kind == "single"


def test_changing_kind_drops_old_options():
    cfg = load_config({"model": {"mixer": {"kind": "leaky_rnn", "rule": "mod"}}},
                      ["model.mixer.kind=gru"])
    assert cfg.model.mixer.model_dump() == {"kind": "gru", "bias": True, "init": "default",
                                            "init_gain": 1.0, "init_rank": None,
                                            "init_noise": 0.0}


@pytest.mark.parametrize("family,names,config_class,get,hp", [
    ("mixer", mixers.names, mixer_config_class, mixers.get, mixers.hyperparameters),
    ("task", tasks.names, task_config_class, tasks.get, tasks.hyperparameters),
])
def test_config_classes_mirror_constructors(family, names, config_class, get, hp):
    for name in names():
        fields = config_class(name).model_fields
        params = hp(get(name))
        assert set(fields) == {"kind", *params}, name
        for k, p in params.items():
            if p.default is not inspect.Parameter.empty:
                assert fields[k].default == p.default, (name, k)


@pytest.mark.parametrize("override,message", [
    (["train.lrr=1"], "train.lrr: unknown key; accepted: optimizer, lr"),
    (["train.lr=-1"], "train.lr: Input should be greater than 0"),
    (["model.mixer.kind=nope"], "model.mixer.kind: unknown mixer 'nope'; accepted: "),
    (["model.mixer.rule=fancy"], "model.mixer: unknown leaky_rnn rule 'fancy'; accepted: default"),
    (["model.mixer.tau_nit=1"], "model.mixer.tau_nit: unknown key"),
    (["task.kind=nope"], "task.kind: unknown task 'nope'; accepted:"),
    (["task.N=1"], "task: N must be"),
    (["model.mixer.tau_init=[0.5, 1]"], "model.mixer: tau_init must be"),
    (["curriculum.kind=double"], "curriculum.kind: Input should be"),
    (["curriculum.n_start=1"], "curriculum.n_start: N starts at 2 or more, got 1"),
    (["curriculum.n_start=5", "curriculum.n_max=3"],
     "curriculum.n_max: must be >= curriculum.n_start (5), got 3"),
    (["bogus=1"], "bogus: unknown key"),
    (["train.lr"], "is not of the form key.path=value"),
])
def test_bad_values_are_one_line_errors(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, override)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_config_hash_ignores_key_order():
    a = load_config({"seed": 1, "train": {"lr": 0.1, "clip": 1.0}})
    b = load_config({"train": {"clip": 1.0, "lr": 0.1}, "seed": 1})
    assert a.config_hash() == b.config_hash()
    assert a.config_hash() != load_config({"seed": 2}).config_hash()


# ---- hybrid patterns, curriculum auto, eval lengths -----------------------------------------
def test_hybrid_mixer_config_validates_each_mixer():
    cfg = load_config(None, ["model.mixer.kind=gru*2,leaky_rnn", "model.mixer.leaky_rnn.rule=mod"])
    m = cfg.model.mixer.model_dump()
    assert m["kind"] == "gru*2,leaky_rnn"
    assert m["leaky_rnn"]["rule"] == "mod" and m["leaky_rnn"]["phi"] == "leaky_relu"
    assert set(m) == {"kind", "gru", "leaky_rnn"}
    with pytest.raises(ConfigError, match=r"model\.mixer: unknown leaky_rnn rule .nope."):
        load_config(None, ["model.mixer.kind=gru,leaky_rnn", "model.mixer.leaky_rnn.rule=nope"])
    with pytest.raises(ConfigError, match=r"model\.mixer\.lstm: unknown key"):
        load_config(None, ["model.mixer.kind=gru,leaky_rnn", "model.mixer.lstm.bias=true"])
    with pytest.raises(ConfigError, match=r"model\.mixer\.kind: .*unknown mixer 'nosuch'"):
        load_config(None, ["model.mixer.kind=gru,nosuch"])
    # one mixer repeated: flat options
    cfg = load_config(None, ["model.mixer.kind=leaky_rnn*2", "model.mixer.rule=mod"])
    assert cfg.model.mixer.options()["rule"] == "mod"


def test_curriculum_auto_resolves_by_task():
    assert load_config(None, []).curriculum.kind == "multi"
    assert load_config(None, ["curriculum.kind=single"]).curriculum.kind == "single"


def test_configs_are_typed_all_the_way_down():
    """After validation a task and a mixer are config models (attributes, options()), the
    dump round-trips, and an error carries its dotted path as data."""
    from seqmem.config import MixerConfig, TaskConfig

    cfg = load_config(None, ["task.kind=mqar", "task.n_pairs=4", "model.mixer=gru*2,lstm",
                             "model.mixer.lstm.bias=false", "curriculum.kind=none"])
    assert isinstance(cfg.task, TaskConfig) and isinstance(cfg.model.mixer, MixerConfig)
    assert cfg.task.kind == "mqar" and cfg.task.options()["n_pairs"] == 4
    init = {"init": "default", "init_gain": 1.0, "init_rank": None, "init_noise": 0.0}
    assert cfg.model.mixer.options() == {"gru": {"bias": True, **init},
                                         "lstm": {"bias": False, **init}}
    again = load_config(cfg.model_dump(mode="json"))
    assert again == cfg and again.config_hash() == cfg.config_hash()
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.mixer=gru,lstm", "model.mixer.lstm.biass=1"])
    assert e.value.path == "model.mixer.lstm.biass" and "accepted: bias" in e.value.problem


def test_auto_is_resolved_by_the_loader_not_inside_a_validator():
    from seqmem.config import RunConfig

    raw = RunConfig.model_validate({})
    assert raw.curriculum.kind == "auto" and raw.curriculum_kind() == "multi"
    assert load_config({}).curriculum.kind == "multi"
    assert load_config(None, ["task.kind=mqar"]).curriculum.kind == "none"


def test_one_loader_for_every_kind_of_config():
    from seqmem.bench import BenchConfig
    from seqmem.continual import ContinualConfig

    b = load_config(None, ["mixers=gru,lstm", "lengths=64"], schema=BenchConfig)
    assert b.mixers == ("gru", "lstm") and b.lengths == (64,)
    c = load_config(None, ["method=ewc", "method_options.ewc_lambda=5"], schema=ContinualConfig)
    assert c.method_options.ewc_lambda == 5
    with pytest.raises(ConfigError) as e:
        load_config(None, ["method=ewc", "method_options.lam=5"], schema=ContinualConfig)
    assert e.value.path == "method_options.lam" and "accepted: ewc_lambda" in str(e.value)
    with pytest.raises(ConfigError, match=r"^batch: Input should be greater than or equal"):
        load_config(None, ["batch=0"], schema=BenchConfig)


def test_configs_pickle_by_value():
    """A config crosses to a spawned worker process: its generated component classes pickle
    by value and come back equal."""
    import pickle

    from seqmem.continual import ContinualConfig

    for cfg in (load_config(None, ["model.mixer=gru*2,lstm", "task.kind=mqar",
                                   "curriculum.kind=none"]),
                load_config(None, ["method=replay", "method_options.replay_size=7"],
                            schema=ContinualConfig)):
        again = pickle.loads(pickle.dumps(cfg))
        assert again == cfg and again.config_hash() == cfg.config_hash()


def test_config_show_lists_every_key_with_its_default():
    from seqmem.config.describe import describe

    rows = {r["key"]: r for r in describe("train")}
    assert set(rows) == {f"train.{k}" for k in type(load_config().train).model_fields}
    assert rows["train.batch_size"]["default"] == 256 and rows["train.lr"]["help"]
    mixer = {r["key"]: r for r in describe("mixer", "leaky_rnn")}
    params = mixers.hyperparameters(mixers.get("leaky_rnn"))
    assert set(mixer) == {"model.mixer.kind", *(f"model.mixer.{k}" for k in params)}
    assert mixer["model.mixer.rule"]["default"] == "default" and mixer["model.mixer.rule"]["help"]
    with pytest.raises(Exception, match="unknown config section 'nope'; accepted: run"):
        describe("nope")
