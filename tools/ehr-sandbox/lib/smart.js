'use strict';
/**
 * SMART Backend Services (SMART App Launch 2.2, backend-services.html): the token endpoint and its discovery
 * document, so the careplan dispatcher's `CAREPLAN_EHR_AUTH=smart-backend` is tested against a server that
 * really checks what a hospital's authorization server checks.
 *
 *   GET  /fhir/.well-known/smart-configuration   discovery: token_endpoint, signing algorithms, ...
 *   POST /auth/token                             client_credentials with a private_key_jwt client assertion
 *
 * The assertion is verified against the registered client's JWK Set (RS384 or ES384, `kid` required):
 * signature, `iss` = `sub` = client_id, `aud` = this token URL, `exp` in the future and at most five minutes
 * ahead, `jti` never seen before (replays are refused). Errors are OAuth 2.0 JSON (`invalid_client`, ...), status
 * 400. Access tokens are random, short-lived (`accessTokenSeconds`, default 300) and kept in memory; the FHIR
 * endpoint accepts them until they expire or are revoked through the control API (`DELETE /_control/tokens`),
 * which is how a test makes a client meet a 401 with a token it believed valid.
 *
 * Configuration (`config.smart`, from EHR_SANDBOX_SMART_CLIENT_ID + EHR_SANDBOX_SMART_JWKS or /_control/config):
 *   { clientId: "cicatrix-careplan", jwks: { keys: [ { kty, kid, ... public JWK } ] }, accessTokenSeconds: 300 }
 * No private key ever reaches the sandbox.
 */
const crypto = require('node:crypto');
const { JSON_TYPE } = require('./http');

const ALGORITHMS = { RS384: { kty: 'RSA' }, ES384: { kty: 'EC', crv: 'P-384' } };
const ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
const MAX_ASSERTION_LIFETIME_S = 300;
/** Tolerance for the client's clock on `exp` (same machine in tests; a real server allows a little more). */
const CLOCK_SKEW_S = 5;

/** Checks and normalises `config.smart`; throws an Error with a readable message. */
function normaliseSmartConfig(input) {
  if (input === null || input === undefined) {
    return null;
  }
  if (typeof input !== 'object' || Array.isArray(input)) {
    throw new Error('smart must be {"clientId": "...", "jwks": {"keys": [...]}} or null');
  }
  const { clientId, jwks, accessTokenSeconds = 300 } = input;
  if (typeof clientId !== 'string' || !clientId) {
    throw new Error('smart.clientId must be a non-empty string');
  }
  if (!jwks || !Array.isArray(jwks.keys) || jwks.keys.length === 0) {
    throw new Error('smart.jwks must be a JWK Set with at least one key');
  }
  for (const jwk of jwks.keys) {
    if (!jwk || typeof jwk.kid !== 'string' || !jwk.kid) {
      throw new Error('every key of smart.jwks needs a "kid"');
    }
    if (jwk.d !== undefined) {
      throw new Error(`smart.jwks key ${jwk.kid} is a private key; register the public key only`);
    }
    publicKey(jwk); // throws on a malformed key
  }
  if (!Number.isInteger(accessTokenSeconds) || accessTokenSeconds < 1) {
    throw new Error('smart.accessTokenSeconds must be a positive integer');
  }
  return { clientId, jwks: { keys: jwks.keys }, accessTokenSeconds };
}

/** The SMART config from the environment, or null when EHR_SANDBOX_SMART_CLIENT_ID is not set. */
function smartConfigFromEnv(env, readFile) {
  const clientId = env.EHR_SANDBOX_SMART_CLIENT_ID;
  if (!clientId) {
    return null;
  }
  const source = env.EHR_SANDBOX_SMART_JWKS;
  if (!source) {
    throw new Error('EHR_SANDBOX_SMART_CLIENT_ID needs EHR_SANDBOX_SMART_JWKS (a JWK Set, inline or a file path)');
  }
  const text = source.trim().startsWith('{') ? source : readFile(source);
  const seconds = env.EHR_SANDBOX_SMART_TOKEN_SECONDS;
  return normaliseSmartConfig({
    clientId,
    jwks: JSON.parse(text),
    ...(seconds ? { accessTokenSeconds: Number(seconds) } : {}),
  });
}

function publicKey(jwk) {
  return crypto.createPublicKey({ key: jwk, format: 'jwk' });
}

class SmartAuthority {
  /** access token -> { expiresAt (ms), scope } */
  #tokens = new Map();
  /** jti -> expiry (ms) of the assertion that used it; kept until then, after which exp refuses a replay anyway */
  #seenJti = new Map();

  clear() {
    this.#tokens.clear();
    this.#seenJti.clear();
  }

  /** Forgets every issued access token: clients holding one get 401 invalid_token from now on. */
  revokeTokens() {
    const revoked = this.#tokens.size;
    this.#tokens.clear();
    return revoked;
  }

  issuedCount() {
    this.#expire(Date.now());
    return this.#tokens.size;
  }

  /** True when `token` was issued here and has not expired or been revoked. */
  accepts(token) {
    const issued = this.#tokens.get(token);
    if (!issued) {
      return false;
    }
    if (issued.expiresAt <= Date.now()) {
      this.#tokens.delete(token);
      return false;
    }
    return true;
  }

  /** GET [base]/.well-known/smart-configuration */
  discovery(config, rootUrl) {
    if (!config.smart) {
      return oauthError(404, 'not_found', 'SMART Backend Services is not enabled on this sandbox');
    }
    return {
      status: 200,
      headers: {},
      contentType: JSON_TYPE,
      body: {
        issuer: rootUrl,
        token_endpoint: `${rootUrl}/auth/token`,
        token_endpoint_auth_methods_supported: ['private_key_jwt'],
        token_endpoint_auth_signing_alg_values_supported: Object.keys(ALGORITHMS),
        grant_types_supported: ['client_credentials'],
        scopes_supported: ['system/*.cruds', 'system/*.read', 'system/*.write'],
        capabilities: ['client-confidential-asymmetric'],
      },
    };
  }

