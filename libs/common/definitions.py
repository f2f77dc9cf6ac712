"""The definitions file: sources, feature views and models as configuration.

Adding a source, a feature or a model is an edit to `signalops.yaml`, validated
here at start with errors that name the offending entry.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, ValidationError, model_validator

from libs.common.errors import DefinitionsError

_NAME = r"^[a-z][a-z0-9_]*$"
Name = Annotated[str, Field(pattern=_NAME, min_length=1, max_length=64)]


class FieldType(StrEnum):
    float = "float"
    int = "int"
    bool = "bool"
    str = "str"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldSpec(_Strict):
    """One field of a source: its type, whether it must be present, its bounds."""

    type: FieldType
    required: bool = True
    min: float | None = None
    max: float | None = None
    allowed: list[str] | None = Field(None, description="Allowed values of a str field.")


# A path into a JSON document: dot-separated object keys, a number indexes a list
# ("data.items", "readings.0.value").
JsonPath = Annotated[str, Field(pattern=r"^[^.]+(\.[^.]+)*$", max_length=256)]


class PollMapping(_Strict):
    """How a polled response becomes signals: where its records are, and where each
    record keeps the entity id, the event time and the source's fields."""

    records: JsonPath | None = Field(
        None, description="Path to the list of records; None: the response is the list."
    )
    entity_id: JsonPath = Field(description="Path in a record to the entity id.")
    event_time: JsonPath | None = Field(
        None, description="Path in a record to its event time; None: the time of the poll."
    )
    fields: dict[Name, JsonPath] = Field(
        description="Source field -> path in a record; an absent path leaves the field out."
    )


class PollAuth(_Strict):
    """A header carrying a secret, read at start from an environment variable or a file
    (a mounted Secret). The definitions file names where the secret is, never the secret.
    """

    header: str = Field("Authorization", pattern=r"^[A-Za-z0-9-]+$", max_length=64)
    scheme: str = Field("", max_length=32, description='Value prefix, e.g. "Bearer".')
    env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    file: Path | None = None

    @model_validator(mode="after")
    def _one_secret(self) -> PollAuth:
        if (self.env is None) == (self.file is None):
            raise ValueError(
                "poll.auth needs exactly one of 'env' (an environment variable's name) or "
                "'file' (a secret file's path) holding the header's value"
            )
        return self


class PollSpec(_Strict):
    """A source ingest polls over HTTP (services/ingest/sources), behind its own breaker;
    while it fails, its last good snapshot is re-emitted flagged stale for `max_stale_s`.
    """

    url: Annotated[str, Field(pattern=r"^https?://\S+$", max_length=2048)]
    interval_s: PositiveFloat = Field(30.0, description="Time between two polls.")
    timeout_s: PositiveFloat = Field(5.0, description="Time allowed for one attempt.")
    attempts: int = Field(2, ge=1, le=10, description="Attempts per poll (retries + 1).")
    fail_max: int = Field(3, ge=1, description="Consecutive failed attempts that open the breaker.")
    reset_s: PositiveFloat = Field(
        60.0, description="How long the breaker stays open before a half-open probe."
    )
    max_stale_s: PositiveFloat = Field(
        900.0, description="Oldest cached snapshot re-emitted while the source is down."
    )
    mapping: PollMapping
    auth: PollAuth | None = None


class QualityThresholds(_Strict):
    """When a source's data quality breaches (services/ingest/core/quality.py): rates are
    over about the last `window_records` records of each field."""

    max_null_rate: float = Field(0.05, ge=0.0, le=1.0, description="Null or absent values.")
    max_out_of_range_rate: float = Field(
        0.01, ge=0.0, le=1.0, description="Values outside min/max (dead-lettered)."
    )
    max_outlier_rate: float = Field(
        0.05, ge=0.0, le=1.0, description="Values whose robust z-score exceeds outlier_z."
    )
    outlier_z: PositiveFloat = Field(
        3.5, description="Robust z-score (median/MAD) beyond which a value is an outlier."
    )
    max_silence_s: PositiveFloat | None = Field(
        None, description="Longest time without a record before freshness breaches."
    )
    window_records: int = Field(1000, ge=10, le=100_000)


