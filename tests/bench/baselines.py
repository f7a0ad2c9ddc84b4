"""The baselines the Cicatrix figures are divided by, each served by uvicorn exactly as `cicatrix serve` runs a service.

    python -m tests.bench.baselines KIND PORT DATA

DATA is a JSON file mapping request paths (with their query strings) to the response bodies Cicatrix gave for
them, so every baseline answers with the very same bytes. KIND is one of:

- `bare`: a Starlette app, one route, the bytes from a dict (what the issue calls the bare baseline);
- `fastapi-bytes`: a FastAPI route returning the stored bytes (how far FastAPI's own routing gets);
- `fastapi-model`: a FastAPI route that validates the R4B model on every read and serialises it again
  (what a framework built on fhir.resources does per read).

The last two are context for the peer comparison; the targets are ratios to `bare`.
"""

import json
import os
import sys
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from starlette.responses import Response

FHIR_JSON = "application/fhir+json; charset=utf-8"


def _bodies(path: str) -> dict[str, bytes]:
    with open(path) as handle:
        return {k: v.encode() for k, v in json.load(handle).items()}


def bare_app(bodies: dict[str, bytes]) -> Any:
    from starlette.applications import Starlette
    from starlette.routing import Route

    def key(request: Request) -> str:
        query = request.url.query
        return request.url.path + ("?" + query if query else "")

    async def answer(request: Request) -> Response:
        await request.body()  # a POST's body is read, as a real handler would
        body = bodies.get(key(request))
        if body is None:
            return Response(b'{"resourceType":"OperationOutcome"}', status_code=404, media_type=FHIR_JSON)
        return Response(body, media_type=FHIR_JSON, headers={"ETag": 'W/"1"'})

    return Starlette(routes=[Route("/fhir/{resource_type}/{resource_id}", answer, methods=["GET", "POST"]),
                             Route("/fhir/{resource_type}", answer, methods=["GET", "POST"])])


def fastapi_bytes_app(bodies: dict[str, bytes]) -> Any:
    app = FastAPI()

    @app.get("/fhir/{resource_type}/{resource_id}")
    def read(resource_type: str, resource_id: str, request: Request) -> Response:
        body = bodies.get(f"/fhir/{resource_type}/{resource_id}")
        if body is None:
            return Response(b'{"resourceType":"OperationOutcome"}', status_code=404, media_type=FHIR_JSON)
        return Response(body, media_type=FHIR_JSON, headers={"ETag": 'W/"1"'})

    return app


def fastapi_model_app(bodies: dict[str, bytes]) -> Any:
    from fhir.resources.R4B import get_fhir_model_class

    app = FastAPI()
    stored = {path: json.loads(body) for path, body in bodies.items()}

    @app.get("/fhir/{resource_type}/{resource_id}")
    def read(resource_type: str, resource_id: str) -> Response:
        data = stored.get(f"/fhir/{resource_type}/{resource_id}")
        if data is None:
            return Response(b'{"resourceType":"OperationOutcome"}', status_code=404, media_type=FHIR_JSON)
        model = get_fhir_model_class(resource_type).model_validate(data)
        return Response(model.model_dump_json(by_alias=True, exclude_none=True), media_type=FHIR_JSON,
                        headers={"ETag": 'W/"1"'})

    return app


KINDS = {"bare": bare_app, "fastapi-bytes": fastapi_bytes_app, "fastapi-model": fastapi_model_app}


def main() -> int:
    kind, port, data = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    app = KINDS[kind](_bodies(data))
    # The settings `cicatrix serve` uses (services/cli.py), on the same server stack as the catalog it is measured
    # against, so only the application differs.
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, proxy_headers=True,
                http=os.environ.get("CATALOG_HTTP", "httptools"), loop=os.environ.get("CATALOG_LOOP", "uvloop"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
