"""The run configuration (``[tool.flwr.app.config]``), checked once, up front.

Both apps build a :class:`Settings` from ``context.run_config`` before doing any
work, so a bad value stops the run with a message that names the key, the value
and what is allowed, instead of a traceback halfway through round 1.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from partitioning import PARTITIONERS
from task.errors import ConfigError
from task.faults import check_faults
from task.objective import Objective, objective_for
from task.strategies import STRATEGIES, STRATEGY_ONLY_FIELDS, strategies_reading

MODELS = ("mlp", "autoencoder")
OPTIMIZERS = ("sgd", "adam")
DEVICES = ("auto", "cpu", "cuda")
# Where a node's update is clipped to dp-clipping-norm: by the server (Flower's
# DifferentialPrivacyServerSideFixedClipping) or by the node itself before it is sent
# (flwr.clientapp.mod.fixedclipping_mod, with DifferentialPrivacyClientSideFixedClipping).
DP_CLIPPING = ("server", "client")
# Experiment trackers a run can also log to, besides its run folder (server_app/tracking.py).
TRACKERS = ("off", "mlflow")
# Schemes of the tracking URIs MLflow's client stores runs under; a database one may name its
# driver (postgresql+psycopg2://...). MLflow 3 refuses its old folder store (file:, a bare path).
TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks")


# Each partitioning's options: its keyword name -> the Settings field that holds the value.
PARTITION_FIELDS: dict[str, dict[str, str]] = {
    "iid": {},
    "iid-balanced": {"samples_per_class": "samples_per_class"},
    "shards": {"num_shards": "num_shards", "shards_per_client": "shards_per_client"},
    "dirichlet": {"alpha": "dirichlet_alpha"},
}

# Settings fields whose run-config key is not their name with dashes. ``ae-pretrain-rounds``
# is user-facing (presets, run folders' config.json); the field says what it counts.
RUN_CONFIG_KEYS = {"ae_rounds_per_stage": "ae-pretrain-rounds"}


def knob_key(name: str) -> str:
    """The run-config key (dashed) of the Settings field ``name``."""
    return RUN_CONFIG_KEYS.get(name, name.replace("_", "-"))


@dataclass(frozen=True)
class Settings:
    """Every knob of a run, with the defaults of ``pyproject.toml``. A field's run-config key
    is its name with dashes (:func:`knob_key`), except where ``RUN_CONFIG_KEYS`` says otherwise."""

    model: str = "mlp"
    num_server_rounds: int = 10
    fraction_train: float = 0.1
    fraction_evaluate: float = 0.1
    min_available_nodes: int = 2
    local_epochs: int = 5
    batch_size: int = 10
    learning_rate: float = 0.1
    learning_rate_decay: float = 1.0
    momentum: float = 0.0
    optimizer: str = "sgd"
    max_grad_norm: float = 0.0
    ae_hidden: str = "500,250"
    ae_code_size: int = 30
    ae_rounds_per_stage: int = 0  # run-config key: ae-pretrain-rounds
    partitioning: str = "iid"
    samples_per_class: int = 0
    num_shards: int = 200
    shards_per_client: int = 0
    dirichlet_alpha: float = 0.5
    seed: int = 42
    device: str = "auto"
    data_dir: str = ""
    output_dir: str = "fedmnist-runs"
    run_name: str = ""
    central_epochs: int = 10
    central_converged: bool = False
    min_train_replies: int = 1
    round_timeout: float = 600.0
    round_retries: int = 3
    max_examples_per_node: int = 0
    resume_from: str = ""
    fault_injection: str = ""
    strategy: str = "fedavg"
    server_learning_rate: float = 0.0
    server_momentum: float = 0.0
    proximal_mu: float = 0.0
    trim_beta: float = 0.0
    num_malicious_nodes: int = 0
    krum_select: int = 0
    update_screen: float = 0.0
    dp_noise_multiplier: float = 0.0
    dp_clipping_norm: float = 0.0
    dp_clipping: str = "server"
    tensorboard: bool = False
    tracking: str = "off"
    tracking_uri: str = ""

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> Settings:
        """Build from Flower's run config (dashed keys), checking every value."""
        values = {}
        for f in fields(cls):
            key = knob_key(f.name)
            if key not in run_config:
                continue
            values[f.name] = _coerce(key, run_config[key], type(getattr(cls, f.name)))
        settings = cls(**values)
        settings.validate()
        return settings

    def to_run_config(self) -> dict[str, Any]:
        """The dashed-key form, as written to ``config.json``."""
        return {knob_key(k): v for k, v in asdict(self).items()}

    @property
    def objective(self) -> Objective:
        """The loss and headline metric of this run's model."""
        return objective_for(self.model)

    @property
    def partition_options(self) -> dict[str, Any]:
        """The options of the chosen partitioner, by its keyword names."""
        return {kwarg: getattr(self, name) for kwarg, name in PARTITION_FIELDS[self.partitioning].items()}

    @property
    def unused_knobs(self) -> frozenset[str]:
        """Knobs (dashed) that this run ignores: the options of the partitionings it does not
        use, and the autoencoder's shape for the MLP. Their values say nothing about the run."""
        every = {name for fields_ in PARTITION_FIELDS.values() for name in fields_.values()}
        unused = every - set(PARTITION_FIELDS[self.partitioning].values())
        if self.model == "mlp":
            unused |= {"ae_hidden", "ae_code_size", "ae_rounds_per_stage"}
        if not self.differential_privacy:
            unused.add("dp_clipping")
        if self.tracking == "off":
            unused.add("tracking_uri")
        return frozenset(knob_key(name) for name in unused)

    @property
    def ae_hidden_sizes(self) -> tuple[int, ...]:
        return _parse_sizes(self.ae_hidden)

    @property
    def ae_num_stages(self) -> int:
        """Encoder/decoder pairs: one per hidden layer, plus the code layer."""
        return len(self.ae_hidden_sizes) + 1

    @property
    def ae_pretraining_rounds_total(self) -> int:
        """Rounds spent on greedy layer-wise pretraining, all stages together, before the whole stack trains."""
        return self.ae_rounds_per_stage * self.ae_num_stages if self.model == "autoencoder" else 0

    def learning_rate_at(self, server_round: int) -> float:
        """The nodes' learning rate in ``server_round``: ``learning-rate`` decayed by
        ``learning-rate-decay`` per round since round 1. Each node starts its optimizer afresh
        every round, so a schedule has to come from the round number."""
        return self.learning_rate * self.learning_rate_decay ** max(0, server_round - 1)

    def pretrain_stage(self, server_round: int) -> int | None:
        """The pair that greedy layer-wise pretraining trains in this round
        (0 = the outermost), or None when the whole stack trains."""
        if not 1 <= server_round <= self.ae_pretraining_rounds_total:
            return None
        return (server_round - 1) // self.ae_rounds_per_stage

    def validate(self) -> None:
        _one_of("model", self.model, MODELS)
        _one_of("optimizer", self.optimizer, OPTIMIZERS)
        _one_of("device", self.device, DEVICES)
        _one_of("partitioning", self.partitioning, tuple(PARTITIONERS))
        _one_of("strategy", self.strategy, tuple(STRATEGIES))
        _one_of("dp-clipping", self.dp_clipping, DP_CLIPPING)
        _one_of("tracking", self.tracking, TRACKERS)
        if self.tracking_uri:
            check_tracking_uri(self.tracking_uri, "tracking-uri")
        self._validate_server_side()
        for key in ("num-server-rounds", "local-epochs", "batch-size", "min-available-nodes", "central-epochs"):
            value = getattr(self, key.replace("-", "_"))
            if value < 1:
                raise ConfigError(f"{key}={value} is not allowed: use a whole number >= 1.")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning-rate={self.learning_rate} is not allowed: use a number > 0.")
        if not 0 < self.learning_rate_decay <= 1:
            raise ConfigError(
                f"learning-rate-decay={self.learning_rate_decay} is not allowed: use 0 < learning-rate-decay <= 1 "
                "(1: no decay; 0.99: the nodes' learning rate shrinks by 1% every round)."
            )
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum={self.momentum} is not allowed: use 0 <= momentum < 1.")
        if self.max_grad_norm < 0:
            raise ConfigError(f"max-grad-norm={self.max_grad_norm} is not allowed: use 0 (off) or a number > 0.")
        if not 0 < self.fraction_train <= 1:
            raise ConfigError(f"fraction-train={self.fraction_train} is not allowed: use 0 < fraction-train <= 1.")
        if not 0 <= self.fraction_evaluate <= 1:
            raise ConfigError(
                f"fraction-evaluate={self.fraction_evaluate} is not allowed: use 0 <= fraction-evaluate <= 1 "
                "(0 turns client-side evaluation off)."
            )
        if self.data_dir and not Path(self.data_dir).expanduser().is_absolute():
            raise ConfigError(
                f"data-dir='{self.data_dir}' is a relative path: give an absolute one (or start it with ~), "
                "because the ServerApp and the ClientApps each run in their own Flower-managed working folder."
            )
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed={self.seed} is not allowed: use a whole number from 0 to 4294967295.")
        if self.run_name and (
            self.run_name in (".", "..") or any(c in self.run_name for c in "/\\\0") or self.run_name.startswith("~")
        ):
            raise ConfigError(
                f"run-name='{self.run_name}' is not allowed: give a plain folder name (no '/', '\\', '..' or '~'); "
                "the folder is created inside output-dir."
            )
        if self.num_shards < 1:
            raise ConfigError(f"num-shards={self.num_shards} is not allowed: use a whole number >= 1.")
        if self.shards_per_client < 0:
            raise ConfigError(
                f"shards-per-client={self.shards_per_client} is not allowed: use 0 (num-shards / nodes) or more."
            )
        if not self.dirichlet_alpha > 0:
            raise ConfigError(
                f"dirichlet-alpha={self.dirichlet_alpha} is not allowed: use a number > 0 "
                "(0.1: each node sees few digits; 100: close to IID)."
            )
        if self.min_train_replies < 1:
            raise ConfigError(f"min-train-replies={self.min_train_replies} is not allowed: use a whole number >= 1.")
        if not 0 < self.round_timeout < float("inf"):
            raise ConfigError(f"round-timeout={self.round_timeout} is not allowed: use a number of seconds > 0.")
        if self.round_retries < 0:
            raise ConfigError(f"round-retries={self.round_retries} is not allowed: use 0 (no retry) or more.")
        if self.max_examples_per_node < 0:
            raise ConfigError(
                f"max-examples-per-node={self.max_examples_per_node} is not allowed: use 0 (no cap) or a whole "
                "number of examples."
            )
        if self.resume_from and not Path(self.resume_from).expanduser().is_absolute():
            raise ConfigError(
                f"resume-from='{self.resume_from}' is a relative path: give the absolute path of the run folder "
                "to continue (the ServerApp runs in a Flower-managed working folder)."
            )
        if self.fault_injection:
            check_faults(self.fault_injection, self.model)  # test-only: refused unless explicitly enabled
        if self.samples_per_class < 0:
            raise ConfigError(
                f"samples-per-class={self.samples_per_class} is not allowed: use 0 (as many as possible) or more."
            )
        sizes = self.ae_hidden_sizes
        if not sizes:
            raise ConfigError(
                f"ae-hidden='{self.ae_hidden}' gives the autoencoder no hidden layers: a stacked autoencoder "
                "needs at least one width between 784 and the code, e.g. '500,250'."
            )
        if not self.ae_code_size >= 1 or self.ae_code_size >= 784:
            raise ConfigError(
                f"ae-code-size={self.ae_code_size} is not allowed: the code must be smaller than "
                "the 784 input pixels and at least 1."
            )
        widths = (784, *sizes, self.ae_code_size)
        if any(b > a for a, b in itertools.pairwise(widths)):
            raise ConfigError(
                f"ae-hidden='{self.ae_hidden}' with ae-code-size={self.ae_code_size} does not narrow "
                f"from 784 to the code ({' > '.join(map(str, widths))}): use widths that shrink."
            )
        self._validate_pretraining()

    def _validate_server_side(self) -> None:
        if self.server_learning_rate < 0:
            raise ConfigError(
                f"server-learning-rate={self.server_learning_rate} is not allowed: use 0 (the strategy's default) "
                "or a number > 0."
            )
        if not 0 <= self.server_momentum < 1:
            raise ConfigError(f"server-momentum={self.server_momentum} is not allowed: use 0 <= server-momentum < 1.")
        if self.proximal_mu < 0:
            raise ConfigError(f"proximal-mu={self.proximal_mu} is not allowed: use 0 or a number > 0.")
        for name in STRATEGY_ONLY_FIELDS:
            owners = [s.name for s in strategies_reading(name)]
            value = getattr(self, name)
            if value and self.strategy not in owners:
                named = " or ".join(f"'{o}'" for o in owners)
                raise ConfigError(
                    f"{knob_key(name)}={value} applies to strategy={named} only: set it to 0 "
                    f"for strategy='{self.strategy}', or choose strategy={named}."
                )
        if not 0 <= self.trim_beta < 0.5:
            raise ConfigError(
                f"trim-beta={self.trim_beta} is not allowed: use 0 <= trim-beta < 0.5 (the share of the "
                "smallest and of the largest values cut from each weight's mean; 0 = Flower's default 0.2)."
            )
        if self.num_malicious_nodes < 0 or self.krum_select < 0:
            raise ConfigError(
                f"num-malicious-nodes={self.num_malicious_nodes}, krum-select={self.krum_select}: both must be "
                "whole numbers >= 0."
            )
        if self.update_screen < 0 or 0 < self.update_screen <= 1:
            raise ConfigError(
                f"update-screen={self.update_screen} is not allowed: use 0 (off) or a factor > 1 (e.g. 3: drop "
                "an update more than 3 times as long as the round's median update)."
            )
        if self.dp_noise_multiplier < 0 or self.dp_clipping_norm < 0:
            raise ConfigError(
                f"dp-noise-multiplier={self.dp_noise_multiplier}, dp-clipping-norm={self.dp_clipping_norm}: "
                "both must be >= 0 (0 and 0 = no differential privacy)."
            )
        if self.dp_noise_multiplier > 0 and self.dp_clipping_norm == 0:
            raise ConfigError(
                f"dp-noise-multiplier={self.dp_noise_multiplier} needs dp-clipping-norm > 0: the noise is scaled "
                "to the norm each node's update is clipped to (e.g. dp-clipping-norm=1.0)."
            )
        if self.dp_clipping == "client" and self.dp_clipping_norm == 0:
            raise ConfigError(
                "dp-clipping='client' needs dp-clipping-norm > 0: it says where each node's update is clipped "
                "to that norm (dp-clipping-norm=0 turns differential privacy off)."
            )

    @property
    def differential_privacy(self) -> bool:
        """Fixed clipping (and noise, when the multiplier is > 0) is on, on the side ``dp-clipping`` says."""
        return self.dp_clipping_norm > 0

    @property
    def clips_on_nodes(self) -> bool:
        """Each node clips its own update before sending it (``dp-clipping='client'``)."""
        return self.differential_privacy and self.dp_clipping == "client"

    def _validate_pretraining(self) -> None:
        rounds = self.ae_rounds_per_stage
        if rounds == 0:
            return
        if rounds < 0:
            raise ConfigError(f"ae-pretrain-rounds={rounds} is not allowed: use 0 (off) or a whole number >= 1.")
        if self.model != "autoencoder":
            raise ConfigError(
                f"ae-pretrain-rounds={rounds} applies to model='autoencoder' only: "
                f"set it to 0 for model='{self.model}'."
            )
        needed = self.ae_pretraining_rounds_total
        if self.num_server_rounds <= needed:
            raise ConfigError(
                f"ae-pretrain-rounds={rounds} with {self.ae_num_stages} encoder/decoder pairs takes {needed} "
                f"rounds, but num-server-rounds={self.num_server_rounds} leaves none to fine-tune the whole "
                f"stack: use num-server-rounds > {needed} or fewer pretraining rounds."
            )


