"""The prediction routes parse their bodies themselves; the OpenAPI document still shows
them, and bad bodies or flags get the API's 422 answer."""

from __future__ import annotations


async def test_prediction_routes_document_body_and_parameters(make_harness) -> None:  # type: ignore[no-untyped-def]
    """/v1/predict and /v1/predict/batch list their JSON body, `explain`, `X-Priority` and
    `X-Deadline-Ms`, with nested models inlined."""
    h = await make_harness()
    doc = (await h.client.get("/openapi.json")).json()
    for path, field in (("/v1/predict", "entity_id"), ("/v1/predict/batch", "requests")):
        op = doc["paths"][path]["post"]
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        assert field in schema["properties"] and field in schema["required"]
        assert {p["name"] for p in op["parameters"]} == {"explain", "x-priority", "x-deadline-ms"}
    batch = doc["paths"]["/v1/predict/batch"]["post"]["requestBody"]["content"]
    item = batch["application/json"]["schema"]["properties"]["requests"]["items"]
    assert "entity_id" in item["properties"]  # nested model inlined, no dangling $ref


async def test_bad_bodies_and_flags_are_422_located(make_harness) -> None:  # type: ignore[no-untyped-def]
    """A missing field, a body that is not JSON and a bad `explain` each answer 422 with
    the API's error shape, naming where the problem is."""
    h = await make_harness()
    missing = await h.client.post("/v1/predict", json={"model": "default"})
    assert missing.status_code == 422 and missing.json()["error"] == "invalid_request"
    assert "body.entity_id" in missing.json()["message"]
    garbage = await h.client.post("/v1/predict", content=b"\xff{not json")
    assert garbage.status_code == 422 and garbage.json()["error"] == "invalid_request"
    flag = await h.client.post("/v1/predict?explain=maybe", json={"entity_id": "e"})
    assert flag.status_code == 422 and "query.explain" in flag.json()["message"]
    ok = await h.client.post("/v1/predict?explain=1", json={"entity_id": "e"})
    assert ok.status_code == 200
