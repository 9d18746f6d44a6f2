"""Train the `iris` example model: multinomial logistic regression in plain numpy.

Reads examples/iris/iris.csv (Fisher's Iris data, see examples/iris/README.md), standardises the
four features, fits softmax regression by full-batch gradient descent on a fixed 80/20 split and
writes examples/iris/iris.npz (mean, scale, weights, bias, class names). Deterministic: the same
CSV gives the same weights. Run: python examples/train_iris.py [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt

HERE = Path(__file__).resolve().parent / "iris"


def read_iris(path: Path) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], list[str]]:
    # The first line is scikit-learn's header: rows, features, then the class names.
    with path.open() as f:
        header = f.readline().strip().split(",")
        rows = np.loadtxt(f, delimiter=",")
    classes = header[2:]
    if rows.shape != (int(header[0]), int(header[1]) + 1):
        raise ValueError(
            f"{path}: expected {header[0]} rows of {int(header[1]) + 1} columns, got {rows.shape}"
        )
    return rows[:, :4], rows[:, 4].astype(np.int64), classes


def softmax(z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    out: npt.NDArray[np.float64] = e / e.sum(axis=1, keepdims=True)
    return out


def fit(
    x: npt.NDArray[np.float64],
    y: npt.NDArray[np.int64],
    classes: int,
    *,
    steps: int = 3000,
    lr: float = 0.5,
    l2: float = 1e-3,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    w = np.zeros((x.shape[1], classes))
    b = np.zeros(classes)
    onehot = np.eye(classes)[y]
    for _ in range(steps):
        grad = (softmax(x @ w + b) - onehot) / len(x)
        w -= lr * (x.T @ grad + l2 * w)
        b -= lr * grad.sum(axis=0)
    return w, b


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=HERE / "iris.csv")
    parser.add_argument("--out", type=Path, default=HERE / "iris.npz")
    args = parser.parse_args(argv)

    x, y, classes = read_iris(args.csv)
    order = np.random.default_rng(1936).permutation(len(x))
    cut = int(0.8 * len(x))
    train, test = order[:cut], order[cut:]
    mean, scale = x[train].mean(axis=0), x[train].std(axis=0)
    w, b = fit((x[train] - mean) / scale, y[train], len(classes))

    def accuracy(idx: npt.NDArray[np.int64]) -> float:
        pred = np.argmax(((x[idx] - mean) / scale) @ w + b, axis=1)
        return float((pred == y[idx]).mean())

    np.savez(
        args.out,
        mean=mean.astype(np.float32),
        scale=scale.astype(np.float32),
        weights=w.astype(np.float32),
        bias=b.astype(np.float32),
        classes=np.array(classes),
    )
    print(
        json.dumps(
            {
                "out": str(args.out),
                "train_accuracy": accuracy(train),
                "test_accuracy": accuracy(test),
                "train_rows": len(train),
                "test_rows": len(test),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
