"""The demo's figures: accuracy, one row per model or file, the table."""

from __future__ import annotations


def accuracy(model, x, y) -> float:
    """Top-1 accuracy of `model` on `(x, y)`."""
    import numpy as np

    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))


def row(label, params, outputs, y, teacher_pred, size=None, latency_ms=None):
    """One model's row: `model`, `params`, `accuracy`, `agreement` with the
    teacher's predictions `teacher_pred`, `size_bytes`, `latency_ms`."""
    import numpy as np

    pred = np.argmax(outputs, -1)
    return {
        "model": label,
        "params": int(params),
        "accuracy": float(np.mean(pred == y)),
        "agreement": float(np.mean(pred == teacher_pred)),
        "size_bytes": size,
        "latency_ms": latency_ms,
    }


def table(rows) -> str:
    """The demo's table: one line per row of `row`."""
    header = (
        f"{'model':<28}{'params':>9}{'file size':>11}{'test accuracy':>15}"
        f"{'agreement w/ teacher':>22}{'latency/image':>15}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        size = f"{r['size_bytes'] / 1024:.1f} KiB" if r["size_bytes"] else "-"
        latency = f"{r['latency_ms'] * 1000:.1f} us" if r["latency_ms"] else "-"
        lines.append(
            f"{r['model']:<28}{r['params']:>9,}{size:>11}{r['accuracy']:>15.2%}"
            f"{r['agreement']:>22.2%}{latency:>15}"
        )
    return "\n".join(lines)
