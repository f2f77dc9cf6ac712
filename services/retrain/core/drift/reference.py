"""The drift reference stored with each model version: per-column quantile bins.

Written at training time from the training set, read by the monitor for the version
that serves. Bins are quantiles of the training values, so each holds about the same
share; a sample of the values is kept for the two-sample KS test.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

PREDICTION = "prediction"  # the reference of the model's own scores
_SAMPLE = 2000


@dataclass(frozen=True)
class ColumnReference:
    """One column's training distribution.

    Attributes:
        edges: inner bin edges (quantiles); n edges make n + 1 bins.
        shares: share of training values per bin (missing values excluded).
        missing: share of missing values.
        sample: up to 2,000 training values, for the KS test.
    """

    edges: tuple[float, ...]
    shares: tuple[float, ...]
    missing: float
    sample: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float | None] | np.ndarray, bins: int = 10) -> ColumnReference:
        x = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
        present = x[~np.isnan(x)]
        missing = 1.0 - len(present) / len(x) if len(x) else 0.0
        if len(present) == 0:
            return cls((), (1.0,), missing, ())
        edges = np.unique(np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1]))
        counts = np.bincount(
            np.searchsorted(edges, present, side="right"), minlength=len(edges) + 1
        )
        rng = np.random.default_rng(0)
        sample = present if len(present) <= _SAMPLE else rng.choice(present, _SAMPLE, replace=False)
        return cls(
            tuple(float(e) for e in edges),
            tuple(float(c) for c in counts / counts.sum()),
            float(missing),
            tuple(float(v) for v in sample),
        )

    def bin_counts(self, values: np.ndarray) -> np.ndarray:
        """Counts of present `values` per bin of this reference."""
        return np.bincount(
            np.searchsorted(self.edges_array, values, side="right"),
            minlength=len(self.edges) + 1,
        )

    # Arrays of the tuples, built once per reference: the monitor's checks use them on
    # every window (cached_property writes the instance dict, so frozen is no obstacle).
    @cached_property
    def edges_array(self) -> np.ndarray:
        return np.asarray(self.edges, dtype=np.float64)

    @cached_property
    def shares_array(self) -> np.ndarray:
        return np.asarray(self.shares, dtype=np.float64)

    @cached_property
    def sorted_sample(self) -> np.ndarray:
        return np.sort(np.asarray(self.sample, dtype=np.float64))


@dataclass(frozen=True)
class DriftReference:
    """References of a version's input columns and of its scores."""

    columns: Mapping[str, ColumnReference]

    @classmethod
    def of(cls, frame: Mapping[str, Sequence[float | None] | np.ndarray]) -> DriftReference:
        return cls({name: ColumnReference.of(values) for name, values in frame.items()})

    def to_json(self) -> str:
        return json.dumps(
            {
                name: {
                    "edges": list(r.edges),
                    "shares": list(r.shares),
                    "missing": r.missing,
                    "sample": list(r.sample),
                }
                for name, r in self.columns.items()
            }
        )

    @classmethod
    def from_json(cls, text: str) -> DriftReference:
        data = json.loads(text)
        return cls(
            {
                name: ColumnReference(
                    tuple(d["edges"]), tuple(d["shares"]), float(d["missing"]), tuple(d["sample"])
                )
                for name, d in data.items()
            }
        )
