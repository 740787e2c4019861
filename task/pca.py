"""PCA with a fixed number of components: the linear baseline for the autoencoder.

A linear "autoencoder" with the best possible reconstruction for its code size
(Eckart-Young), fitted on the training images. The components are the top
eigenvectors of the 784 x 784 covariance (``numpy.linalg.eigh``): the same
subspace as the right singular vectors of an SVD of the centred images, at a
fraction of the cost for 60,000 images. Hinton &
Salakhutdinov (2006) compare their 30-value code with 30-component PCA.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PCA:
    mean: np.ndarray  # [784]
    components: np.ndarray  # [k, 784], orthonormal rows

    @classmethod
    def fit(cls, x: np.ndarray, k: int) -> PCA:
        """Fit on ``x`` ([N, D] pixels in [0, 1]); ``k`` must be below ``D``."""
        if not 0 < k < x.shape[1]:
            raise ValueError(f"PCA code size {k} must be between 1 and {x.shape[1] - 1}.")
        x = x.astype(np.float64)
        mean = x.mean(0)
        # The D x D covariance is small (784 x 784); its eigenvectors are the SVD's right vectors.
        cov = (x - mean).T @ (x - mean)
        values, vectors = np.linalg.eigh(cov)
        top = vectors[:, np.argsort(values)[::-1][:k]].T
        return cls(mean.astype(np.float32), top.astype(np.float32))

    def encode(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) @ self.components.T

    def decode(self, code: np.ndarray) -> np.ndarray:
        return code @ self.components + self.mean

    def mse(self, x: np.ndarray) -> float:
        """Mean squared error per pixel of the reconstruction of ``x``."""
        return float(np.mean((self.decode(self.encode(x)) - x) ** 2))
