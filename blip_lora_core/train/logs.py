"""A run's logs: the step and validation CSVs, their trim on resume, and the loss curve PNG."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_bytes, atomic_write_text
from ..errors import TrainingError

LOG_FIELDS = ["step", "epoch", "loss", "lr", "grad_norm", "tokens", "images_per_s", "elapsed_s"]
EVAL_FIELDS = ["step", "exact_match", "bleu4", "cider", "count"]
TRAIN_LOG, EVAL_LOG = "train_log.csv", "eval_log.csv"


def append_row(path: Path, row: dict, fields: list[str]) -> None:
    """Append one row (a header first when the file is new); TrainingError naming the file on failure."""
    new = not path.exists()
    try:
        with open(path, "a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
    except OSError as error:
        raise TrainingError(f"could not write {path}: {error.strerror or error}") from error


def trim_logs(out: Path, step: int) -> None:
    """On resume: keep the logs' whole rows up to the checkpoint's step (a kill leaves later or torn rows)."""
    for path, fields in ((out / TRAIN_LOG, LOG_FIELDS), (out / EVAL_LOG, EVAL_FIELDS)):
        if not path.exists():
            continue
        rows = list(csv.reader(path.read_text(encoding="utf-8", errors="replace").replace("\0", "").splitlines()))
        kept = [r for r in rows[1:] if len(r) == len(fields) and r[0].isdigit() and int(r[0]) <= step]
        buffer = io.StringIO()
        csv.writer(buffer).writerows([fields, *kept])
        atomic_write_text(path, buffer.getvalue())


def plot_loss(csv_path: Path, png_path: Path) -> None:
    """Loss per step (and its moving average) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    steps = [int(r["step"]) for r in rows]
    losses = np.array([float(r["loss"]) for r in rows])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, losses, alpha=0.4, label="loss")
    if len(losses) >= 10:
        window = max(len(losses) // 20, 5)
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1:], smooth, label=f"mean of {window}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("token cross-entropy")
    ax.legend()
    fig.tight_layout()
    image = io.BytesIO()
    try:
        fig.savefig(image, format="png", dpi=100)
    finally:
        plt.close(fig)
    atomic_write_bytes(png_path, image.getvalue())
