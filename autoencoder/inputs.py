"""Images and codes from the user's files, checked before they reach the model.

Images: a ``.npy`` array of shape ``[N, 28, 28]``, ``[N, 784]`` or ``[28, 28]``
(uint8 0-255, or floats in [0, 1]), or a 28x28 grayscale PNG. Codes: a ``.npy``
array ``[N, code-size]`` as written by ``encode``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from autoencoder.model import InputError

PIXELS = 784


def load_images(path: str | Path) -> np.ndarray:
    """Pixels as float32 ``[N, 784]`` in [0, 1]."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"input {path} does not exist.")
    if path.suffix.lower() == ".png":
        return _png(path)
    if path.suffix.lower() != ".npy":
        raise InputError(f"input {path}: give a .npy array or a .png image.")
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise InputError(f"input {path} is not a readable .npy file ({exc}).") from None
    return to_pixels(array, str(path))


def to_pixels(array: np.ndarray, name: str) -> np.ndarray:
    if array.shape == (28, 28) or array.shape == (PIXELS,):
        array = array.reshape(1, PIXELS)
    if array.ndim == 3 and array.shape[1:] == (28, 28):
        array = array.reshape(len(array), PIXELS)
    if array.ndim != 2 or array.shape[1] != PIXELS or len(array) == 0:
        raise InputError(
            f"{name} has shape {tuple(array.shape)}: MNIST images are 28x28; give [N, 28, 28], [N, 784] or [28, 28]."
        )
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{name} holds {array.dtype} values: give uint8 pixels (0-255) or floats in [0, 1].")
    array = array.astype(np.float32)
    lo, hi = float(array.min()), float(array.max())
    if not np.isfinite(array).all() or lo < 0 or hi > 1:
        raise InputError(
            f"{name} has values from {lo:g} to {hi:g}: float pixels must lie in [0, 1] "
            "(divide 0-255 images by 255, or save them as uint8)."
        )
    return array


def _png(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        image = Image.open(path)
        image.load()
    except Exception as exc:
        raise InputError(f"input {path} is not a readable PNG ({exc}).") from None
    if image.size != (28, 28):
        raise InputError(f"input {path} is {image.size[0]}x{image.size[1]} pixels: MNIST images are 28x28.")
    # MNIST digits are white on black, as the model was trained.
    return np.asarray(image.convert("L"), dtype=np.float32).reshape(1, PIXELS) / 255.0


def load_codes(path: str | Path, code_size: int) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"codes file {path} does not exist.")
    try:
        codes = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise InputError(f"codes file {path} is not a readable .npy file ({exc}).") from None
    if codes.ndim == 1:
        codes = codes.reshape(1, -1)
    if codes.ndim != 2 or codes.shape[1] != code_size or not np.issubdtype(codes.dtype, np.number):
        raise InputError(
            f"codes file {path} has shape {tuple(codes.shape)}: this model decodes [N, {code_size}] codes "
            "(as written by the encode command)."
        )
    return codes.astype(np.float32)
