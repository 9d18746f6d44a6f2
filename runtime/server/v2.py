"""Open Inference Protocol (KServe v2) over REST, with Triton's binary tensor data extension."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from runtime.server.context import HOST, endpoint, json_response, read_body, read_json
from runtime.server.errors import BadRequest, ModelFailure, ModelNotFound, ServerError, status_of

SERVER_NAME = "zeroserve"
SERVER_VERSION = "0.1.0"
HEADER_LENGTH = "Inference-Header-Content-Length"


def render_error(error: ServerError) -> web.Response:
    return json_response({"error": error.message}, status_of(error))


def _check_version(request: web.Request) -> None:
    version = request.match_info.get("version")
    host = request.app[HOST]
    if version is not None and version != host.model.version:
        raise ModelNotFound(f"model {host.name!r} has no version {version!r}")


@endpoint("v2", render_error)
async def server_metadata(request: web.Request) -> web.Response:
    return json_response(
        {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": ["binary_tensor_data"]}
    )


@endpoint("v2", render_error)
async def live(request: web.Request) -> web.Response:
    return json_response({"live": True})


@endpoint("v2", render_error)
async def server_ready(request: web.Request) -> web.Response:
    host = request.app[HOST]
    return json_response({"ready": host.ready, "state": host.state}, 200 if host.ready else 503)


@endpoint("v2", render_error)
async def model_metadata(request: web.Request) -> web.Response:
    host = request.app[HOST]
    host.require(request.match_info["name"])
    _check_version(request)
    model = host.model
    return json_response(
        {
            "name": host.name,
            "versions": [model.version],
            "platform": model.platform,
            "inputs": [spec.metadata() for spec in model.inputs],
            "outputs": [spec.metadata() for spec in model.outputs],
        }
    )


@endpoint("v2", render_error)
async def model_ready(request: web.Request) -> web.Response:
    host = request.app[HOST]
    host.require(request.match_info["name"])
    _check_version(request)
    return json_response({"name": host.name, "ready": host.ready}, 200 if host.ready else 503)


@endpoint("v2", render_error)
async def model_stats(request: web.Request) -> web.Response:
    host = request.app[HOST]
    host.require(request.match_info["name"])
    return json_response(host.stats())


async def _read_request(request: web.Request) -> tuple[Any, memoryview | None]:
    header_length = request.headers.get(HEADER_LENGTH)
    if header_length is None:
        return await read_json(request), None
    raw = await read_body(request)
    try:
        length = int(header_length)
        if not 0 < length <= len(raw):
            raise ValueError(f"{length} is outside the {len(raw)}-byte body")
        body = json.loads(raw[:length])
    except ValueError as e:
        raise BadRequest(f"bad {HEADER_LENGTH}: {e}") from e
    return body, memoryview(raw)[length:]


@endpoint("v2", render_error, inference=True)
async def infer(request: web.Request) -> web.Response:
    # numpy comes with the first tensor request (a model that uses tensors has imported it already).
    import numpy as np

    from runtime.server import tensors

    host = request.app[HOST]
    _check_version(request)
    body, binary = await _read_request(request)
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise BadRequest("request must be an object with an 'inputs' list")
    declared = {spec.name: spec for spec in host.model.inputs}
    arrays = {}
    offset = 0
    for tensor in body["inputs"]:
        array, offset = tensors.parse_input(tensor, binary, offset)
        name = tensor["name"]
        if name in arrays:
            raise BadRequest(f"input {name} given twice")
        if declared:
            if name not in declared:
                raise BadRequest(f"unexpected input {name}; model inputs are {sorted(declared)}")
            declared[name].check(tensor["datatype"], array.shape)
            array = tensors.coerce(declared[name], array)
        arrays[name] = array
    missing = sorted(set(declared) - set(arrays))
    if missing:
        raise BadRequest(f"missing inputs {missing}")

    results = await host.predict(arrays)

    params = body.get("parameters") or {}
    binary_default = bool(params.get("binary_data_output", False)) if isinstance(params, dict) else False
    wanted = body.get("outputs")
    if wanted is None:
        selected = [(name, binary_default) for name in results]
    elif isinstance(wanted, list) and all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in wanted
    ):
        selected = []
        for out in wanted:
            if out["name"] not in results:
                raise BadRequest(f"unknown output {out['name']}; model outputs are {sorted(results)}")
            out_params = out.get("parameters") or {}
            selected.append((out["name"], bool(out_params.get("binary_data", binary_default))))
    else:
        raise BadRequest("'outputs' must be a list of objects with a name")

    outputs, blobs = [], []
    for name, as_binary in selected:
        try:
            encoded, raw = tensors.encode_output(name, np.asarray(results[name]), as_binary)
        except ValueError as e:  # a dtype with no Open Inference datatype (complex, datetime...)
            raise ModelFailure(f"output {name}: {e}") from e
        outputs.append(encoded)
        blobs.append(raw)
    response: dict[str, Any] = {
        "model_name": host.name,
        "model_version": host.model.version,
        "outputs": outputs,
    }
    if "id" in body:
        response["id"] = body["id"]
    header = json.dumps(response, separators=(",", ":")).encode()
    if not any(blobs):
        return web.Response(body=header, content_type="application/json")
    return web.Response(
        body=header + b"".join(blobs),
        content_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/v2", server_metadata)
    r.add_get("/v2/health/live", live)
    r.add_get("/v2/health/ready", server_ready)
    for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        r.add_get(base, model_metadata)
        r.add_get(base + "/ready", model_ready)
        r.add_post(base + "/infer", infer)
    r.add_get("/v2/models/{name}/stats", model_stats)
