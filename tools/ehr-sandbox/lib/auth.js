'use strict';
/**
 * Authentication of FHIR requests.
 *
 * None; one static bearer token (`EHR_SANDBOX_TOKEN`, or `{"token": ...}` on /_control/config); and/or access
 * tokens issued by the SMART Backend Services token endpoint (lib/smart.js, `config.smart`). When both are
 * configured either kind of token is accepted. `GET /fhir/metadata` and the SMART discovery document stay open,
 * as on real servers, so a client can discover the server before it has a token.
 */
const { outcomeAnswer } = require('./http');

/** Paths under /fhir that need no token. */
const OPEN_PATHS = new Set(['/fhir/metadata', '/fhir/.well-known/smart-configuration']);

/**
 * Returns undefined when the request may proceed, or the 401 answer to send.
 * @param config - the runtime config ({ token, smart })
 * @param smart - the SmartAuthority that knows which access tokens were issued
 */
function authenticate(config, method, path, headers, smart) {
  if ((!config.token && !config.smart) || OPEN_PATHS.has(path)) {
    return undefined;
  }
  const header = headers.authorization ?? '';
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
  if (match && config.token && match[1] === config.token) {
    return undefined;
  }
  if (match && config.smart && smart?.accepts(match[1])) {
    return undefined;
  }
  const challenge = header ? 'Bearer error="invalid_token"' : 'Bearer';
  const why = header
    ? 'The bearer token is not valid (unknown, expired or revoked)'
    : 'This server requires Authorization: Bearer <token>';
  return outcomeAnswer(401, why, { 'WWW-Authenticate': challenge });
}

/** CapabilityStatement.rest.security for the current config, or undefined when the server is open. */
function securityFor(config) {
  if (config.smart) {
    return {
      service: [
        {
          coding: [
            { system: 'http://terminology.hl7.org/CodeSystem/restful-security-service', code: 'SMART-on-FHIR' },
          ],
        },
      ],
      description:
        'Requests other than GET [base]/metadata need Authorization: Bearer <token>: a SMART Backend Services ' +
        'access token (client_credentials with a private_key_jwt assertion, RS384 or ES384; see ' +
        '[base]/.well-known/smart-configuration)' +
        (config.token ? ' or the static token.' : '.'),
    };
  }
  if (!config.token) {
    return undefined;
  }
  return {
    description: 'Requests other than GET [base]/metadata need Authorization: Bearer <token> (a static token).',
  };
}

module.exports = { authenticate, securityFor, OPEN_PATHS };
