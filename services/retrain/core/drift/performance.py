"""Performance decay from late labels: rolling metrics and a windowed change test.

A concept drift can leave every feature distribution unchanged; only the model's
loss on late labels shows it. The detector compares the per-prediction log loss of
the newest `window` labels with the `reference` labels just before them (one-sided
Mann-Whitney U, scipy), and alarms when the loss rose by at least `min_increase`
nats with a p-value below `alpha`. `alpha` is per test and small: the test is
repeated every `check_every` labels over a long stream, and a real concept drift
gives p-values many orders below it. The change point is estimated as the split of
the buffered losses that maximises the standardised difference of means.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
from scipy import stats

_CLIP = 1e-6


def log_loss(label: float, score: float) -> float:
    """Binary log loss of one prediction, scores clipped away from 0 and 1."""
    p = min(max(score, _CLIP), 1.0 - _CLIP)
    return -(label * math.log(p) + (1.0 - label) * math.log(1.0 - p))


@dataclass(frozen=True)
class PerformancePolicy:
    reference: int = 400
    window: int = 150
    check_every: int = 25
    alpha: float = 1e-6
    min_increase: float = 0.1
    post_change_labels: int = 300


@dataclass(frozen=True)
class PerformanceAlarm:
    reference_loss: float
    recent_loss: float
    p_value: float
    change_at: float  # estimated time the change began
    labels: int  # labels seen by the detector when it alarmed


@dataclass(frozen=True)
class RollingMetrics:
    labels: int
    accuracy: float
    log_loss: float
    auc: float
    calibration: float  # mean score minus mean label


class LossChangeDetector:
    """Per-prediction losses of one version, in label order.

    Two baselines: the losses just before the newest window (a change while the version
    serves), and, when known, `expected_loss`, the version's holdout log loss at
    training time. The second catches a version that began serving at (or after) the
    change, whose own first labels are already bad.
    """

    def __init__(self, policy: PerformancePolicy, expected_loss: float | None = None) -> None:
        self.policy = policy
        self.expected_loss = expected_loss
        size = policy.reference + policy.window
        self._loss: deque[float] = deque(maxlen=size)
        self._at: deque[float] = deque(maxlen=size)
        self._since_check = 0
        self.labels = 0
        self.alarm: PerformanceAlarm | None = None

    def labels_since(self, at: float) -> int:
        """Buffered labels at or after time `at`."""
        return sum(1 for t in self._at if t >= at)

    def add(self, loss: float, at: float) -> PerformanceAlarm | None:
        """Add one label's loss; returns the alarm the first time the test fires."""
        self._loss.append(loss)
        self._at.append(at)
        self.labels += 1
        self._since_check += 1
        p = self.policy
        if self.alarm is not None or self._since_check < p.check_every:
            return None
        if len(self._loss) < self._loss.maxlen:  # type: ignore[operator]
            return self._against_expected()
        self._since_check = 0
        losses = np.fromiter(self._loss, dtype=np.float64)
        ref, recent = losses[: p.reference], losses[p.reference :]
        increase = float(recent.mean() - ref.mean())
        if increase < p.min_increase:
            return self._against_expected()
        pv = float(stats.mannwhitneyu(recent, ref, alternative="greater").pvalue)
        if pv >= p.alpha:
            return self._against_expected()
        self.alarm = PerformanceAlarm(
            float(ref.mean()),
            float(recent.mean()),
            pv,
            self._at[_change_index(losses)],
            self.labels,
        )
        return self.alarm

    def _against_expected(self) -> PerformanceAlarm | None:
        """The newest window against the version's expected (holdout) loss."""
        p = self.policy
        self._since_check = 0
        if self.expected_loss is None or len(self._loss) < p.window:
            return None
        losses = np.fromiter(self._loss, dtype=np.float64)
        recent = losses[-p.window :]
        if float(recent.mean()) - self.expected_loss < p.min_increase:
            return None
        pv = float(stats.ttest_1samp(recent, self.expected_loss, alternative="greater").pvalue)
        if not pv < p.alpha:
            return None
        at = list(self._at)
        index = _change_index(losses) if len(losses) > 2 * p.window else 0
        self.alarm = PerformanceAlarm(
            self.expected_loss, float(recent.mean()), pv, at[index], self.labels
        )
        return self.alarm


def _change_index(x: np.ndarray) -> int:
    """The split k maximising |mean(x[k:]) - mean(x[:k])| * sqrt(k (n - k) / n)."""
    n = len(x)
    k = np.arange(1, n)
    csum = np.cumsum(x)[:-1]
    left = csum / k
    right = (x.sum() - csum) / (n - k)
    score = np.abs(right - left) * np.sqrt(k * (n - k) / n)
    return int(k[int(np.argmax(score))])


class RollingWindow:
    """The newest labels of one version and variant, for its rolling metrics."""

    def __init__(self, size: int = 1000) -> None:
        self._labels: deque[float] = deque(maxlen=size)
        self._scores: deque[float] = deque(maxlen=size)
        self.count = 0

    def add(self, label: float, score: float) -> None:
        self._labels.append(label)
        self._scores.append(score)
        self.count += 1

    def metrics(self) -> RollingMetrics | None:
        if not self._labels:
            return None
        y = np.fromiter(self._labels, dtype=np.float64)
        s = np.fromiter(self._scores, dtype=np.float64)
        positives, negatives = s[y >= 0.5], s[y < 0.5]
        auc = math.nan
        if len(positives) and len(negatives):
            u = stats.mannwhitneyu(positives, negatives).statistic
            auc = float(u / (len(positives) * len(negatives)))
        clipped = np.clip(s, _CLIP, 1 - _CLIP)
        loss = float(-np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped)))
        return RollingMetrics(
            labels=self.count,
            accuracy=float(np.mean((s >= 0.5) == (y >= 0.5))),
            log_loss=loss,
            auc=auc,
            calibration=float(s.mean() - y.mean()),
        )
