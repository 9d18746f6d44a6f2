"""KServe v1 (TensorFlow-Serving-style) protocol: model list, readiness and ``:predict``.

``GET /v1/models`` and ``GET /v1/models/{name}`` are shared with the OpenAI API, which uses the same
paths: for a text generation model the answer carries both shapes' fields (``models``/``ready``
for KServe, ``object``/``data``/``id`` for OpenAI), so either kind of client reads it.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from runtime.server.context import HOST, endpoint, json_response, read_json
from runtime.server.errors import BadRequest, ModelFailure, ServerError, status_of
from runtime.server.host import ModelHost

# OpenAI's model object has a creation time; a replica's is its process start.
_CREATED = int(time.time())


def render_error(error: ServerError) -> web.Response:
    return json_response({"error": error.message}, status_of(error))


def _openai_model(host: ModelHost) -> dict[str, Any]:
    owned_by = getattr(host.model, "owned_by", "zeroserve")
    return {"id": host.name, "object": "model", "created": _CREATED, "owned_by": owned_by}


@endpoint("v1", render_error)
async def list_models(request: web.Request) -> web.Response:
    host = request.app[HOST]
    body: dict[str, Any] = {"models": [host.name]}
    if host.generative:
        body.update({"object": "list", "data": [_openai_model(host)]})
    return json_response(body)


@endpoint("v1", render_error)
async def model_ready(request: web.Request) -> web.Response:
    host = request.app[HOST]
    host.require(request.match_info["name"])
    body: dict[str, Any] = {"name": host.name, "ready": host.ready}
    if host.generative:
        body.update(_openai_model(host))
    if not host.ready:
        body["error"] = f"model {host.name!r} is not ready ({host.state})"
    return json_response(body, 200 if host.ready else 503)


def _shape_of(data: Any) -> tuple[int, ...]:
    shape = []
    while isinstance(data, list):
        shape.append(len(data))
        data = data[0] if data else None
    return tuple(shape)


def _instances_to_arrays(host: ModelHost, instances: list[Any]) -> dict[str, Any]:
    from runtime.server.tensors import decode_json  # numpy only once tensors are in play

    specs = list(host.model.inputs)
    if not specs:
        raise BadRequest(f"model {host.name!r} declares no inputs")
    if len(specs) == 1 and not (instances and isinstance(instances[0], dict)):
        spec = specs[0]
        shape = _shape_of(instances)
        array = decode_json(spec.name, spec.datatype, shape, instances)
        spec.check(spec.datatype, array.shape)
        return {spec.name: array}
    # Several inputs: each instance is an object keyed by input name (KServe's "columnar" form).
    if not all(isinstance(i, dict) for i in instances):
        raise BadRequest(
            f"model {host.name!r} has inputs {[s.name for s in specs]}; "
            "each instance must be an object keyed by input name"
        )
    arrays = {}
    for spec in specs:
        column = [i.get(spec.name) for i in instances]
        if any(v is None for v in column):
            raise BadRequest(f"every instance needs input {spec.name}")
        array = decode_json(spec.name, spec.datatype, _shape_of(column), column)
        spec.check(spec.datatype, array.shape)
        arrays[spec.name] = array
    return arrays


@endpoint("v1", render_error, inference=True)
async def predict(request: web.Request) -> web.Response:
    host = request.app[HOST]
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest("request must be a JSON object with 'instances'")
    instances = body.get("instances", body.get("inputs"))
    if not isinstance(instances, list):
        raise BadRequest("request must have an 'instances' list")
    import numpy as np

    from runtime.server.tensors import encode_output

    results = await host.predict(_instances_to_arrays(host, instances))
    # v1 has one answer per instance: the model's first declared output (or its only one).
    names = [spec.name for spec in host.model.outputs] or list(results)
    if not names or names[0] not in results:
        raise ModelFailure(f"predict() returned {sorted(results)}, no {names[0] if names else 'output'}")
    primary = np.asarray(results[names[0]])
    try:
        encoded, _ = encode_output(names[0], primary, binary=False)
    except ValueError as e:
        raise ModelFailure(f"output {names[0]}: {e}") from e
    flat = encoded["data"]
    predictions = np.asarray(flat, dtype=object).reshape(primary.shape).tolist() if primary.ndim > 1 else flat
    return json_response({"predictions": predictions})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{name:[^/:]+}", model_ready)
    app.router.add_post("/v1/models/{name:[^/:]+}:predict", predict)
