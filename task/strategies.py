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


_FEDOPT = dict(server_lr_arg="eta", client_lr_arg="eta_l")

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
    )
}


def strategy_owning(field: str) -> StrategySpec | None:
    """The strategy that alone reads the Settings field ``field``, if one does."""
    return next((s for s in STRATEGIES.values() if field in dict(s.knobs).values()), None)


# The Settings fields that belong to one strategy (server-momentum, proximal-mu).
STRATEGY_ONLY_FIELDS: tuple[str, ...] = tuple(field for s in STRATEGIES.values() for _, field in s.knobs)
