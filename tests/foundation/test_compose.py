"""docker-compose.yml cannot run here (no Docker engine), so its contract with the code is checked instead."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from services.careplan.settings import CareplanSettings
from services.catalog.settings import CatalogSettings
from services.cli import main

ROOT = Path(__file__).resolve().parents[2]
PREFIXES = {"CATALOG_": CatalogSettings, "CAREPLAN_": CareplanSettings}


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_every_cicatrix_environment_name_is_a_setting():
    unknown = []
    for name, service in compose()["services"].items():
        for key in (service.get("environment") or {}):
            for prefix, settings in PREFIXES.items():
                if key.startswith(prefix) and key[len(prefix):] not in settings.model_fields:
                    unknown.append(f"{name}: {key}")
    assert not unknown, f"compose sets names no settings class reads: {unknown}"


def test_the_stack_has_its_services_with_health_checks():
    services = compose()["services"]
    assert {"postgres", "catalog", "careplan", "dispatcher", "ehr"} <= set(services)
    for name in ("postgres", "catalog", "careplan", "ehr"):
        assert "healthcheck" in services[name], name
    assert services["careplan"]["environment"]["CAREPLAN_EHR_BASE_URL"].startswith("http://ehr:")


def test_services_wait_for_healthy_dependencies():
    services = compose()["services"]
    assert services["careplan"]["depends_on"]["catalog"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_the_commands_exist_in_the_cli():
    for name, service in compose()["services"].items():
        command = service.get("command")
        if not command or command[0] != "cicatrix" or command[1] == "dispatch":
            continue
        with pytest.raises(SystemExit) as exit_info:
            main([*command[1:], "--help"])
        assert exit_info.value.code == 0, name
