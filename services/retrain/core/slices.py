"""Segments of a holdout for the promotion slice audit: quantile bins of a feature.

A model that is better on average can still be worse for one segment (one range of
a feature, one category of a categorical feature, or the rows where it is missing).
Slices are cut once from the holdout, so the champion and the candidate are judged
on exactly the same rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
from sklearn.metrics import roc_auc_score

MISSING = "missing"


@dataclass(frozen=True)
class Slice:
    """The holdout rows where `feature` falls in one bin.

    Attributes:
        feature: the 'view.feature' reference the slice is cut from.
        label: the bin, e.g. "[0.2, 0.5)", "< 0.2", ">= 0.9", "= ok" (a category)
            or "missing".
        mask: which holdout rows belong to it.
    """

    feature: str
    label: str
    mask: np.ndarray

    @property
    def key(self) -> str:
        return f"{self.feature} {self.label}"


@dataclass(frozen=True)
class SliceScore:
    """One model's AUC on one slice (NaN when the slice holds one class)."""

    feature: str
    label: str
    rows: int
    auc: float

    @property
    def key(self) -> str:
        return f"{self.feature} {self.label}"


def _bin_labels(edges: np.ndarray) -> list[str]:
    if len(edges) == 0:
        return ["all"]
    labels = [f"< {edges[0]:.4g}"]
    labels += [f"[{lo:.4g}, {hi:.4g})" for lo, hi in pairwise(edges)]
    labels.append(f">= {edges[-1]:.4g}")
    return labels


def cut_slices(columns: Mapping[str, np.ndarray], bins: int = 4) -> list[Slice]:
    """Cut each column into quantile bins of its present values, plus a missing slice.

    Edges are quantiles of the column itself (the holdout), deduplicated, so a
    feature with few distinct values gets fewer, never empty-by-construction, bins.
    A categorical column (str values) gets one slice per category instead.

    Args:
        columns: 'view.feature' -> the holdout's values of it (NaN or None = missing).
        bins: quantile bins per column.

    Returns:
        The non-empty slices, column by column, bins (or categories) in increasing
        order, then missing.
    """
    out: list[Slice] = []
    for feature, values in columns.items():
        raw = np.asarray(values)
        if raw.dtype == object and any(isinstance(v, str) for v in raw):
            out += _category_slices(feature, raw)
            continue
        x = np.asarray(values, dtype=np.float64)
        missing = np.isnan(x)
        present = x[~missing]
        if len(present):
            edges = np.unique(np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1]))
            # NaN sorts past every edge, so missing rows are masked out explicitly.
            index = np.searchsorted(edges, x, side="right")
            for i, label in enumerate(_bin_labels(edges)):
                mask = (index == i) & ~missing
                if mask.any():
                    out.append(Slice(feature, label, mask))
        if missing.any():
            out.append(Slice(feature, MISSING, missing))
    return out


def _category_slices(feature: str, values: np.ndarray) -> list[Slice]:
    is_str = np.fromiter((isinstance(v, str) for v in values), dtype=bool, count=len(values))
    out = [Slice(feature, f"= {c}", values == c) for c in sorted(set(values[is_str]))]
    if not is_str.all():
        out.append(Slice(feature, MISSING, ~is_str))
    return out


def slice_scores(y: np.ndarray, p: np.ndarray, slices: list[Slice]) -> tuple[SliceScore, ...]:
    """A model's AUC on each slice of the holdout.

    Args:
        y: the holdout's labels (0/1).
        p: the model's scores of the same rows.
        slices: slices of those rows (`cut_slices`).

    Returns:
        One score per slice, in the order of `slices`.
    """
    out = []
    for s in slices:
        ys, ps = y[s.mask], p[s.mask]
        auc = float(roc_auc_score(ys, ps)) if len(np.unique(ys)) == 2 else math.nan
        out.append(SliceScore(s.feature, s.label, int(s.mask.sum()), auc))
    return tuple(out)
