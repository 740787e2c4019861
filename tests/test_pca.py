"""PCA, the autoencoder's linear baseline."""

import numpy as np
import pytest

from task.pca import PCA


def test_pca_reconstructs_better_with_more_components(mnist):
    x = mnist.train_images[:3000].reshape(3000, -1).astype(np.float32) / 255
    errors = [PCA.fit(x, k).mse(x) for k in (5, 30, 100)]
    assert errors[0] > errors[1] > errors[2] > 0
    pca = PCA.fit(x, 30)
    assert np.allclose(pca.components @ pca.components.T, np.eye(30), atol=1e-4)
    with pytest.raises(ValueError, match="between 1 and 783"):
        PCA.fit(x, 784)


def test_pca_matches_numpy_svd(mnist):
    """The covariance eigenvectors span the same subspace as SVD's right singular vectors."""
    x = mnist.train_images[:500].reshape(500, -1).astype(np.float64) / 255
    pca = PCA.fit(x, 10)
    _, _, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    projector = lambda basis: basis.T @ basis  # noqa: E731
    assert np.allclose(projector(pca.components.astype(np.float64)), projector(vt[:10]), atol=1e-4)
