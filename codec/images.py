"""Digits as pictures: rows of 28x28 images drawn into one PNG."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np


def grid_png(rows: Sequence[np.ndarray], labels: Sequence[str], title: str = "") -> bytes:
    """One row per array (``[n, 784]`` or ``[n, 28, 28]``, pixels in [0, 1]), labelled on the left."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [np.asarray(r, dtype=np.float32).reshape(len(r), 28, 28) for r in rows]
    cols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(0.9 * cols + 1.2, 0.95 * len(rows) + 0.4), squeeze=False)
    for i, (row, label) in enumerate(zip(rows, labels)):
        for j in range(cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j < len(row):
                ax.imshow(np.clip(row[j], 0, 1), cmap="gray", vmin=0, vmax=1)
        axes[i][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
