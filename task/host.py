"""What a process runs on: the versions of the packages that decide a result, and the machine.

The run manifest (``server_app/records.py``) and the speed benchmark (``benchmarks/perf.py``)
both record these, so that a number can be traced to the software and hardware behind it.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("flwr", "torch", "torchvision", "numpy", "ray", "fedavg-mnist")


def versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Python's version and each package's ("not installed" where it is missing)."""
    found = {"python": platform.python_version()}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def machine() -> dict[str, Any]:
    """The system, host name, CPU model and count, memory, and the GPUs this process sees
    (by name; none when CUDA is hidden from it)."""
    import torch

    cpu = _proc_field("/proc/cpuinfo", "model name") or platform.processor() or platform.machine()
    mem_kb = _proc_field("/proc/meminfo", "MemTotal")
    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    return {
        "system": platform.platform(),
        "host": platform.node(),
        "cpu": cpu,
        "cpu-count": os.cpu_count(),
        "memory-gb": round(int(mem_kb.split()[0]) / 2**20, 1) if mem_kb else None,
        "gpus": gpus,
    }


def _proc_field(path: str, key: str) -> str:
    """The value of the first ``key: value`` line of a /proc file ("" where there is none)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith(key)), "")
