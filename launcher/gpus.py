"""The NVIDIA GPUs this machine shows to its processes, found without importing torch."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def visible_gpus() -> list[str]:
    """The NVIDIA GPUs this machine shows to its processes, by name, found without
    importing torch: ``nvidia-smi -L``, else the driver's ``/proc/driver/nvidia/gpus``;
    none when ``CUDA_VISIBLE_DEVICES`` hides them all (empty or ``-1``)."""
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and hidden.strip() in ("", "-1"):
        return []
    names: list[str] = []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
        if out.returncode == 0:
            names = [
                line.split(" (UUID")[0].split(": ", 1)[-1]
                for line in out.stdout.splitlines()
                if line.startswith("GPU ")
            ]
    except (OSError, subprocess.TimeoutExpired):
        gpus = Path("/proc/driver/nvidia/gpus")
        names = [f"NVIDIA GPU {d.name}" for d in sorted(gpus.iterdir())] if gpus.is_dir() else []
    if hidden is not None and names:
        keep = [x.strip() for x in hidden.split(",") if x.strip()]
        names = [name for i, name in enumerate(names) if str(i) in keep] or names[: len(keep)]
    return names
