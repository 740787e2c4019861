"""The server-side strategies a run can choose (the ``strategy`` knob), in one table.

Each is one of Flower's own classes in ``flwr.serverapp.strategy``. The settings check
(``task/config.py``), the ServerApp (``server_app/strategy.py``, which builds the class)
and the report (``report/build.py``, which names it) all read this table, so a strategy
is added or changed here only. It names Flower's classes and keywords as text, so the
modules that never talk to Flower do not import it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StrategySpec:
    name: str  # the value of the ``strategy`` knob
    flower_class: str  # its class in flwr.serverapp.strategy
    label: str  # how the report names it
    # (Flower keyword, Settings field): the knobs only this strategy reads; every other
    # strategy refuses them unless they are 0.
    knobs: tuple[tuple[str, str], ...] = ()
    # The Flower keyword that ``server-learning-rate`` sets when it is > 0, and Flower 1.41's
    # default of that keyword (what the server uses when the knob is 0); None: no server step.
    server_lr_arg: str | None = None
    default_server_lr: float | None = None
    # The Flower keyword told the nodes' ``learning-rate`` (FedOpt only logs it; the nodes use the knob).
    client_lr_arg: str | None = None
    # Robust aggregation: good training replies a round needs, as (a, b) for a x f + b with f the
    # ``num-malicious-nodes`` assumed (Krum: 2f + 3, Bulyan: 4f + 3); None: any number will do.
    min_replies: tuple[int, int] | None = None
    # How the strategy treats each reply's example count: whether it weighs the mean (FedAvg and the
    # server optimizers, Krum's kept updates) or plays no part (median, trimmed mean, Bulyan).
    weighs_by_count: bool = True


_FEDOPT = dict(server_lr_arg="eta", client_lr_arg="eta_l")
_TRIM = (("beta", "trim_beta"),)
_MALICIOUS = (("num_malicious_nodes", "num_malicious_nodes"),)
_SELECT = ("num_nodes_to_select", "krum_select")

STRATEGIES: dict[str, StrategySpec] = {
    s.name: s
    for s in (
        StrategySpec("fedavg", "FedAvg", "FedAvg"),
        StrategySpec(
            "fedavgm",
            "FedAvgM",
            "FedAvgM",
            knobs=(("server_momentum", "server_momentum"),),
            server_lr_arg="server_learning_rate",
            default_server_lr=1.0,
        ),
        StrategySpec("fedadam", "FedAdam", "FedAdam", default_server_lr=0.1, **_FEDOPT),
        StrategySpec("fedyogi", "FedYogi", "FedYogi", default_server_lr=0.01, **_FEDOPT),
        StrategySpec("fedadagrad", "FedAdagrad", "FedAdagrad", default_server_lr=0.1, **_FEDOPT),
        StrategySpec("fedprox", "FedProx", "FedProx", knobs=(("proximal_mu", "proximal_mu"),)),
        # Robust aggregation: each needs every reply of a round at once (no running mean).
        StrategySpec("fedmedian", "FedMedian", "FedMedian", weighs_by_count=False),
        StrategySpec("fedtrimmedavg", "FedTrimmedAvg", "FedTrimmedAvg", knobs=_TRIM, weighs_by_count=False),
        StrategySpec("krum", "Krum", "Krum", knobs=_MALICIOUS, min_replies=(2, 3)),
        StrategySpec("multikrum", "MultiKrum", "MultiKrum", knobs=(*_MALICIOUS, _SELECT), min_replies=(2, 3)),
        StrategySpec("bulyan", "Bulyan", "Bulyan", knobs=_MALICIOUS, min_replies=(4, 3), weighs_by_count=False),
    )
}


def strategies_reading(field: str) -> list[StrategySpec]:
    """The strategies that read the Settings field ``field`` (none: every strategy does)."""
    return [s for s in STRATEGIES.values() if field in dict(s.knobs).values()]


def replies_needed(spec: StrategySpec, num_malicious: int) -> int:
    """Good training replies a round needs for ``spec`` to aggregate with ``num_malicious`` assumed."""
    if spec.min_replies is None:
        return 1
    a, b = spec.min_replies
    return a * num_malicious + b


# The Settings fields that belong to some strategies only (server-momentum, proximal-mu, trim-beta, ...).
STRATEGY_ONLY_FIELDS: tuple[str, ...] = tuple(dict.fromkeys(field for s in STRATEGIES.values() for _, field in s.knobs))