class SourceDefinition(_Strict):
    """A stream of signals about entities; `fields` is its versioned schema.

    With `poll`, ingest also fetches it over HTTP (pushes are accepted all the same).
    """

    name: Name
    version: int = Field(1, ge=1)
    entity: Name = Field(description="Kind of entity the source speaks about, e.g. device.")
    fields: dict[Name, FieldSpec]
    allowed_lateness_s: PositiveFloat = 3600.0
    max_future_skew_s: PositiveFloat = 300.0
    late_policy: Literal["dead_letter", "accept_flagged"] = Field(
        "dead_letter",
        description="Events older than allowed_lateness_s: dead-lettered too_late, or "
        "published with `late: true`.",
    )
    quality: QualityThresholds = QualityThresholds()
    poll: PollSpec | None = None

    @model_validator(mode="after")
    def _has_fields(self) -> SourceDefinition:
        if not self.fields:
            raise ValueError(f"source {self.name!r} declares no fields")
        return self

    @model_validator(mode="after")
    def _poll_maps_known_fields(self) -> SourceDefinition:
        if self.poll is None:
            return self
        stray = sorted(set(self.poll.mapping.fields) - set(self.fields))
        if stray:
            raise ValueError(
                f"source {self.name!r}: poll.mapping.fields maps {stray}, which are not "
                f"fields of the source; known: {sorted(self.fields)}"
            )
        return self


# LightGBM objectives (and aliases) whose labels are 0/1 classes.
BINARY_OBJECTIVES = frozenset({"binary", "cross_entropy", "xentropy"})

Aggregation = Literal[
    "last", "mean", "min", "max", "sum", "count", "std", "fraction", "time_since_last", "rate"
]
# Aggregations that read a field's value as a number (the rest accept str fields too).
NUMERIC_AGGREGATIONS = frozenset({"mean", "min", "max", "sum", "std"})
# Aggregations over tiles of the window (`last` and `time_since_last` keep the exact
# newest value instead).
TILED_AGGREGATIONS = frozenset({"mean", "min", "max", "sum", "count", "std", "fraction", "rate"})


class FeatureSpec(_Strict):
    """One feature: an aggregation of a source field over a trailing event-time window.

    Windows are tiled (libs/common/features/plan.py): a window of `window_s` is `tiles`
    tiles of `window_s / tiles` seconds, and a vector as of time t covers the tile
    holding t and the `tiles - 1` before it, so it spans between `window_s - window_s
    / tiles` and `window_s` seconds. That keeps the cost of an event constant whatever
    the history. `last` and `time_since_last` are exact: the newest value whose time
    is within `window_s` of t.

    `fraction` is the share of values in the window equal to `equals`; `rate` is
    values per second over the window; `last` of a str field is a categorical feature.
    """

    name: Name
    field: Name
    agg: Aggregation
    window_s: PositiveFloat | None = Field(
        None, description="Trailing window in seconds; None means all retained history."
    )
    equals: str | float | bool | None = None
    tiles: int = Field(
        12, ge=1, le=1440, description="Tiles a window is cut into (its time resolution)."
    )

    @model_validator(mode="after")
    def _fraction_needs_equals(self) -> FeatureSpec:
        if self.agg == "fraction" and self.equals is None:
            raise ValueError(f"feature {self.name!r}: agg 'fraction' needs 'equals'")
        return self


class FeatureView(_Strict):
    """Features of one entity computed from one source; stored under its version."""

    name: Name
    source: Name
    version: int = Field(1, ge=1)
    features: list[FeatureSpec]
    retention_s: PositiveFloat = Field(
        86400.0, description="How much event history the online state keeps per entity."
    )

    @model_validator(mode="after")
    def _unique_names(self) -> FeatureView:
        names = [f.name for f in self.features]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"feature view {self.name!r}: duplicate features {sorted(dupes)}")
        return self

    @property
    def max_window_s(self) -> float:
        windows = [f.window_s for f in self.features if f.window_s]
        return max(windows, default=self.retention_s)


