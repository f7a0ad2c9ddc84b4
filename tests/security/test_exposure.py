"""A service never listens beyond loopback unauthenticated by accident; jwt mode is never half-configured."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
from fastapi.testclient import TestClient

from services.careplan.settings import CareplanSettings
from services.catalog.settings import CatalogSettings
from services.fhir.auth import InsecureExposure, check_exposure, is_loopback
from tests.support.apps import careplan_app, catalog_app


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("10.1.2.3", False), ("careplan.hospital.internal", False),
])
def test_loopback_addresses_are_recognised(host, loopback):
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(("factory", "prefix"), [(catalog_app, "CATALOG_"), (careplan_app, "CAREPLAN_")])
def test_a_service_on_a_public_address_with_auth_off_refuses_to_start_and_says_why(tmp_path, factory, prefix):
    app = factory(f"sqlite:///{tmp_path}/x.db", HOST="0.0.0.0", LOG_LEVEL="WARNING")
    with pytest.raises(InsecureExposure) as info, TestClient(app):
        pass
    message = str(info.value)
    hints = (f"{prefix}HOST=0.0.0.0", f"{prefix}AUTH_MODE=jwt", f"{prefix}ALLOW_INSECURE=true", "README.md#security")
    for hint in hints:
        assert hint in message
    assert not (tmp_path / "x.db").exists() or (tmp_path / "x.db").stat().st_size == 0, "nothing was migrated"


def test_allow_insecure_is_an_explicit_logged_choice(tmp_path, caplog):
    app = catalog_app(f"sqlite:///{tmp_path}/x.db", content_dir=None, HOST="0.0.0.0", ALLOW_INSECURE=True,
                      LOG_LEVEL="WARNING")
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
    assert any("ALLOW_INSECURE" in record.getMessage() for record in caplog.records)


def test_jwt_mode_on_a_public_address_starts(tmp_path, issuer, jwks_file):
    app = catalog_app(f"sqlite:///{tmp_path}/x.db", content_dir=None, HOST="0.0.0.0", LOG_LEVEL="WARNING",
                      **issuer.settings(jwks_file))
    with TestClient(app) as client:
        assert client.get("/fhir/Medication").status_code == 401


def test_loopback_with_auth_off_is_the_unconfigured_default():
    check_exposure(CatalogSettings(), "catalog")
    check_exposure(CareplanSettings(), "careplan")


@pytest.mark.parametrize(("settings", "complaint"), [
    ({"AUTH_MODE": "jwt"}, "CAREPLAN_AUTH_ISSUER"),
    ({"AUTH_MODE": "jwt", "AUTH_ISSUER": "i", "AUTH_AUDIENCE": "a"}, "exactly one of CAREPLAN_AUTH_JWKS_URL"),
    ({"AUTH_MODE": "jwt", "AUTH_ISSUER": "i", "AUTH_AUDIENCE": "a", "AUTH_JWKS_URL": "https://x",
      "AUTH_JWKS_FILE": "/x"}, "exactly one of"),
    ({"AUTH_ALGORITHMS": "RS256,HS256"}, "refused: HS256"),
    ({"AUTH_ALGORITHMS": "none"}, "refused: none"),
    ({"AUTH_LEEWAY_SECONDS": 3600}, "between 0 and 300"),
])
def test_incomplete_or_unsafe_auth_settings_are_refused(settings, complaint):
    with pytest.raises(pydantic.ValidationError) as info:
        CareplanSettings(**settings)
    assert complaint in str(info.value)


def test_settings_come_from_prefixed_environment_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("CATALOG_AUTH_MODE", "jwt")
    monkeypatch.setenv("CATALOG_AUTH_JWKS_FILE", str(tmp_path / "jwks.json"))
    monkeypatch.setenv("CATALOG_AUTH_ISSUER", "https://idp.test")
    monkeypatch.setenv("CATALOG_AUTH_AUDIENCE", "https://catalog.test/fhir")
    monkeypatch.setenv("CATALOG_ALLOW_ANONYMOUS_READ", "true")
    monkeypatch.setenv("CATALOG_CORS_ORIGINS", "https://app.test, https://admin.test")
    settings = CatalogSettings()
    assert settings.AUTH_MODE == "jwt" and settings.ALLOW_ANONYMOUS_READ
    assert settings.cors_origins == ["https://app.test", "https://admin.test"]
    assert CareplanSettings().AUTH_MODE == "off", "one service's settings do not leak into the other's"


def test_the_compose_stack_may_start_on_its_container_addresses():
    """docker-compose binds both services to 0.0.0.0: each says explicitly how that is allowed."""
    import yaml

    compose = yaml.safe_load((Path(__file__).resolve().parents[2] / "docker-compose.yml").read_text())
    for name, settings_class in (("catalog", CatalogSettings), ("careplan", CareplanSettings)):
        environment = compose["services"][name]["environment"]
        prefix = settings_class.model_config["env_prefix"]
        values = {k[len(prefix):]: v for k, v in environment.items() if k.startswith(prefix)}
        settings = settings_class(**{k: v for k, v in values.items() if k in ("HOST", "AUTH_MODE", "ALLOW_INSECURE")})
        assert not is_loopback(settings.HOST)
        check_exposure(settings, name)
