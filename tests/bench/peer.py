"""The peer: the same ActivityDefinitions served by fhirstarter, as its README shows a read handler.

    .bench-venv/bin/python tests/bench/peer.py PORT DATA

Runs only in the bench environment (`.bench-venv`, created by `python -m tests.bench` with pip), never
in the project's: fhirstarter pins a FastAPI older than Cicatrix's. DATA maps `/fhir/ActivityDefinition/<id>`
to the bytes Cicatrix served; the handler validates them into the R4B model on every read and returns
the model, which fhirstarter serialises (what its README's `Patient.model_validate_json(...)` does).
uvicorn runs with the settings `cicatrix serve` uses. This file imports nothing from `services`.
"""

import json
import os
import sys

os.environ.setdefault("FHIR_SEQUENCE", "R4B")

import uvicorn  # noqa: E402
from fhir.resources.R4B.activitydefinition import ActivityDefinition  # noqa: E402
from fhirstarter import FHIRProvider, FHIRStarter, InteractionContext  # noqa: E402
from fhirstarter.exceptions import FHIRResourceNotFoundError  # noqa: E402


def create_app(database: dict[str, str]) -> FHIRStarter:
    app = FHIRStarter(title="fhirstarter peer")
    provider = FHIRProvider()

    @provider.read(ActivityDefinition)
    async def activitydefinition_read(context: InteractionContext, id_: str) -> ActivityDefinition:
        stored = database.get(id_)
        if not stored:
            raise FHIRResourceNotFoundError
        return ActivityDefinition.model_validate_json(stored)

    app.add_providers(provider)
    return app


def main() -> int:
    port, data = int(sys.argv[1]), sys.argv[2]
    with open(data) as handle:
        bodies = json.load(handle)
    database = {path.rsplit("/", 1)[1]: body for path, body in bodies.items()}
    uvicorn.run(create_app(database), host="127.0.0.1", port=port, log_level="warning", access_log=False,
                proxy_headers=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
