"""The pinned requirements of the image, for one PyTorch variant.

``deploy/requirements.txt`` (written by ``deploy/lock.sh``) pins PyPI's torch, the CUDA
build, with the NVIDIA libraries it pulls in. The CPU variant is the same list without
those libraries, with torch and torchvision pinned to PyTorch's ``+cpu`` builds:

    python3 deploy/requirements.py cpu deploy/requirements.txt   # -> stdout
    python3 deploy/requirements.py cuda deploy/requirements.txt  # unchanged
    python3 deploy/requirements.py missing cuda deploy/wheelhouse deploy/requirements.txt deploy/requirements-build.txt
                                     # the pins that have no wheel in the folder yet (exit 1 if any)

Standard library only: it also runs inside the image build, before anything is installed.
"""

from __future__ import annotations

import re
import sys

VARIANTS = ("cuda", "cpu")
# Packages only the CUDA build of torch needs (PyPI's torch depends on them on Linux).
CUDA_ONLY = re.compile(r"^(nvidia-|cuda-|triton$)")
CPU_LOCAL_VERSION = {"torch", "torchvision"}


def pins(text: str) -> list[tuple[str, str]]:
    """``[(name, version)]`` of ``name==version`` lines; comments and blanks skipped."""
    out = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not name.strip() or not version.strip():
            raise ValueError(f"not an exact pin: {raw!r}")
        out.append((name.strip().lower().replace("_", "-"), version.strip()))
    return out


def for_variant(text: str, variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, not {variant!r}")
    lines = []
    for name, version in pins(text):
        if variant == "cpu":
            if CUDA_ONLY.match(name):
                continue
            if name in CPU_LOCAL_VERSION and "+" not in version:
                version += "+cpu"
        lines.append(f"{name}=={version}\n")
    return "".join(lines)


def wheel_pin(filename: str) -> tuple[str, str] | None:
    """``("torch", "2.14.1")`` for ``torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64.whl``."""
    if not filename.endswith(".whl") or filename.count("-") < 4:
        return None
    name, version = filename.split("-")[:2]
    return name.lower().replace("_", "-").replace(".", "-"), version


def missing(variant: str, folder: str, requirement_files: list[str]) -> list[str]:
    import os

    have = {pin for f in (os.listdir(folder) if os.path.isdir(folder) else []) if (pin := wheel_pin(f))}
    wanted = []
    for path in requirement_files:
        with open(path, encoding="utf-8") as fh:
            wanted += pins(for_variant(fh.read(), variant))
    return [f"{n}=={v}" for n, v in wanted if (n.replace(".", "-"), v) not in have]


def main(argv: list[str]) -> int:
    if argv[:1] == ["missing"] and len(argv) >= 4:
        absent = missing(argv[1], argv[2], argv[3:])
        print("\n".join(absent))
        return 1 if absent else 0
    if len(argv) != 2:
        print("usage: requirements.py cuda|cpu REQUIREMENTS_FILE | missing cuda|cpu FOLDER FILE...", file=sys.stderr)
        return 2
    variant, path = argv
    try:
        with open(path, encoding="utf-8") as fh:
            sys.stdout.write(for_variant(fh.read(), variant))
    except (OSError, ValueError) as exc:
        print(f"requirements.py: {path}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
