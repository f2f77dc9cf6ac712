"""Category codes of a model's categorical features (`last` of a str field), fixed per version.

LightGBM reads a category as a small non-negative integer. The encoding maps each
categorical column's values to codes once, at training time, and is stored with the
model version (`CATEGORIES_FILE`); training, scoring and serving all encode through it.

Rules:
- Stable order: when the source field declares `allowed` values, the categories are
  exactly that list in its declared order, so codes stay the same across versions and
  retrains; otherwise they are the sorted distinct values of the training rows.
- The code of a category is its index in that list.
- A new category is answered as missing: a value the encoding does not hold (a
  category first seen after training) and a missing value (None, NaN) both encode to
  NaN, LightGBM's missing. The model version's encoding never changes after training;
  a retrain picks new categories up.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from libs.common.definitions import Definitions, ModelDefinition, feature_key

CATEGORIES_FILE = "categories.json"
"""The encoding's file among a model version's registry files; absent: no categorical inputs."""


def declared_categories(
    definitions: Definitions, model: ModelDefinition
) -> dict[str, tuple[str, ...] | None]:
    """The model's categorical columns, each with its field's declared `allowed` values.

    Args:
        definitions: the definitions (views and source field schemas).
        model: the model whose features are looked at.

    Returns:
        Column name (`feature_key`) -> the allowed values in declared order, or None
        when the field declares none; only categorical features, in model input order.
    """
    out: dict[str, tuple[str, ...] | None] = {}
    for ref in model.features:
        if not definitions.is_categorical(ref):
            continue
        view_name, _, feat = ref.partition(".")
        view = definitions.view(view_name)
        spec = next(f for f in view.features if f.name == feat)
        allowed = definitions.source(view.source).fields[spec.field].allowed
        out[feature_key(ref)] = tuple(allowed) if allowed is not None else None
    return out


@dataclass(frozen=True)
class CategoryEncoding:
    """Per categorical column, its ordered categories; a category's code is its index.

    Attributes:
        categories: column name -> categories in code order. Columns not named here
            are numeric and pass through unchanged.
    """

    categories: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def fit(
        cls,
        frame: pd.DataFrame,
        declared: Mapping[str, Sequence[str] | None],
    ) -> CategoryEncoding:
        """The encoding of `declared` columns: allowed lists as declared, else what `frame` holds.

        Args:
            frame: the training rows (categorical columns hold str, None or NaN).
            declared: column -> its declared allowed values, or None to take the sorted
                distinct str values of `frame[column]` (`declared_categories`).

        Returns:
            The encoding; a column with no declared values and none seen has no categories
            (every value encodes to NaN).
        """
        out: dict[str, tuple[str, ...]] = {}
        for column, allowed in declared.items():
            if allowed is not None:
                out[column] = tuple(dict.fromkeys(allowed))
            else:
                seen = frame[column] if column in frame else pd.Series(dtype=object)
                out[column] = tuple(
                    sorted({v for v in seen.to_numpy(dtype=object) if isinstance(v, str)})
                )
        return cls(out)

    @property
    def columns(self) -> list[str]:
        """The categorical columns."""
        return list(self.categories)

    @cached_property
    def _codes(self) -> dict[str, dict[str, float]]:
        return {c: {v: float(i) for i, v in enumerate(cats)} for c, cats in self.categories.items()}

    def code(self, column: str, value: Any) -> float:
        """The code of one value of a categorical column; NaN when unknown or missing."""
        return self._codes[column].get(value, math.nan) if isinstance(value, str) else math.nan

    def encode_column(self, column: str, values: Iterable[Any]) -> np.ndarray:
        """Codes of a categorical column's values, as float64 (NaN: unknown or missing).

        Raises:
            KeyError: `column` is not categorical in this encoding.
        """
        cats = self.categories[column]
        data = values if isinstance(values, pd.Series | np.ndarray) else list(values)
        codes = pd.Categorical(np.asarray(data, dtype=object), categories=list(cats)).codes
        out = codes.astype("float64")
        out[codes < 0] = np.nan
        return out

    def encode_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """A copy of `frame` whose categorical columns hold float64 codes."""
        present = [c for c in self.categories if c in frame]
        if not present:
            return frame
        return frame.assign(**{c: self.encode_column(c, frame[c]) for c in present})

    def matrix(self, frame: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
        """`frame[columns]` as the float64 model input matrix, categories encoded."""
        return self.encode_frame(frame[list(columns)]).to_numpy(dtype="float64")

    def encode_rows(
        self, rows: Sequence[Sequence[Any]] | np.ndarray, columns: Sequence[str]
    ) -> np.ndarray:
        """Model input rows (values in `columns` order) as a float64 matrix.

        Categorical values (str) become codes; a numeric ndarray is taken as already
        encoded. Numbers pass through unchanged.
        """
        if isinstance(rows, np.ndarray) and rows.dtype.kind in "fiub":
            return rows.astype(np.float64, copy=False)
        at = [(i, self._codes[c]) for i, c in enumerate(columns) if c in self.categories]
        if not at:
            return np.asarray(rows, dtype=np.float64)
        encoded = []
        for row in rows:
            values = list(row)
            for i, codes in at:
                v = values[i]
                values[i] = codes.get(v, math.nan) if isinstance(v, str) else math.nan
            encoded.append(values)
        return np.asarray(encoded, dtype=np.float64)

    def to_json(self) -> str:
        return json.dumps({"categories": {c: list(v) for c, v in self.categories.items()}})

    @classmethod
    def from_json(cls, text: str | None) -> CategoryEncoding:
        """The encoding stored with a version; None (no file: an older version) is empty."""
        if not text:
            return cls()
        data = json.loads(text)
        return cls({c: tuple(str(v) for v in vs) for c, vs in data["categories"].items()})