  /** POST /auth/token: client_credentials with a private_key_jwt assertion. */
  token(config, request, tokenUrl) {
    if (!config.smart) {
      return oauthError(404, 'not_found', 'SMART Backend Services is not enabled on this sandbox');
    }
    if (request.method !== 'POST') {
      return oauthError(405, 'invalid_request', 'The token endpoint only answers POST');
    }
    const type = (request.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
    if (type !== 'application/x-www-form-urlencoded') {
      return oauthError(400, 'invalid_request', 'Send the token request as application/x-www-form-urlencoded');
    }
    const form = new URLSearchParams(request.rawBody.toString('utf8'));
    if (form.get('grant_type') !== 'client_credentials') {
      return oauthError(400, 'unsupported_grant_type', 'Only grant_type=client_credentials is supported');
    }
    if (form.get('client_assertion_type') !== ASSERTION_TYPE) {
      return oauthError(400, 'invalid_request', `client_assertion_type must be ${ASSERTION_TYPE}`);
    }
    const scope = form.get('scope');
    if (!scope) {
      return oauthError(400, 'invalid_scope', 'The scope parameter is required');
    }
    const now = Date.now();
    this.#expire(now);
    const problem = this.#checkAssertion(config.smart, form.get('client_assertion') ?? '', tokenUrl, now);
    if (problem) {
      return oauthError(400, 'invalid_client', problem);
    }
    const accessToken = crypto.randomBytes(32).toString('base64url');
    const seconds = config.smart.accessTokenSeconds;
    this.#tokens.set(accessToken, { expiresAt: now + seconds * 1000, scope });
    return {
      status: 200,
      headers: { 'Cache-Control': 'no-store', Pragma: 'no-cache' },
      contentType: JSON_TYPE,
      body: { access_token: accessToken, token_type: 'bearer', expires_in: seconds, scope },
    };
  }

  /** Undefined when the assertion is acceptable, else why not (for error_description). */
  #checkAssertion(smart, assertion, tokenUrl, now) {
    const parts = assertion.split('.');
    if (parts.length !== 3) {
      return 'client_assertion is not a signed JWT';
    }
    const header = decodeJson(parts[0]);
    const claims = decodeJson(parts[1]);
    if (!header || !claims) {
      return 'client_assertion is not a readable JWT';
    }
    const algorithm = ALGORITHMS[header.alg];
    if (!algorithm) {
      return `alg ${JSON.stringify(header.alg)} is not accepted; use RS384 or ES384`;
    }
    if (header.jku !== undefined) {
      return 'jku is not accepted: this server only uses the JWK Set registered for the client';
    }
    if (typeof header.kid !== 'string') {
      return 'the JWT header needs the kid of the signing key';
    }
    if (claims.iss !== smart.clientId || claims.sub !== smart.clientId) {
      return 'iss and sub must both be the registered client_id';
    }
    const jwk = smart.jwks.keys.find((key) => key.kid === header.kid);
    if (!jwk) {
      return `no registered key has kid ${JSON.stringify(header.kid)}`;
    }
    if (jwk.kty !== algorithm.kty || (algorithm.crv && jwk.crv !== algorithm.crv)) {
      return `key ${header.kid} cannot sign ${header.alg}`;
    }
    const signature = Buffer.from(parts[2], 'base64url');
    const signed = Buffer.from(`${parts[0]}.${parts[1]}`);
    const key = algorithm.kty === 'EC' ? { key: publicKey(jwk), dsaEncoding: 'ieee-p1363' } : publicKey(jwk);
    if (!crypto.verify('sha384', signed, key, signature)) {
      return 'the client_assertion signature does not verify with the registered key';
    }
    const audiences = Array.isArray(claims.aud) ? claims.aud : [claims.aud];
    if (!audiences.includes(tokenUrl)) {
      return `aud must be the token endpoint URL ${tokenUrl}`;
    }
    const nowSeconds = now / 1000;
    if (typeof claims.exp !== 'number') {
      return 'exp is required';
    }
    if (claims.exp <= nowSeconds) {
      return 'the client_assertion has expired';
    }
    if (claims.exp > nowSeconds + MAX_ASSERTION_LIFETIME_S + CLOCK_SKEW_S) {
      return 'exp must be no more than five minutes in the future';
    }
    if (typeof claims.jti !== 'string' || !claims.jti) {
      return 'jti is required';
    }
    if (this.#seenJti.has(claims.jti)) {
      return 'this jti was already used: client assertions cannot be replayed';
    }
    this.#seenJti.set(claims.jti, claims.exp * 1000);
    return undefined;
  }

  #expire(now) {
    for (const [jti, until] of this.#seenJti) {
      if (until <= now) {
        this.#seenJti.delete(jti);
      }
    }
    for (const [token, issued] of this.#tokens) {
      if (issued.expiresAt <= now) {
        this.#tokens.delete(token);
      }
    }
  }
}

function decodeJson(part) {
  try {
    const value = JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
    return value && typeof value === 'object' && !Array.isArray(value) ? value : undefined;
  } catch {
    return undefined;
  }
}

function oauthError(status, error, description) {
  return {
    status,
    headers: { 'Cache-Control': 'no-store' },
    contentType: JSON_TYPE,
    body: { error, error_description: description },
  };
}

module.exports = { SmartAuthority, normaliseSmartConfig, smartConfigFromEnv };
