"""The helpers that start and stop Flower's own processes, under the import path they had
before they were split by job (see the list in ``launcher/__init__.py``). New code imports
from the modules themselves; this one only re-exports."""

from launcher import PROJECT_ROOT, FlowerError
from launcher.flower_home import FlowerHome, Terminated, flower_env, flower_home
from launcher.flwr_cli import flwr_run, lines_until, toml_value, wait_for_run, write_toml
from launcher.gpus import visible_gpus
from launcher.processes import descendants, kill_tree, running, stop
from launcher.runtime import free_port, start_superlink, start_supernode, supernode_threads, wait_until_healthy
from launcher.staging import staged_app
from launcher.timings import TIMINGS_ENV, mark

__all__ = [
    "PROJECT_ROOT",
    "TIMINGS_ENV",
    "FlowerError",
    "FlowerHome",
    "Terminated",
    "descendants",
    "flower_env",
    "flower_home",
    "flwr_run",
    "free_port",
    "kill_tree",
    "lines_until",
    "mark",
    "running",
    "staged_app",
    "start_superlink",
    "start_supernode",
    "stop",
    "supernode_threads",
    "toml_value",
    "visible_gpus",
    "wait_for_run",
    "wait_until_healthy",
    "write_toml",
]
