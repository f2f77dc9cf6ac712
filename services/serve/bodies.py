"""Prediction request bodies parsed straight from their bytes, with FastAPI's 422 shape.

The two prediction routes do not let FastAPI solve and validate their parameters:
that cost more than the rest of a single prediction (issue 8 profile, py-spy). The
OpenAPI document still shows the same bodies and parameters (`prediction_openapi`),
and a bad body gets the same 422 answer as on every other route.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

_Body = TypeVar("_Body", bound=BaseModel)

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


async def parsed(request: Request, model: type[_Body]) -> _Body:
    """The request body validated as `model`.

    Raises:
        RequestValidationError: located under "body", as FastAPI raises it.
    """
    raw = await request.body()
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        error = exc
    if any(e["type"] == "json_invalid" for e in error.errors()):
        # pydantic's parser refuses JSON that Python's accepts (a lone surrogate
        # escape); parse as FastAPI does, so such a body gets the same field errors.
        try:
            return model.model_validate(json.loads(raw))
        except ValidationError as exc:
            error = exc
        except ValueError:  # not JSON at all, or not UTF-8: the json_invalid error stands
            pass
    errors = [
        {**e, "loc": ("body", *e["loc"])}
        for e in error.errors(include_url=False, include_context=False)
    ]
    raise RequestValidationError(errors, body=raw) from None


def explain_flag(request: Request) -> bool:
    """`?explain=` as a boolean (FastAPI's accepted spellings).

    Raises:
        RequestValidationError: naming the query parameter.
    """
    value = request.query_params.get("explain", "false").lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise RequestValidationError(
        [{"loc": ("query", "explain"), "msg": "must be a boolean", "type": "bool_parsing"}]
    )


_PARAMETERS = [
    {
        "name": "explain",
        "in": "query",
        "required": False,
        "schema": {"type": "boolean", "default": False},
        "description": "Add per-feature contributions.",
    },
    {
        "name": "x-priority",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "enum": ["high", "normal", "low"]},
        "description": "high, normal (default) or low",
    },
    {
        "name": "x-deadline-ms",
        "in": "header",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": 3_600_000},
        "description": "Budget in ms from arrival; default SIGNALOPS_SERVE_DEFAULT_DEADLINE_MS.",
    },
]


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    # A body's nested models inline: its "$defs" mean nothing inside an OpenAPI document.
    if isinstance(node, dict):
        ref = node.get("$ref", "")
        if ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def prediction_openapi(body: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` of a prediction route whose body FastAPI does not parse itself."""
    schema = body.model_json_schema()
    schema = _inline(schema, schema.pop("$defs", {}))
    return {
        "parameters": _PARAMETERS,
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
    }
