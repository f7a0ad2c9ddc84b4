'use strict';
/**
 * Authentication of FHIR requests.
 *
 * Today: none, or one static bearer token (`EHR_SANDBOX_TOKEN`, or `{"token": ...}` on /_control/config).
 * `GET /fhir/metadata` stays open, as on real servers, so a client can discover the server before it has a token.
 *
 * Extension point: SMART Backend Services. A token endpoint (client_credentials with a private_key_jwt
 * assertion) would live in its own module, mounted by app.js beside /fhir (see ROUTES there) together with
 * `/fhir/.well-known/smart-configuration`; the tokens it issues would be added to what `authenticate` accepts,
 * and `securityFor` would describe it in the CapabilityStatement (rest.security.service = SMART-on-FHIR).
 */
const { outcomeAnswer } = require('./http');

/** Paths under /fhir that need no token. */
const OPEN_PATHS = new Set(['/fhir/metadata']);

/**
 * Returns undefined when the request may proceed, or the 401 answer to send.
 * @param config - the runtime config ({ token })
 */
function authenticate(config, method, path, headers) {
  if (!config.token || OPEN_PATHS.has(path)) {
    return undefined;
  }
  const header = headers.authorization ?? '';
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
  if (match && match[1] === config.token) {
    return undefined;
  }
  const challenge = header ? 'Bearer error="invalid_token"' : 'Bearer';
  const why = header ? 'The bearer token is not valid' : 'This server requires Authorization: Bearer <token>';
  return outcomeAnswer(401, why, { 'WWW-Authenticate': challenge });
}

/** CapabilityStatement.rest.security for the current config, or undefined when the server is open. */
function securityFor(config) {
  if (!config.token) {
    return undefined;
  }
  return {
    description: 'Requests other than GET [base]/metadata need Authorization: Bearer <token> (a static token).',
  };
}

module.exports = { authenticate, securityFor };
