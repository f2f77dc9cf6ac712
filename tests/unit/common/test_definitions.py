"""The definitions file is validated at start with errors naming the offending entry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from libs.common.definitions import load_definitions, parse_definitions
from libs.common.errors import DefinitionsError

REPO = Path(__file__).resolve().parents[3]


def _base() -> dict[str, Any]:
    return yaml.safe_load((REPO / "signalops.yaml").read_text())


@pytest.mark.parametrize("path", ["signalops.yaml", "examples/payments.yaml"])
def test_shipped_definitions_are_valid(path: str) -> None:
    """Both shipped definitions files load."""
    d = load_definitions(REPO / path)
    assert d.models and d.feature_views and d.sources


def _broken(mutate: Any) -> dict[str, Any]:
    data = _base()
    mutate(data)
    return data


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d["feature_views"][0].update(source="nope"), "unknown source 'nope'"),
        (
            lambda d: d["feature_views"][0]["features"][0].update(field="nope"),
            "unknown field 'nope'",
        ),
        (
            lambda d: d["models"][0]["features"].append("device_stats.nope"),
            "unknown feature 'device_stats.nope'",
        ),
        (
            lambda d: d["feature_views"][0]["features"].append(
                {"name": "s", "field": "status", "agg": "mean"}
            ),
            "needs a numeric field",
        ),
        (
            lambda d: d["feature_views"][0]["features"].append(
                {"name": "f", "field": "status", "agg": "fraction"}
            ),
            "needs 'equals'",
        ),
        (lambda d: d["sources"][0].update(name="Bad-Name"), "sources.0.name"),
        (lambda d: d["models"][0].update(surprise=1), "models.0.surprise"),
        (lambda d: d["sources"].append(d["sources"][0]), "duplicate source names"),
    ],
)
def test_invalid_definitions_name_the_problem(mutate: Any, match: str) -> None:
    """Each kind of mistake is reported with where it is."""
    with pytest.raises(DefinitionsError, match=match):
        parse_definitions(_broken(mutate), origin="test.yaml")


def test_missing_file_names_the_variable(tmp_path: Path) -> None:
    """A missing file tells the operator which variable to set."""
    with pytest.raises(DefinitionsError, match="SIGNALOPS_DEFINITIONS"):
        load_definitions(tmp_path / "absent.yaml")
