"""The privacy spent by a run with differential privacy, round by round."""

from __future__ import annotations

from typing import Any

from flwr.serverapp import GaussianPrivacyEvent, NeighboringRelation, PrivacyConfig, SamplingMethod

from task.config import Settings

DP_DELTA = 1e-5  # the delta at which the privacy spent is reported


class PrivacyLedger:
    """The privacy spent so far, with Flower's RDP accountant (Google's dp-accounting):
    client-level (add or remove one node's data), one Gaussian release per round, with
    no credit taken for sampling (an upper bound). Only rounds whose nodes weighed the
    same are accountable: FedAvg's weighting by examples otherwise changes the sensitivity."""

    def __init__(self, settings: Settings, population: int) -> None:
        from flwr.serverapp import RdpAccountant  # Flower imports it (and dp-accounting) only when asked

        self.settings = settings
        self.population = population
        self.accountant = RdpAccountant(
            PrivacyConfig(DP_DELTA, population, NeighboringRelation.ADD_OR_REMOVE_ONE, SamplingMethod.NO_AMPLIFICATION)
        )
        self.accountable = True

    def release(self, averaged: int, noised_for: int, uniform: bool) -> dict[str, Any]:
        """Account one round: ``averaged`` replies went into the mean, with noise that Flower's
        wrapper sized for ``noised_for`` nodes (its ``num_sampled_clients``, fixed when it was
        built). With fewer replies than that (some dropped) the noise is smaller than the mean's
        sensitivity needs: the round is accounted with the multiplier it really had,
        ``z x averaged / noised_for``."""
        z = self.settings.dp_noise_multiplier
        self.accountable = self.accountable and uniform and z > 0
        if not self.accountable:
            why = "no noise" if z == 0 else "nodes of unequal weight"
            return {"epsilon": None, "delta": DP_DELTA, "why-not": why}
        effective = z * averaged / noised_for
        self.accountant.compose(GaussianPrivacyEvent(effective, averaged, self.population))
        spent = self.accountant.get_privacy_spent()
        released = {"epsilon": float(spent.epsilon), "delta": DP_DELTA}
        if averaged != noised_for:
            released["noise-multiplier"] = effective
        return released

    def state_dict(self) -> dict[str, Any]:
        return {"accountant": self.accountant.state_dict(), "accountable": self.accountable}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.accountant.load_state_dict(state["accountant"])
        self.accountable = state["accountable"]
