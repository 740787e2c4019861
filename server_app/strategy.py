"""Flower's own strategy for a run's knobs: what averages the replies a round kept.

FedAvg by default, or another of those in ``task/strategies.py``; optionally wrapped in one of
Flower's fixed-clipping differential-privacy wrappers (server-side clipping, or client-side
clipping where the nodes clip with ``fixedclipping_mod`` and the server only adds the noise).
The strategy configures the messages and averages; which nodes are asked and which replies are
trusted is decided in :mod:`server_app.rounds` and :mod:`server_app.checks`.
"""

from __future__ import annotations

from typing import Any

from flwr.serverapp import strategy as flower_strategies
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    FedProx,
    Strategy,
)

from server_app.checks import WEIGHTED_BY
from task.config import Settings
from task.errors import ConfigError
from task.flower_compat import STRATEGY_STATE, WRAPPED_STRATEGY
from task.strategies import STRATEGIES, replies_needed

# Flower's class of each strategy in task/strategies.py (all FedAvg or built on it).
STRATEGY_CLASSES: dict[str, type[FedAvg]] = {
    name: getattr(flower_strategies, spec.flower_class) for name, spec in STRATEGIES.items()
}
# Strategies whose aggregate_train is exactly Flower's weighted mean of the replies (no server
# state, no wrapper): only these are averaged as replies arrive (see RunningMean).
STREAMED: tuple[type[Strategy], ...] = (FedAvg, FedProx)
# Flower's wrapper for each value of the dp-clipping knob: who clips each node's update.
DP_WRAPPERS: dict[str, type[Strategy]] = {
    "server": DifferentialPrivacyServerSideFixedClipping,
    "client": DifferentialPrivacyClientSideFixedClipping,
}


def build_strategy(settings: Settings, num_sampled: int) -> Strategy:
    """Flower's own strategy for ``settings.strategy``, with the run's server-side knobs.

    Nodes are sampled by partition id before the strategy sees them
    (:func:`server_app.rounds.sample_partitions`), so the
    strategy is told to take every node it is shown."""
    common: dict[str, Any] = dict(
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=1,
        min_evaluate_nodes=1,
        min_available_nodes=1,
        weighted_by_key=WEIGHTED_BY,
    )
    spec = STRATEGIES[settings.strategy]
    # a knob at 0 leaves Flower's default (trim-beta 0: Flower's 0.2)
    common.update({keyword: value for keyword, field in spec.knobs if (value := getattr(settings, field))})
    if spec.name == "multikrum" and not settings.krum_select:
        common["num_nodes_to_select"] = max(num_sampled - settings.num_malicious_nodes, 1)
    if spec.server_lr_arg and settings.server_learning_rate:  # 0: Flower's own default
        common[spec.server_lr_arg] = settings.server_learning_rate
    if spec.client_lr_arg:
        common[spec.client_lr_arg] = settings.learning_rate
    strategy: Strategy = STRATEGY_CLASSES[spec.name](**common)
    if settings.differential_privacy:
        # "client": the wrapper only tells the nodes the norm and adds the noise; the nodes clip.
        strategy = DP_WRAPPERS[settings.dp_clipping](
            strategy, settings.dp_noise_multiplier, settings.dp_clipping_norm, num_sampled
        )
    return strategy


def carried_state(strategy: Strategy) -> dict[str, Any]:
    """What the strategy carries from round to round (nothing for FedAvg; the server momentum
    of FedAvgM, the moments of FedAdam/FedYogi/FedAdagrad), read inside a DP wrapper."""
    inner = getattr(strategy, WRAPPED_STRATEGY, strategy)
    return {k: v for k, v in vars(inner).items() if k in STRATEGY_STATE}


def restore_carried(strategy: Strategy, state: dict[str, Any]) -> None:
    """Puts back what :func:`carried_state` read (other keys are ignored)."""
    inner = getattr(strategy, WRAPPED_STRATEGY, strategy)
    for key, value in state.items():
        if key in STRATEGY_STATE:
            setattr(inner, key, value)


def min_replies(settings: Settings) -> int:
    """Good training replies a round needs: ``min-train-replies``, or more where the strategy
    cannot aggregate fewer (Krum 2f + 3, Bulyan 4f + 3, f = ``num-malicious-nodes``)."""
    needed = replies_needed(STRATEGIES[settings.strategy], settings.num_malicious_nodes)
    return max(settings.min_train_replies, needed)


def check_fits(settings: Settings, num_nodes: int) -> None:
    """Refuses, before round 1, a strategy that these nodes can never give enough replies."""
    spec = STRATEGIES[settings.strategy]
    needed = replies_needed(spec, settings.num_malicious_nodes)
    if needed > num_nodes:
        a, b = spec.min_replies or (0, 1)
        fits = max((num_nodes - b) // a, 0) if a else 0
        raise ConfigError(
            f"strategy='{spec.name}' with num-malicious-nodes={settings.num_malicious_nodes} needs {needed} good "
            f"training replies a round ({a} x {settings.num_malicious_nodes} + {b}), but only {num_nodes} nodes take "
            f"part: lower num-malicious-nodes to {fits} or fewer, or start more nodes."
        )
