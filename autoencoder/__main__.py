"""Use a federated autoencoder run's global model.

    python -m autoencoder encode  RUN_DIR [--input IMAGES] [--out codes.npy]
    python -m autoencoder decode  RUN_DIR CODES.npy [--out images.npy] [--png grid.png]
    python -m autoencoder grid    RUN_DIR [--input IMAGES] [--count 10] [--out reconstructions.png]
    python -m autoencoder anomaly RUN_DIR [--count 1000] [--input IMAGES] [--out anomaly.json]

IMAGES is a .npy array ([N, 28, 28], [N, 784] or [28, 28]; uint8 or floats in
[0, 1]) or a 28x28 grayscale PNG; without it the 10,000 MNIST test images are
used. Outputs go into RUN_DIR unless --out says otherwise; each is written to a
temporary name and renamed, so an existing file is replaced whole or not at all.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import torch

import run_folder as rf
from autoencoder.anomaly import anomaly_check, reconstruction_error
from autoencoder.inputs import load_codes, load_images
from autoencoder.model import load_autoencoder
from report.figures import grid_png
from task.errors import run_cli
from task.shards import server_test_set


def _images(args, settings) -> tuple[np.ndarray, str]:
    if args.input:
        return load_images(args.input), str(args.input)
    return server_test_set(settings).x.numpy(), "the 10,000 MNIST test images"


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def encode(args) -> str:
    model, settings, folder = load_autoencoder(args.run_dir)
    x, source = _images(args, settings)
    with torch.no_grad():
        codes = model.encode(torch.from_numpy(x)).numpy()
    out = folder.write_file(rf.CODES, _npy_bytes(codes), at=args.out)
    return f"Encoded {len(codes)} image(s) from {source} to {codes.shape[1]}-value codes: {out}"


def decode(args) -> str:
    model, settings, folder = load_autoencoder(args.run_dir)
    codes = load_codes(args.codes, settings.ae_code_size)
    with torch.no_grad():
        images = model.decode(torch.from_numpy(codes)).numpy().reshape(-1, 28, 28)
    out = folder.write_file(rf.DECODED, _npy_bytes(images), at=args.out)
    lines = [f"Decoded {len(images)} code(s) to 28x28 images in [0, 1]: {out}"]
    if args.png:
        folder.write_file(rf.RECONSTRUCTIONS, grid_png([images[:10]], ["decoded"]), at=args.png)
        lines.append(f"Picture of the first {min(10, len(images))}: {args.png}")
    return "\n".join(lines)


def grid(args) -> str:
    model, settings, folder = load_autoencoder(args.run_dir)
    x, source = _images(args, settings)
    if args.input is None:  # the first test image of each digit, then the next ones in order
        labels = server_test_set(settings).y.numpy()
        firsts = [int(np.flatnonzero(labels == d)[0]) for d in range(10)]
        rest = np.setdiff1d(np.arange(len(x)), firsts)[: max(0, args.count - 10)]
        x = x[np.concatenate([firsts, rest]).astype(int)]
    x = x[: args.count]
    with torch.no_grad():
        recon = model(torch.from_numpy(x)).numpy()
    errors = reconstruction_error(model, x)
    png = grid_png(
        [x, recon],
        ["original", "reconstructed"],
        f"{args.run_dir.name}: mean squared error per pixel {errors.mean():.5f} on these {len(x)}",
    )
    out = folder.write_file(rf.RECONSTRUCTIONS, png, at=args.out)
    return f"{len(x)} image(s) from {source} and their reconstructions: {out}"


def anomaly(args) -> str:
    model, settings, folder = load_autoencoder(args.run_dir)
    test = server_test_set(settings).x.numpy()
    result = anomaly_check(model, test, args.count, settings.seed)
    lines = [
        f"Anomaly scores (reconstruction MSE per pixel) of {result['clean']['images']} clean test digits "
        f"(mean {result['clean']['mean-score']:.5f}, 99th percentile {result['clean']['p99-score']:.5f}) "
        "against corrupted copies of other test digits:",
        *[
            f"  {name:9s} ROC AUC {c['roc-auc']:.4f}  (mean score {c['mean-score']:.5f})"
            for name, c in result["corruptions"].items()
        ],
        f"  all       ROC AUC {result['roc-auc-all']:.4f}",
    ]
    if args.input:
        scores = reconstruction_error(model, load_images(args.input))
        threshold = result["clean"]["p99-score"]
        result["input"] = {"path": str(args.input), "scores": scores.tolist(), "threshold": threshold}
        lines.append(f"{args.input}: {len(scores)} image(s); above the clean 99th percentile ({threshold:.5f}):")
        lines += [
            f"  image {i}: score {s:.5f}{'  ANOMALY' if s > threshold else ''}" for i, s in enumerate(scores[:50])
        ]
    out = folder.write_file(rf.ANOMALY, rf.to_json(result), at=args.out)
    lines.append(f"Written: {out}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m autoencoder", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("encode", help="images -> codes (.npy)")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--input", type=Path)
    p.add_argument("--out", type=Path)
    p.set_defaults(func=encode)
    p = sub.add_parser("decode", help="codes (.npy) -> images (.npy, optional PNG)")
    p.add_argument("run_dir", type=Path)
    p.add_argument("codes", type=Path)
    p.add_argument("--out", type=Path)
    p.add_argument("--png", type=Path)
    p.set_defaults(func=decode)
    p = sub.add_parser("grid", help="PNG of originals above their reconstructions")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--input", type=Path)
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--out", type=Path)
    p.set_defaults(func=grid)
    p = sub.add_parser("anomaly", help="ROC AUC of reconstruction error: clean vs corrupted digits")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--input", type=Path, help="also score these images")
    p.add_argument("--out", type=Path)
    p.set_defaults(func=anomaly)
    args = parser.parse_args(argv)
    if getattr(args, "count", 1) < 1:
        parser.error(f"--count={args.count}: use 1 or more.")
    return run_cli(lambda: print(args.func(args)))


if __name__ == "__main__":
    sys.exit(main())