def _parse_sizes(text: str) -> tuple[int, ...]:
    """``"500,250"`` -> ``(500, 250)``; ``""`` -> ``()`` (refused by ``validate``)."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        sizes = tuple(int(p) for p in parts)
    except ValueError:
        raise ConfigError(
            f"ae-hidden='{text}' is not allowed: give comma-separated layer widths, e.g. '500,250'."
        ) from None
    if any(s < 1 for s in sizes):
        raise ConfigError(f"ae-hidden='{text}' is not allowed: every width must be >= 1.")
    return sizes


def check_tracking_uri(uri: str, source: str) -> None:
    """Refuse, before round 1, a tracking URI that MLflow could never use, naming where it came
    from (the knob or MLFLOW_TRACKING_URI). One that is merely unreachable only turns tracking off."""
    fix = (
        "use http(s)://HOST:PORT of an MLflow server, sqlite:////ABSOLUTE/PATH/mlflow.db, another database "
        "URI, or tracking-uri='' for a local store in output-dir"
    )
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 (a port that is not a number raises here)
    except ValueError as exc:
        raise ConfigError(f"{source}='{uri}' cannot be parsed as a URI ({exc}): {fix}.") from None
    shown = uri.replace(parts.password, "***") if parts.password else uri  # a log line is no place for it
    scheme = "databricks" if uri == "databricks" else parts.scheme.split("+")[0].lower()
    if scheme in ("", "file"):
        raise ConfigError(f"{source}='{shown}' is a folder, MLflow's old file store, which MLflow 3 refuses: {fix}.")
    if scheme not in TRACKING_SCHEMES:
        raise ConfigError(f"{source}='{shown}' has an unknown scheme '{parts.scheme}': {fix}.")
    if scheme in ("http", "https") and not parts.hostname:
        raise ConfigError(f"{source}='{shown}' names no host: {fix}.")
    if scheme == "sqlite" and not parts.path.startswith("//"):
        raise ConfigError(
            f"{source}='{shown}' is a relative path, taken from the ServerApp's Flower-managed working folder: "
            "give an absolute one, sqlite:////ABSOLUTE/PATH/mlflow.db (four slashes)."
        )
    if source == "tracking-uri" and parts.password:
        raise ConfigError(
            f"{source} holds a password, and every knob is written to config.json: leave it out and set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_URI) in the ServerApp's "
            "environment instead."
        )


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}='{value}' is unknown: choose one of {', '.join(allowed)}.")


def _coerce(key: str, value: Any, kind: type) -> Any:
    """Accept what TOML gives (``3`` for a float knob, ``3.0`` for an int one)."""
    if kind is bool or isinstance(value, bool):
        if isinstance(value, bool) and kind is bool:
            return value
        raise ConfigError(f"{key}={value!r} is not allowed: expected a {kind.__name__}.")
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int):
            return value
    elif kind is float and isinstance(value, (int, float)):
        return float(value)
    elif kind is str and isinstance(value, str):
        return value
    raise ConfigError(f"{key}={value!r} is not allowed: expected a {kind.__name__}.")
