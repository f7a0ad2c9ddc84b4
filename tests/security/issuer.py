"""A token issuer for tests: real keys, a real JWK Set, real signed JWTs (PyJWT), as an IdP would make them."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ISSUER = "https://auth.hospital.test/realms/cicatrix"
AUDIENCE = "https://careplan.hospital.test/fhir"


def _public_jwk(key: Any, kid: str, alg: str) -> dict[str, Any]:
    jwk = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(key.public_key()))
    return jwk | {"kid": kid, "use": "sig", "alg": alg}


@dataclass
class Issuer:
    rsa_key: Any = field(default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048))
    ec_key: Any = field(default_factory=lambda: ec.generate_private_key(ec.SECP384R1()))
    issuer: str = ISSUER
    audience: str = AUDIENCE

    @property
    def jwks(self) -> dict[str, Any]:
        return {"keys": [_public_jwk(self.rsa_key, "rsa-1", "RS384"), _public_jwk(self.ec_key, "ec-1", "ES384")]}

    def write_jwks(self, folder: Path) -> Path:
        path = folder / "jwks.json"
        path.write_text(json.dumps(self.jwks))
        return path

    def settings(self, jwks_file: Path) -> dict[str, Any]:
        """Service settings (without prefix) that trust this issuer."""
        return {"AUTH_MODE": "jwt", "AUTH_JWKS_FILE": jwks_file, "AUTH_ISSUER": self.issuer,
                "AUTH_AUDIENCE": self.audience}

    def claims(self, scope: str, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": self.audience, "sub": "clinician-7", "client_id": "ehr-engine",
                  "iat": now, "exp": now + 300, "scope": scope}
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, scope: str = "", *, alg: str = "RS384", kid: str | None = None, key: Any = None,
              headers: dict[str, Any] | None = None, **claims: Any) -> str:
        """A signed access token. `kid` defaults to the signing key's own ('' leaves it out); claims given as
        None are left out."""
        if key is None:
            key = self.ec_key if alg.startswith("ES") else self.rsa_key
        header = {"kid": ("ec-1" if alg.startswith("ES") else "rsa-1") if kid is None else kid, **(headers or {})}
        if not header["kid"]:
            del header["kid"]
        return jwt.encode(self.claims(scope, **claims), key, algorithm=alg, headers=header)

    def bearer(self, scope: str = "", **kwargs: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(scope, **kwargs)}"}
