"""Fuzz of /v1/predict's bodies and headers: only 200 or a 4xx with a message, and no
200 without a valid key when keys are required."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.common.security import presented_key

PREDICT_KEY = "fuzz-predict-key-0123456789"
ADMIN_ONLY_KEY = "fuzz-admin-only-key-0123456789"
LIMITED_KEY = "fuzz-limited-key-0123456789"
KEYS: dict[str, Any] = {
    "app": {"key": PREDICT_KEY, "scopes": ["predict"]},
    "ops": {"key": ADMIN_ONLY_KEY, "scopes": ["admin"]},
    "slow": {"key": LIMITED_KEY, "scopes": ["predict"], "rate_per_s": 5, "burst": 2},
}
MAX_BODY = 4096
PREDICT_CAPABLE = {PREDICT_KEY, LIMITED_KEY, "unit-admin-token"}  # the harness's admin token

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
predict_like = st.fixed_dictionaries(
    {"entity_id": st.text(max_size=40) | json_values},
    optional={
        "model": st.sampled_from(["default", "other", "nope", ""]) | json_values,
        "features": st.dictionaries(
            st.sampled_from(["stats.temp_last", "hourly.temp_max", "x"]), json_values, max_size=3
        ),
    },
)
bodies = st.one_of(
    predict_like.map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=300),  # not JSON, not UTF-8
    predict_like.map(lambda d: json.dumps(d).encode()[:-1]),  # truncated
    st.integers(MAX_BODY - 40, MAX_BODY + 200).map(  # around the size limit
        lambda n: b'{"entity_id": "' + b"a" * n + b'"}'
    ),
    st.integers(1, 60).map(lambda n: b"[" * n + b"]" * n),  # nesting
)
header_bytes = st.binary(max_size=60).filter(lambda b: b"\r" not in b and b"\n" not in b)
key_values = st.sampled_from([PREDICT_KEY, ADMIN_ONLY_KEY, LIMITED_KEY, "", "x" * 16]) | st.text(
    st.characters(min_codepoint=33, max_codepoint=126), max_size=40
)
headers = st.fixed_dictionaries(
    {},
    optional={
        "authorization": st.one_of(
            key_values.map(lambda k: f"Bearer {k}".encode()),
            key_values.map(lambda k: f"basic {k}".encode()),
            header_bytes,
        ),
        "x-api-key": key_values.map(str.encode) | header_bytes,
        "x-priority": st.sampled_from([b"high", b"normal", b"low", b"", b"urgent"]) | header_bytes,
        "content-type": st.sampled_from(
            [b"application/json", b"text/plain", b"application/x-www-form-urlencoded"]
        )
        | header_bytes,
    },
)

_harnesses: dict[tuple[int, bool], Any] = {}


async def _harness(make_harness: Any, required: bool) -> Any:
    # One harness per test (not per example): building a service costs more than a call.
    key = (id(make_harness), required)
    if key not in _harnesses:
        _harnesses[key] = await make_harness(
            api_keys=KEYS, require_predict_key=required, serve_max_body_bytes=MAX_BODY
        )
    return _harnesses[key]


async def _check(h: Any, body: bytes, sent: dict[str, bytes], required: bool) -> None:
    r = await h.client.post("/v1/predict", content=body, headers=sent)
    assert r.status_code == 200 or 400 <= r.status_code < 500, (r.status_code, r.text)
    doc = r.json()
    if r.status_code == 200:
        assert doc["entity_id"] and doc["model"]["name"]
        if required:
            decoded = {k: v.decode("latin-1") for k, v in sent.items()}
            assert presented_key(decoded) in PREDICT_CAPABLE, "a 200 without a predict key"
    else:
        assert doc["error"] and doc["message"], doc


@FUZZ
@given(body=bodies, sent=headers)
async def test_fuzzed_predict_answers_200_or_4xx_with_keys_required(
    make_harness, body: bytes, sent: dict[str, bytes]
) -> None:
    """Keys required: any body and headers give 200 (with a predict key) or a 4xx."""
    await _check(await _harness(make_harness, True), body, sent, required=True)


@FUZZ
@given(body=bodies, sent=headers)
async def test_fuzzed_predict_answers_200_or_4xx_in_development(
    make_harness, body: bytes, sent: dict[str, bytes]
) -> None:
    """Keyless development mode: any body and headers give 200 or a 4xx, never a 5xx."""
    await _check(await _harness(make_harness, False), body, sent, required=False)