class Companion(_Strict):
    """The simpler model trained with every version, serve's first fallback.

    A few small trees over the most robust few inputs: `features: auto` takes the
    main model's top `max_features` by gain among the inputs missing in at most
    `max_missing` of the training rows (services/retrain/core/companion.py); a list
    names them ('view.feature', a subset of the model's features).
    """

    enabled: bool = True
    features: Literal["auto"] | list[str] = "auto"
    max_features: int = Field(4, ge=1, le=32)
    max_missing: float = Field(
        0.05, ge=0.0, le=1.0, description="Largest missing share of an `auto` input."
    )
    trees: int = Field(10, ge=1, le=50)
    leaves: int = Field(7, ge=2, le=31)
    learning_rate: float = Field(0.3, gt=0.0, le=1.0)

    def check_features(self, model: str, features: list[str]) -> None:
        """A listed companion input must be one of the model's own features.

        Raises:
            ValueError: naming the stray references and the model's features.
        """
        if self.features == "auto":
            return
        stray = [f for f in self.features if f not in features]
        if stray or not self.features:
            raise ValueError(
                f"model {model!r}: fallback.companion.features {stray or '[]'} must be a "
                f"non-empty subset of its features {features}, or 'auto'"
            )


class Fallback(_Strict):
    """What serve answers when the model or the features cannot: the version's companion
    model first, the constant `score` (the prior) when nothing else can."""

    score: float = Field(0.5, ge=0.0, le=1.0)
    companion: Companion = Companion()


class DriftThresholds(_Strict):
    """How the drift monitor decides (services/retrain/core/drift)."""

    psi: PositiveFloat = Field(0.2, description="PSI effect size a drifted feature exceeds.")
    min_samples: int = Field(500, ge=10, description="Values in each feature test window.")
    alpha: float = Field(
        0.01, gt=0, lt=1, description="KS significance, corrected for the number of features."
    )
    performance_alpha: float = Field(
        1e-6, gt=0, lt=1, description="Per-test significance of the loss-change test."
    )
    min_loss_increase: PositiveFloat = Field(
        0.1, description="Rise of mean log loss (nats) that counts as a performance drift."
    )
    post_change_labels: int = Field(
        300, ge=10, description="Labels after the change point before retraining on them."
    )
    refit_labels: int = Field(
        1200, ge=10, description="Labels after the change point before a second retrain."
    )


class PromotionGates(_Strict):
    """A new version becomes champion only if it passes these on its (newest) holdout.

    The gates are relative, so a model that decayed with the world can be replaced:
    the candidate must beat the fallback (AUC above 0.5 by `min_auc_lift`, log loss
    below the constant base-rate prior) and the champion scored on the same holdout
    (AUC, log loss, AUC per slice), and be calibrated. `min_auc` adds an absolute
    floor only when set. The rules are in services/retrain/core/promotion.py.
    """

    min_auc: float | None = Field(None, ge=0.0, le=1.0, description="Optional absolute floor.")
    min_auc_lift: float = Field(
        0.02, ge=0.0, le=0.5, description="AUC the candidate must gain over the fallback's 0.5."
    )
    min_rows: int = Field(200, ge=10)
    min_gain_over_champion: float = Field(
        0.0,
        ge=0.0,
        le=0.5,
        description="AUC the candidate must gain over the champion on the same holdout "
        "(less the service's SIGNALOPS_AUC_TOLERANCE slack).",
    )
    max_log_loss_increase: float = Field(
        0.02, ge=0.0, description="Nats of holdout log loss the candidate may lose to the champion."
    )
    max_calibration_error: float = Field(
        0.1,
        gt=0.0,
        le=1.0,
        description="Expected calibration error (10 equal-count bins) beyond sampling noise.",
    )
    slices: list[str] = Field(
        default_factory=list,
        description="'view.feature' references of the model whose quantile slices are audited.",
    )
    slice_bins: int = Field(4, ge=2, le=20, description="Quantile bins per slice feature.")
    min_slice_rows: int = Field(50, ge=1, description="Smaller slices are reported, not judged.")
    max_slice_auc_drop: float = Field(
        0.05, ge=0.0, le=1.0, description="AUC a slice may lose to the champion's on it."
    )


