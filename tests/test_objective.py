"""Each model kind's loss and headline metric, defined once."""

import math

import pytest
import torch

from task.config import Settings
from task.objective import CLASSIFICATION, RECONSTRUCTION, objective_for


def test_the_settings_name_the_objective():
    assert Settings().objective is CLASSIFICATION
    assert Settings(model="autoencoder").objective is RECONSTRUCTION
    assert objective_for("mlp").key == "accuracy" and objective_for("autoencoder").key == "mse"


def test_classification_sums():
    out = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    y = torch.tensor([0, 1, 1])
    loss, correct = CLASSIFICATION.batch_sums(out, torch.zeros(3, 4), y)
    assert correct == 2 and loss == pytest.approx(2 * math.log(1 + math.exp(-2)) + math.log(1 + math.exp(2)), rel=1e-5)


def test_reconstruction_sums_are_the_per_pixel_error_summed_over_images():
    x = torch.zeros(2, 4)
    out = torch.tensor([[1.0, 0, 0, 0], [1.0, 1.0, 0, 0]])
    loss, mse = RECONSTRUCTION.batch_sums(out, x, torch.zeros(2))
    assert loss == mse == pytest.approx(0.25 + 0.5)
    assert float(RECONSTRUCTION.loss(out, x, None)) == pytest.approx(3 / 8)


def test_formats_and_comparisons_follow_the_direction_of_better():
    assert CLASSIFICATION.format(0.9731) == "97.31%" and RECONSTRUCTION.format(0.0078512) == "0.00785"
    assert (
        CLASSIFICATION.format_gap(0.95, 0.97) == "+2.00 points" and RECONSTRUCTION.format_gap(0.01, 0.008) == "-0.00200"
    )
    assert CLASSIFICATION.better(0.9, 0.8) and RECONSTRUCTION.better(0.008, 0.009)
    assert CLASSIFICATION.best([0.1, 0.9, 0.5]) == 0.9 and RECONSTRUCTION.best([0.1, 0.01, 0.05]) == 0.01
    assert CLASSIFICATION.reached(0.97) and not CLASSIFICATION.reached(0.969) and not RECONSTRUCTION.reached(0.0)
