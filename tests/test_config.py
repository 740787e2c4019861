import tomllib
from pathlib import Path

import pytest

from launcher.simulate import check_run_config
from task.config import Settings
from task.errors import ConfigError


def test_defaults_are_valid():
    Settings.from_run_config({})


def test_the_defaults_here_are_the_defaults_in_pyproject():
    """pyproject.toml's [tool.flwr.app.config] is what Flower runs with; Settings() is what
    the report and the tools assume when a key is missing. They must not drift apart."""
    table = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["tool"]["flwr"]["app"][
        "config"
    ]
    assert Settings().to_run_config() == table


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("model", "cnn", "model='cnn' is unknown: choose one of mlp, autoencoder"),
        ("partitioning", "noniid", "partitioning='noniid' is unknown"),
        ("num-server-rounds", 0, "num-server-rounds=0 is not allowed"),
        ("local-epochs", -1, "local-epochs=-1 is not allowed"),
        ("batch-size", 0, "batch-size=0 is not allowed"),
        ("learning-rate", 0.0, "learning-rate=0.0 is not allowed"),
        ("learning-rate", -0.1, "learning-rate=-0.1 is not allowed"),
        ("fraction-train", 0.0, "fraction-train=0.0 is not allowed: use 0 < fraction-train <= 1"),
        ("fraction-train", 1.5, "fraction-train=1.5 is not allowed"),
        ("momentum", 1.0, "momentum=1.0 is not allowed"),
        ("ae-code-size", 784, "ae-code-size=784 is not allowed"),
        ("ae-hidden", "500,x", "ae-hidden='500,x' is not allowed"),
        ("ae-hidden", "", "ae-hidden='' gives the autoencoder no hidden layers"),
        ("ae-code-size", 0, "ae-code-size=0 is not allowed"),
        ("batch-size", "ten", "batch-size='ten' is not allowed: expected a int"),
        ("data-dir", "mnist", "data-dir='mnist' is a relative path: give an absolute one"),
        ("learning-rate-decay", 0.0, "learning-rate-decay=0.0 is not allowed: use 0 < learning-rate-decay <= 1"),
        ("learning-rate-decay", 1.5, "learning-rate-decay=1.5 is not allowed"),
        ("seed", -1, "seed=-1 is not allowed: use a whole number from 0"),
        ("strategy", "scaffold", "strategy='scaffold' is unknown: choose one of fedavg, fedavgm"),
        ("server-momentum", 0.9, "server-momentum=0.9 applies to strategy='fedavgm' only"),
        ("proximal-mu", 0.1, "proximal-mu=0.1 applies to strategy='fedprox' only"),
        ("dp-noise-multiplier", 1.0, "dp-noise-multiplier=1.0 needs dp-clipping-norm > 0"),
        ("dp-clipping-norm", -1.0, "both must be >= 0"),
        ("dp-clipping", "nodes", "dp-clipping='nodes' is unknown: choose one of server, client"),
        ("dp-clipping", "client", "dp-clipping='client' needs dp-clipping-norm > 0"),
        ("dirichlet-alpha", 0.0, "dirichlet-alpha=0.0 is not allowed: use a number > 0"),
        ("num-shards", 0, "num-shards=0 is not allowed"),
        ("round-timeout", 0.0, "round-timeout=0.0 is not allowed"),
        ("min-train-replies", 0, "min-train-replies=0 is not allowed"),
        ("resume-from", "runs/x", "resume-from='runs/x' is a relative path"),
        ("fault-injection", "nan@1", "is for tests only"),
        ("run-name", "../x", "run-name='../x' is not allowed: give a plain folder name"),
        ("run-name", "..", "run-name='..' is not allowed"),
        ("run-name", "a/b", "run-name='a/b' is not allowed"),
    ],
)
def test_bad_values_name_the_key_the_value_and_what_is_allowed(key, value, expected):
    with pytest.raises(ConfigError) as err:
        Settings.from_run_config({key: value})
    assert expected in str(err.value)


def test_dp_clipping_says_where_the_clipping_happens_and_is_unused_without_dp():
    assert Settings().dp_clipping == "server" and not Settings().clips_on_nodes
    on_nodes = Settings.from_run_config({"dp-clipping-norm": 1.0, "dp-clipping": "client"})
    assert on_nodes.differential_privacy and on_nodes.clips_on_nodes and "dp-clipping" not in on_nodes.unused_knobs
    on_server = Settings.from_run_config({"dp-clipping-norm": 1.0})
    assert on_server.differential_privacy and not on_server.clips_on_nodes
    assert "dp-clipping" in Settings().unused_knobs  # no differential privacy: where it would clip says nothing


def test_an_autoencoder_that_widens_is_refused():
    with pytest.raises(ConfigError, match="does not narrow"):
        Settings.from_run_config({"ae-hidden": "1000,500", "ae-code-size": 30})


def test_toml_numbers_are_accepted_for_either_kind():
    s = Settings.from_run_config({"learning-rate": 1, "num-server-rounds": 3.0})
    assert s.learning_rate == 1.0 and s.num_server_rounds == 3


def test_round_trip_through_the_dashed_form():
    s = Settings.from_run_config({"model": "autoencoder", "optimizer": "adam", "seed": 7})
    assert Settings.from_run_config(s.to_run_config()) == s


AE = {"model": "autoencoder", "ae-hidden": "500,250", "num-server-rounds": 10}


def test_pretraining_walks_the_pairs_from_the_pixels_inwards_then_trains_the_whole_stack():
    s = Settings.from_run_config({**AE, "ae-pretrain-rounds": 2})
    assert s.ae_num_stages == 3
    assert s.ae_rounds_per_stage == 2 and s.ae_pretraining_rounds_total == 6  # the key counts rounds per stage
    assert s.to_run_config()["ae-pretrain-rounds"] == 2
    assert [s.pretrain_stage(r) for r in range(1, 11)] == [0, 0, 1, 1, 2, 2, None, None, None, None]
    assert Settings.from_run_config(AE).pretrain_stage(1) is None


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"ae-pretrain-rounds": -1}, "ae-pretrain-rounds=-1 is not allowed"),
        ({"ae-pretrain-rounds": 2, "model": "mlp"}, "applies to model='autoencoder' only"),
        ({"ae-pretrain-rounds": 4}, "takes 12 rounds, but num-server-rounds=10 leaves none to fine-tune"),
        ({"ae-pretrain-rounds": 3, "num-server-rounds": 9}, "use num-server-rounds > 9"),
    ],
)
def test_pretraining_that_cannot_fit_the_run_is_refused(overrides, expected):
    with pytest.raises(ConfigError) as err:
        Settings.from_run_config({**AE, **overrides})
    assert expected in str(err.value)


@pytest.mark.parametrize(
    "preset", sorted((Path(__file__).parent.parent / "presets").glob("*.toml")), ids=lambda p: p.stem
)
def test_every_preset_is_a_valid_run_config(preset):
    values = tomllib.loads(preset.read_text())
    settings = check_run_config(values)  # also refuses keys the app does not declare (a typo would be ignored)
    resolved = settings.to_run_config()
    assert {k: resolved[k] for k in values} == values
