"""client_app.ray_lean: the Ray of Flower's simulation process starts without its monitor, log
monitor and API server; nowhere else does anything change."""

import sys
import types

import pytest
from ray._private import node, parameter

from client_app import ray_lean


@pytest.fixture
def restored(monkeypatch):
    """Ray's classes put back as they were after the test (install patches them)."""
    monkeypatch.setattr(parameter.RayParams, "__init__", parameter.RayParams.__init__)
    monkeypatch.setattr(node.Node, "start_api_server", node.Node.start_api_server)
    monkeypatch.delenv(ray_lean.DISABLE_ENV, raising=False)
    return monkeypatch


def test_nothing_changes_outside_flowers_simulation_process(restored):
    restored.delitem(sys.modules, ray_lean.VCE_MODULE, raising=False)
    assert ray_lean.install() is False
    assert parameter.RayParams().include_log_monitor is None


def test_in_the_simulation_process_ray_starts_without_the_three(restored):
    started = []

    def start_api_server(self, *, include_dashboard, raise_on_failure):
        started.append(include_dashboard)

    restored.setattr(node.Node, "start_api_server", start_api_server)
    restored.setitem(sys.modules, ray_lean.VCE_MODULE, types.ModuleType(ray_lean.VCE_MODULE))
    assert ray_lean.install() is True
    assert ray_lean.install() is True  # once is enough
    params = parameter.RayParams(include_dashboard=False)
    assert params.no_monitor is True and params.include_log_monitor is False
    node.Node.start_api_server(object(), include_dashboard=False, raise_on_failure=False)
    assert started == []  # no API server without the dashboard
    node.Node.start_api_server(object(), include_dashboard=True, raise_on_failure=True)
    assert started == [True]  # asked for: Ray's own


def test_the_environment_keeps_rays_own_set(restored):
    restored.setitem(sys.modules, ray_lean.VCE_MODULE, types.ModuleType(ray_lean.VCE_MODULE))
    restored.setenv(ray_lean.DISABLE_ENV, "1")
    assert ray_lean.install() is False
    assert parameter.RayParams().include_log_monitor is None
