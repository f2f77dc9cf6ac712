"""When a version's companion answers instead of its main model, and the main model's budget.

The companion is the simpler model stored with each version (a few small trees over
a few robust inputs). It answers rows whose main-model inputs are partial while its
own are all present, and every row of a predict call that raised or overran its
budget; the constant prior answers only when it cannot either (`_score` in
services/serve/service.py). No I/O here; `predict_within` only moves a call off the
event loop.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import lightgbm as lgb

from services.serve.core.predict import (
    COMPANION,
    COMPANION_FAILED,
    PARTIAL_FEATURES,
    FeatureRow,
    PredictBudget,
    Predictor,
    ServedModel,
)
from services.serve.errors import ModelMismatch

T = TypeVar("T")


class ModelTimeout(Exception):
    """The main model did not answer within its budget (or is still stuck on earlier calls)."""


def _present(value: float | str) -> bool:
    return isinstance(value, str) or not math.isnan(value)


def companion_predictor(text: str, main: Predictor) -> Predictor:
    """The companion of a version from its LightGBM text, encoding like the main model.

    Raises:
        ModelMismatch: it reads an input the main model does not (a foreign file).
        lightgbm.basic.LightGBMError: the text is no LightGBM model.
    """
    booster = lgb.Booster(model_str=text)
    columns = list(booster.feature_name())
    stray = [c for c in columns if c not in main.columns]
    if stray:
        raise ModelMismatch(
            f"companion inputs {stray} are not the model's {main.columns}; retrain the model"
        )
    # A categorical input is encoded through the version's codes (the companion was
    # trained on the same rows, so its codes are the main model's).
    return Predictor(booster, columns, main.encoding)


def prefers_companion(served: ServedModel, features: FeatureRow) -> bool:
    """The companion answers this row before the main model is asked: the main model's
    inputs are partial while every input of the companion is present."""
    if served.companion is None or PARTIAL_FEATURES not in features.reasons:
        return False
    return all(_present(features.row[k]) for k in served.companion_index)


def companion_scores(
    served: ServedModel,
    rows: Sequence[Sequence[float | str]],
    names: Sequence[str],
    *,
    explain: bool,
) -> tuple[list[float], list[dict[str, float]] | None]:
    """The companion's scores of main-model rows (and its contributions when asked).

    Args:
        served: the version; it must have a companion.
        rows: rows in the main model's input order.
        names: the main model's 'view.feature' names, in input order.
        explain: also return per-row contributions, keyed by the companion's inputs.

    Raises:
        ValueError: the version has no companion. Whatever the booster raises.
    """
    companion = served.companion
    if companion is None:
        raise ValueError(f"{served.name} v{served.version} has no companion")
    index = served.companion_index
    sub = [[row[k] for k in index] for row in rows]
    scores = [float(s) for s in companion.predict(sub)]
    contribs = companion.contributions(sub, [names[k] for k in index]) if explain else None
    return scores, contribs


def companion_reasons(cause: str | None, features: FeatureRow) -> tuple[str, ...]:
    """Reasons of a companion answer: why the main model did not answer, then `companion`.

    `cause` is MODEL_FAILED or MODEL_TIMEOUT, None when the inputs were partial.
    """
    head = (cause,) if cause else ()
    return (*head, *features.reasons, COMPANION)


def prior_reasons(cause: str, features: FeatureRow, *, had_companion: bool) -> tuple[str, ...]:
    """Reasons of the constant prior after the main model failed: and the companion too,
    when the version has one."""
    tail = (COMPANION_FAILED,) if had_companion else ()
    return (cause, *features.reasons, *tail)


async def predict_within(
    budget: PredictBudget,
    call: Callable[[], T],
    *,
    budget_s: float,
    max_overdue: int,
    offload: bool,
) -> T:
    """Run a main-model predict within `budget_s`, inline or off the loop (`PredictBudget`).

    Args:
        budget: the version's budget state; updated here.
        call: the predict, blocking.
        budget_s: its time budget; 0 turns budgets off (inline unless `offload`).
        max_overdue: calls still running past their budget at which the next one is
            refused at once.
        offload: the call is large (a batch): always off the loop, as without budgets.

    Returns:
        What `call` returned. An inline call over its budget still returns (it is
        done, and the main model's answer is the better one) and moves the version
        off the loop for the next calls.

    Raises:
        ModelTimeout: the call ran off the loop past `budget_s` (it goes on in its
            thread, counted as overdue), or too many earlier calls still do.
        Exception: whatever `call` raised.
    """
    if budget_s <= 0:
        return await asyncio.to_thread(call) if offload else call()
    if budget.overdue >= max_overdue:
        raise ModelTimeout(f"{budget.overdue} earlier predicts still running past the budget")
    if budget.inline and not offload:
        started = time.perf_counter()
        out = call()
        if time.perf_counter() - started > budget_s:
            budget.inline = False
        return out
    running = asyncio.get_running_loop().run_in_executor(None, call)
    try:
        # shield: a timeout abandons the wait, not the thread (LightGBM cannot stop).
        out = await asyncio.wait_for(asyncio.shield(running), budget_s)
    except TimeoutError:
        budget.inline = False
        budget.overdue += 1
        running.add_done_callback(lambda f: _finished_overdue(budget, f))
        raise ModelTimeout(f"no answer within {budget_s * 1000:g} ms") from None
    if not offload:
        budget.inline = True  # answered within its budget: cheap enough to stay on the loop
    return out


def _finished_overdue(budget: PredictBudget, done: asyncio.Future[Any]) -> None:
    budget.overdue -= 1
    if not done.cancelled():
        done.exception()  # retrieved: an overdue failure is not "never retrieved"