class TrainingWindow(_Strict):
    """Which labelled rows a retrain learns from (`services/retrain/core/window.py`).

    - `since_change`: the rows since a drift's change point when the run has one,
      else all history;
    - `all`: all history, even after a change point;
    - `last_labels`: the newest `last_labels` labelled rows (after the change point
      when the run has one);
    - `decay`: all rows (after the change point when the run has one), weighted
      0.5 ** (age / `half_life_s`), age counted back from the newest row.
    """

    window: Literal["all", "since_change", "last_labels", "decay"] = "since_change"
    last_labels: int | None = Field(
        None, ge=2, description="How many of the newest labels to keep (window last_labels)."
    )
    half_life_s: PositiveFloat | None = Field(
        None, description="Age in seconds at which a row weighs half (window decay)."
    )

    @model_validator(mode="after")
    def _policy_has_its_parameter(self) -> TrainingWindow:
        if self.window == "last_labels" and self.last_labels is None:
            raise ValueError(
                "training.window 'last_labels' needs 'last_labels': how many of the newest "
                "labels to train on, e.g. last_labels: 5000"
            )
        if self.window == "decay" and self.half_life_s is None:
            raise ValueError(
                "training.window 'decay' needs 'half_life_s': the age in seconds at which a "
                "row weighs half, e.g. half_life_s: 86400"
            )
        if self.last_labels is not None and self.window != "last_labels":
            raise ValueError(
                f"training.last_labels applies only to window 'last_labels', not "
                f"{self.window!r}: remove it or set window: last_labels"
            )
        if self.half_life_s is not None and self.window != "decay":
            raise ValueError(
                f"training.half_life_s applies only to window 'decay', not {self.window!r}: "
                "remove it or set window: decay"
            )
        return self


class ModelDefinition(_Strict):
    """A LightGBM model over features, trained on labels joined as of prediction time."""

    name: Name
    features: list[str] = Field(description="'view.feature' references.", min_length=1)
    label_horizon_s: float = Field(
        0.0, ge=0.0, description="Labels join features as of event_time minus this horizon."
    )
    lightgbm: dict[str, Any] = Field(
        default_factory=lambda: {"objective": "binary", "num_leaves": 15, "learning_rate": 0.1}
    )
    num_boost_round: int = Field(60, ge=1, le=5000)
    fallback: Fallback = Fallback()
    drift: DriftThresholds = DriftThresholds()
    promotion: PromotionGates = PromotionGates()
    training: TrainingWindow = TrainingWindow()
    retrain_every_s: PositiveFloat | None = Field(
        None,
        description="Optional schedule: a retrain request every this many seconds, on top "
        "of drift events and engineers' requests (the trainer coalesces them).",
    )

    @property
    def is_binary(self) -> bool:
        """True for a binary classifier: its labels must be 0 or 1."""
        return str(self.lightgbm.get("objective", "binary")) in BINARY_OBJECTIVES

    @model_validator(mode="after")
    def _slices_are_features(self) -> ModelDefinition:
        # A slice is cut from the holdout's model inputs, so only the model's own
        # features exist there to slice by.
        for ref in self.promotion.slices:
            if ref not in self.features:
                raise ValueError(
                    f"model {self.name!r}: promotion slice {ref!r} is not one of its "
                    f"features; use one of {self.features}"
                )
        return self

    @model_validator(mode="after")
    def _companion_inputs_are_features(self) -> ModelDefinition:
        # Refused at start, not at the first retrain, where it would only be logged.
        self.fallback.companion.check_features(self.name, self.features)
        return self


