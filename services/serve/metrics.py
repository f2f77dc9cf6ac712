"""Serve's own Ray Serve metrics of the request path, exported next to Serve's.

Ray's metrics agent exports them with a `ray_` prefix (e.g.
`ray_signalops_predict_latency_ms_bucket`), on the port Prometheus already scrapes for
Serve; the same outcomes show in the replica's /healthz `counts`. Increments are per
call and per outcome, not per request, to keep their cost off the hot path.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from ray.serve import metrics

# Milliseconds: the budget is a p99 of 50 ms; the tail beyond a second is shed.
LATENCY_BOUNDARIES_MS: list[float] = [1, 2, 5, 10, 20, 35, 50, 75, 100, 200, 500, 1000, 2000]


def _tags(*keys: str) -> Any:
    # Ray hints tag_keys as Tuple[str] (a one-element tuple); any tuple of names works.
    return keys


class ServeMetrics:
    """The counters, histogram and gauge of one replica."""

    def __init__(self) -> None:
        self._cache = metrics.Counter(
            "signalops_prediction_cache",
            description="Prediction cache lookups by serve, by outcome (hit or miss)",
            tag_keys=_tags("outcome"),
        )
        self._latency = metrics.Histogram(
            "signalops_predict_latency_ms",
            description="Time inside the replica per predict call, by priority and variant",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=_tags("endpoint", "priority", "variant"),
        )
        self._answers = metrics.Counter(
            "signalops_predictions",
            description="Answers by variant, degraded or not",
            tag_keys=_tags("variant", "degraded"),
        )
        self._degraded = metrics.Counter(
            "signalops_degraded",
            description="Degraded answers by reason (one answer may give several)",
            tag_keys=_tags("reason"),
        )
        self._shed = metrics.Counter(
            "signalops_shed",
            description="Requests shed by the priority limiter (503), by priority and code",
            tag_keys=_tags("priority", "code"),
        )
        self._log = metrics.Counter(
            "signalops_prediction_log_records",
            description="Prediction-log records by outcome: sent, retried, failed, dropped",
            tag_keys=_tags("outcome"),
        )
        self._version = metrics.Gauge(
            "signalops_model_version",
            description="The version a replica serves, per model and variant (0: none)",
            tag_keys=_tags("model", "variant"),
        )

    def cache(self, *, hits: int, misses: int) -> None:
        """Count one call's lookups."""
        if hits:
            self._cache.inc(hits, tags={"outcome": "hit"})
        if misses:
            self._cache.inc(misses, tags={"outcome": "miss"})

    def answered(
        self,
        endpoint: str,
        priority: str,
        elapsed_ms: float,
        answers: Iterable[tuple[str, bool, Iterable[str]]],
    ) -> None:
        """One call answered: its latency under the first answer's variant, and per
        (variant, degraded) and per degraded reason one increment each.

        Args:
            answers: (variant, degraded, reasons) of every answer of the call.
        """
        kinds: Counter[tuple[str, bool]] = Counter()
        reasons: Counter[str] = Counter()
        for variant, degraded, why in answers:
            kinds[(variant, degraded)] += 1
            reasons.update(why)
        first = next(iter(kinds), ("none", False))[0]
        self._latency.observe(
            elapsed_ms, tags={"endpoint": endpoint, "priority": priority, "variant": first}
        )
        for (variant, degraded), n in kinds.items():
            self._answers.inc(n, tags={"variant": variant, "degraded": str(degraded).lower()})
        for reason, n in reasons.items():
            self._degraded.inc(n, tags={"reason": reason})

    def shed(self, priority: str, code: str) -> None:
        self._shed.inc(tags={"priority": priority, "code": code})

    def prediction_log(self, outcome: str, n: int) -> None:
        self._log.inc(n, tags={"outcome": outcome})

    def serving(self, model: str, variant: str, version: str | None) -> None:
        """The version now served (numeric registry versions; 0 when none)."""
        value = float(version) if version is not None and version.isdigit() else 0.0
        self._version.set(value, tags={"model": model, "variant": variant})
