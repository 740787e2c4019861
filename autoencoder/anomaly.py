"""Anomaly scores from reconstruction error, and how well they separate.

An autoencoder trained on digits reconstructs digits well and anything else
badly, so its per-image reconstruction error is an anomaly score. The check:
clean test digits against corrupted copies of other test digits, summarized by
the ROC AUC (1.0 = every corrupted image scores above every clean one).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from task.models import Autoencoder


def _noise(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(x + rng.normal(0.0, 0.5, x.shape), 0, 1).astype(np.float32)


def _inverted(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return (1.0 - x).astype(np.float32)


def _shifted(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Moved 8 pixels right and down: still a digit, but not where MNIST puts them."""
    images = x.reshape(-1, 28, 28)
    out = np.zeros_like(images)
    out[:, 8:, 8:] = images[:, :-8, :-8]
    return out.reshape(len(x), -1)


def _blank(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.full_like(x, 0.5)


CORRUPTIONS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "noise": _noise,
    "inverted": _inverted,
    "shifted": _shifted,
    "blank": _blank,
}


@torch.no_grad()
def reconstruction_error(model: Autoencoder, x: np.ndarray, batch_size: int = 2000) -> np.ndarray:
    """Mean squared error per pixel of each image's reconstruction."""
    model.eval()
    out = []
    for start in range(0, len(x), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size], dtype=np.float32))
        out.append(((model(batch) - batch) ** 2).mean(1).numpy())
    return np.concatenate(out)


def roc_auc(clean: np.ndarray, anomalous: np.ndarray) -> float:
    """P(score of an anomalous image > score of a clean one), ties counted half (Mann-Whitney U)."""
    scores = np.concatenate([clean, anomalous])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[len(clean) :].sum() - len(anomalous) * (len(anomalous) + 1) / 2
    return float(u / (len(clean) * len(anomalous)))


def anomaly_check(model: Autoencoder, test_images: np.ndarray, count: int, seed: int) -> dict:
    """Score ``count`` clean test digits against ``count`` corrupted copies of other
    test digits, for each corruption; return the AUCs and the score statistics."""
    rng = np.random.default_rng(seed)
    picks = rng.permutation(len(test_images))
    count = min(count, len(test_images) // 2)
    clean, source = test_images[picks[:count]], test_images[picks[count : 2 * count]]
    clean_scores = reconstruction_error(model, clean)
    result = {
        "clean": {
            "images": int(count),
            "mean-score": float(clean_scores.mean()),
            "p99-score": float(np.quantile(clean_scores, 0.99)),
        },
        "corruptions": {},
    }
    all_bad = []
    for name, corrupt in CORRUPTIONS.items():
        scores = reconstruction_error(model, corrupt(source, rng))
        all_bad.append(scores)
        result["corruptions"][name] = {"roc-auc": roc_auc(clean_scores, scores), "mean-score": float(scores.mean())}
    result["roc-auc-all"] = roc_auc(clean_scores, np.concatenate(all_bad))
    return result