class Definitions(_Strict):
    """The whole definitions file, cross-checked: every reference resolves."""

    sources: list[SourceDefinition]
    feature_views: list[FeatureView]
    models: list[ModelDefinition]

    @model_validator(mode="after")
    def _references_resolve(self) -> Definitions:
        sources = {s.name: s for s in self.sources}
        for kind, items in (
            ("source", self.sources),
            ("feature view", self.feature_views),
            ("model", self.models),
        ):
            names = [i.name for i in items]
            if len(set(names)) != len(names):
                raise ValueError(f"duplicate {kind} names in {names}")
        views = {v.name: v for v in self.feature_views}
        for view in self.feature_views:
            if view.source not in sources:
                raise ValueError(
                    f"feature view {view.name!r} reads unknown source {view.source!r}; "
                    f"known: {sorted(sources)}"
                )
            fields = sources[view.source].fields
            for f in view.features:
                if f.field not in fields:
                    raise ValueError(
                        f"feature {view.name}.{f.name} reads unknown field {f.field!r} of "
                        f"source {view.source!r}; known: {sorted(fields)}"
                    )
                numeric = fields[f.field].type != FieldType.str
                if f.agg in NUMERIC_AGGREGATIONS and not numeric:
                    raise ValueError(
                        f"feature {view.name}.{f.name}: agg {f.agg!r} needs a numeric field, "
                        f"{f.field!r} is str (use 'fraction' with 'equals', or 'last' for a "
                        "categorical feature)"
                    )
        for model in self.models:
            entities = set()
            for ref in model.features:
                view_name, _, feat = ref.partition(".")
                found = views.get(view_name)
                if found is None or feat not in {f.name for f in found.features}:
                    raise ValueError(
                        f"model {model.name!r} uses unknown feature {ref!r}; "
                        f"write it as 'view.feature'"
                    )
                entities.add(sources[found.source].entity)
            if len(entities) > 1:
                raise ValueError(f"model {model.name!r} mixes entities {sorted(entities)}")
        return self

    def source(self, name: str) -> SourceDefinition:
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(name)

    def view(self, name: str) -> FeatureView:
        for v in self.feature_views:
            if v.name == name:
                return v
        raise KeyError(name)

    def model(self, name: str) -> ModelDefinition:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)

    def is_categorical(self, ref: str) -> bool:
        """True when the 'view.feature' reference is the `last` of a str field."""
        view_name, _, feat = ref.partition(".")
        view = self.view(view_name)
        spec = next(f for f in view.features if f.name == feat)
        field_type = self.source(view.source).fields[spec.field].type
        return spec.agg == "last" and field_type == FieldType.str

    def views_of_source(self, source: str) -> list[FeatureView]:
        return [v for v in self.feature_views if v.source == source]

    def retention_of(self, source: str) -> float:
        """Event history the online state keeps for `source`.

        The longest retention or window over the source's views; the streaming path
        trims to it and training replays the same trimming, so both see the same events.
        """
        views = self.views_of_source(source)
        return max((max(v.retention_s, v.max_window_s) for v in views), default=3600.0)

    def views_of_model(self, model: ModelDefinition) -> list[FeatureView]:
        names = dict.fromkeys(ref.partition(".")[0] for ref in model.features)
        return [self.view(n) for n in names]

    @property
    def default_model(self) -> str:
        return self.models[0].name


def parse_definitions(data: Any, *, origin: str = "<definitions>") -> Definitions:
    """Validate raw data (already parsed YAML) into Definitions.

    Raises:
        DefinitionsError: naming the file and every offending location.
    """
    try:
        return Definitions.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            lines.append(f"  {loc}: {err['msg']}")
        raise DefinitionsError(f"{origin} is invalid:\n" + "\n".join(lines)) from None


def load_definitions(path: Path | str) -> Definitions:
    """Read and validate a definitions file (YAML)."""
    path = Path(path)
    if not path.is_file():
        raise DefinitionsError(
            f"definitions file {str(path)!r} not found; set SIGNALOPS_DEFINITIONS to its path"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DefinitionsError(f"{path} is not valid YAML: {exc}") from None
    return parse_definitions(data, origin=str(path))


def feature_key(ref: str) -> str:
    """Column name of a 'view.feature' reference in training frames and model inputs."""
    if not re.match(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$", ref):
        raise ValueError(f"bad feature reference {ref!r}")
    return ref.replace(".", "__")
