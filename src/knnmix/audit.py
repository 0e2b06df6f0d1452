"""Ranking labels by how likely they are wrong, from a model's predicted probabilities.

:func:`find_label_issues` is the plug-in API (in the spirit of cleanlab's ``find_label_issues``): give it the
given labels and out-of-sample or end-of-training predicted probabilities; it returns a table ranked most-suspect
first. The clean probability is the posterior of the low-loss component of a two-component GMM on the normalised
per-sample cross-entropy of the *given* label -- the same test knnmix applies during training.
"""

from __future__ import annotations

import csv
import numbers
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from knnmix.errors import KnnmixError, one_line
from knnmix.math import fit_clean_probability, normalise_losses


def find_label_issues(
    labels: np.ndarray, pred_probs: np.ndarray, *, corrected_labels: np.ndarray | None = None, threshold: float = 0.5,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Rank samples by how likely their given label ``labels`` ``(N,)`` int is wrong, from predicted class
    probabilities ``pred_probs`` ``(N, C)`` (rows sum to one).

    ``corrected_labels`` ``(N,)`` int are a method's corrected labels (e.g. ``argmax`` of knnmix's soft targets),
    default ``argmax pred_probs``; a label is an issue when its clean probability is below ``threshold`` and the
    suggestion names another class (a label the model itself ranks first is uncertain, not shown to be wrong: such
    a sample keeps its rank but is not flagged, as in cleanlab).

    Returns a dict of (N,) arrays, ordered most-suspect first: ``index`` (position in ``labels``), ``given_label``,
    ``corrected_label`` (the suggestion), ``clean_prob`` (probability that the given label is right),
    ``is_label_issue``, ``given_label_confidence`` (p(given | x)) and ``suggestion_confidence`` (p(suggestion | x)).
    Ties in ``clean_prob`` are broken by ``given_label_confidence``, lowest first.
    """
    probs = _probabilities(pred_probs)
    n, c = probs.shape
    labels = _class_labels(labels, "labels", n, c)
    if not isinstance(threshold, numbers.Real) or isinstance(threshold, bool) or not 0 < threshold < 1:
        raise KnnmixError(f"threshold must be a number in (0, 1), got {threshold!r}")
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or not 0 <= seed < 2**32:  # scikit-learn's
        raise KnnmixError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    if corrected_labels is None:
        suggestion = probs.argmax(1)
    else:
        suggestion = _class_labels(corrected_labels, "corrected_labels", n, c)
    if n == 0:
        empty = {key: np.zeros(0, dtype=np.int64) for key in ("index", "given_label", "corrected_label")}
        return {**empty, "is_label_issue": np.zeros(0, dtype=bool), **{key: np.zeros(0) for key in (
            "clean_prob", "given_label_confidence", "suggestion_confidence")}}
    given_conf = probs[np.arange(n), labels]
    losses = torch.from_numpy(-np.log(np.clip(given_conf, 1e-12, 1.0)))
    clean = fit_clean_probability(normalise_losses(losses), seed=seed).double().numpy()
    order = np.lexsort((given_conf, clean))  # primary: clean_prob ascending; ties: confidence ascending
    return {
        "index": order,
        "given_label": labels[order],
        "corrected_label": suggestion[order],
        "clean_prob": clean[order],
        "is_label_issue": (clean[order] < threshold) & (suggestion[order] != labels[order]),
        "given_label_confidence": given_conf[order],
        "suggestion_confidence": probs[order, suggestion[order]],
    }


def _probabilities(pred_probs: object) -> np.ndarray:
    """``pred_probs`` as float64 ``(N, C)`` rows of probabilities, else a one-line :class:`KnnmixError`."""
    try:
        probs = np.asarray(pred_probs, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise KnnmixError(f"pred_probs must be an (N, C) array of numbers: {one_line(exc, 200)}") from None
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise KnnmixError(f"pred_probs must be (N, C) with C >= 2 classes, got shape {probs.shape}")
    if not np.isfinite(probs).all():
        rows = np.flatnonzero(~np.isfinite(probs).all(1))
        raise KnnmixError(f"pred_probs holds NaN or infinite values in {len(rows)} rows (first: row {rows[0]})")
    sums = probs.sum(1)
    bad = np.flatnonzero((probs.min(1) < 0) | (np.abs(sums - 1) > 1e-2))
    if len(bad):
        raise KnnmixError(f"pred_probs must be probabilities (each row >= 0, summing to 1: softmax of logits, not "
                          f"the logits); {len(bad)} rows are not, e.g. row {bad[0]}: min {probs[bad[0]].min():.4g}, "
                          f"sum {sums[bad[0]]:.4g}")
    return probs


def _class_labels(values: object, name: str, n: int, c: int) -> np.ndarray:
    """``values`` as int64 ``(n,)`` class indices in ``[0, c)``; fractions, booleans and text are refused."""
    raw = np.asarray(values)
    if raw.dtype == bool or raw.dtype.kind not in "iuf" or (raw.dtype.kind == "f" and not (
            np.isfinite(raw).all() and (raw == np.round(raw)).all())):
        raise KnnmixError(f"{name} must be integer class indices, got {raw.dtype} values (e.g. {raw.ravel()[:3]})")
    if raw.shape != (n,):
        raise KnnmixError(f"{name} has shape {raw.shape}, expected ({n},) to match pred_probs (N, C) = ({n}, {c})")
    labels = raw.astype(np.int64)
    if n and (labels.min() < 0 or labels.max() >= c):
        raise KnnmixError(f"{name} must lie in [0, {c}) (the columns of pred_probs), found "
                          f"{labels.min()}..{labels.max()}")
    return labels


def write_label_issues(
    path: str | Path, table: dict[str, np.ndarray], *, rows: np.ndarray | None = None,
    class_names: Sequence[str] | None = None, extra: dict[str, Sequence[object]] | None = None,
) -> None:
    """Write the ranked table as CSV: ``rank, index, row, given_label, corrected_label, clean_prob, ...``.

    ``rows`` maps dataset indices to rows of the original data (e.g. positions in the published training set);
    ``class_names`` adds ``given_class`` / ``corrected_class``; ``extra`` adds columns indexed by dataset index.
    """
    index = table["index"]
    given, corrected = table["given_label"], table["corrected_label"]
    columns: dict[str, Sequence[object]] = {
        "rank": range(1, len(index) + 1),
        "index": index,
        "row": index if rows is None else np.asarray(rows)[index],
        "given_label": given,
        "corrected_label": corrected,
        "clean_prob": [f"{p:.6f}" for p in table["clean_prob"]],
        "is_label_issue": np.asarray(table["is_label_issue"], dtype=bool).astype(int),
        "given_label_confidence": [f"{p:.6f}" for p in table["given_label_confidence"]],
        "suggestion_confidence": [f"{p:.6f}" for p in table["suggestion_confidence"]],
    }
    if class_names is not None:
        columns["given_class"] = [class_names[c] for c in given]
        columns["corrected_class"] = [class_names[c] for c in corrected]
    for name, values in (extra or {}).items():
        columns[name] = [values[i] for i in index]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        w.writerows(zip(*columns.values()))


#: Pixels of each image's longer side in label_issues.png (smaller images are zoomed by a whole factor, larger ones
#: shrunk), of its caption lines and of the title line.
PICTURE_CELL, CAPTION_PX, TITLE_PX = 160, 11, 14


def plot_label_issues(
    path: str | Path, images: torch.Tensor, given: Sequence[str], suggested: Sequence[str], clean_prob: Sequence[float],
    *, columns: int = 8, title: str | None = None,
) -> None:
    """A grid of the top suspects: each image ``(B, C, H, W)`` uint8 with its given and suggested label.

    ``given``, ``suggested`` and ``clean_prob`` are aligned with the images, most suspect first. Drawn with Pillow
    (~0.05 CPU-s), not matplotlib (~0.4, and ~0.5 more to import it in a fresh process): every run writes one.
    """
    from PIL import Image, ImageDraw, ImageFont

    n, channels, h, w = images.shape
    if n == 0:
        return
    cols = min(columns, n)
    rows = -(-n // cols)
    zoom = PICTURE_CELL / max(h, w)
    zoom = float(int(zoom)) if zoom >= 1 else zoom  # pixels stay square blocks when zoomed
    iw, ih = max(1, round(w * zoom)), max(1, round(h * zoom))
    font, title_font = ImageFont.load_default(size=CAPTION_PX), ImageFont.load_default(size=TITLE_PX)
    line = CAPTION_PX + 3
    pad, cap, head = 12, 3 * line + 4, 2 * TITLE_PX + 4
    cell_w, cell_h = iw + 2 * pad, ih + cap + pad
    pixels = images.permute(0, 2, 3, 1).cpu().numpy().astype(np.uint8)
    pixels = np.repeat(pixels, 3, axis=3) if channels == 1 else pixels[..., :3]
    title = title or "Labels most likely wrong (most suspect first)"
    width = max(cols * cell_w, int(title_font.getlength(title)) + 2 * pad)  # a long title over a few images
    picture = Image.new("RGB", (width, head + rows * cell_h), "white")
    draw = ImageDraw.Draw(picture)

    def centred(text: str, x: float, y: float, face: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> None:
        draw.text((x - face.getlength(text) / 2, y), text, fill="black", font=face)  # (bitmap fonts have no anchors)

    centred(title, width / 2, TITLE_PX / 2, title_font)
    x0 = (width - cols * cell_w) // 2
    for k in range(n):
        r, c = divmod(k, cols)
        top, left = head + r * cell_h + cap, x0 + c * cell_w + pad
        thumb = Image.fromarray(pixels[k]).resize((iw, ih), Image.Resampling.NEAREST if zoom >= 1 else
                                                  Image.Resampling.BOX)
        picture.paste(thumb, (left, top))
        lines = (f"given: {given[k]}", f"suggested: {suggested[k]}", f"clean p={clean_prob[k]:.2f}")
        for j, text in enumerate(lines):  # class names are text as given (matplotlib parsed "$...$" as math)
            centred(text, left + iw / 2, top - cap + 2 + j * line, font)
    picture.save(path)
