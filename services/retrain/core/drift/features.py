"""Feature and prediction drift: sliding windows tested against the version's reference.

No false alarms by construction: a column is flagged only when its window holds at
least `window` values, its PSI exceeds the effect-size threshold AND its KS p-value
is below alpha corrected for the number of columns (Bonferroni); it alarms only after
`confirm` consecutive flagged checks (hysteresis), and each column alarms at most
once per version (the monitor is rebuilt when a new version serves).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from services.retrain.core.drift.reference import DriftReference
from services.retrain.core.drift.statistics import ks_pvalue, psi


@dataclass(frozen=True)
class FeatureDriftPolicy:
    window: int = 1000
    check_every: int = 250
    psi_threshold: float = 0.2
    alpha: float = 0.01
    confirm: int = 2


@dataclass(frozen=True)
class ColumnCheck:
    column: str
    psi: float
    p_value: float
    flagged: bool


@dataclass(frozen=True)
class FeatureAlarm:
    column: str
    psi: float
    p_value: float
    threshold: float
    window: int
    since: float  # time of the first flagged check of the run that alarmed


class FeatureDriftMonitor:
    """Feeds rows (column -> value) of one serving version; returns alarms when they fire."""

    def __init__(self, reference: DriftReference, policy: FeatureDriftPolicy) -> None:
        self.reference = reference
        self.policy = policy
        self._windows = {c: deque[float](maxlen=policy.window) for c in reference.columns}
        self._streak = dict.fromkeys(reference.columns, 0)
        self._first_flag: dict[str, float] = {}
        self._alarmed: set[str] = set()
        self._since_check = 0
        self.last: dict[str, ColumnCheck] = {}

    def add(self, row: Mapping[str, float | str | None], at: float) -> list[FeatureAlarm]:
        for column, window in self._windows.items():
            value = row.get(column)
            # Categories (str) have no numeric reference; a column with one is skipped.
            if isinstance(value, int | float) and value == value:
                window.append(float(value))
        self._since_check += 1
        if self._since_check < self.policy.check_every:
            return []
        self._since_check = 0
        return self._check(at)

    def _check(self, at: float) -> list[FeatureAlarm]:
        p = self.policy
        corrected = p.alpha / max(1, len(self._windows))
        alarms = []
        for column, window in self._windows.items():
            if len(window) < p.window:
                continue
            ref = self.reference.columns[column]
            values = np.fromiter(window, dtype=np.float64)
            value, pv = psi(ref, values), ks_pvalue(ref, values)
            flagged = value > p.psi_threshold and pv < corrected
            self.last[column] = ColumnCheck(column, value, pv, flagged)
            if not flagged:
                self._streak[column] = 0
                self._first_flag.pop(column, None)
                continue
            self._streak[column] += 1
            self._first_flag.setdefault(column, at)
            if self._streak[column] >= p.confirm and column not in self._alarmed:
                self._alarmed.add(column)
                alarms.append(
                    FeatureAlarm(
                        column, value, pv, p.psi_threshold, p.window, self._first_flag[column]
                    )
                )
        return alarms
