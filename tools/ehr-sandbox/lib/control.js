'use strict';
/**
 * The control API (/_control): how tests drive and inspect the sandbox. Plain JSON, never behind the bearer
 * token, never logged, never subject to faults or latency — it is the test's side channel, not part of the EHR.
 *
 *   GET    /_control/health             {"status": "ok"}
 *   POST   /_control/faults             {"faults": [...]} appends to the FIFO fault queue (see faults.js)
 *   GET    /_control/faults             {"faults": [...]} still pending
 *   DELETE /_control/faults             clears the queue
 *   GET    /_control/requests           {"requests": [...]} the request log (see requestlog.js)
 *   DELETE /_control/requests           clears the log
 *   GET    /_control/store[?type=T]     {"total": n, "resources": [...]} current versions, flat, in creation order
 *   POST   /_control/reset              empties store, faults and log; restores the startup config
 *   GET    /_control/config             {"token": ..., "latencyMs": ...} plus "profile" and "smart" when not
 *                                       the defaults ("hapi", null)
 *   POST   /_control/config             sets any of {"token": "..." | null, "latencyMs": n,
 *                                       "profile": a name from profiles.js (e.g. "hapi", "minimal"),
 *                                       "smart": {"clientId": "...", "jwks": {...}, "accessTokenSeconds": n} | null}
 *   GET    /_control/tokens             {"issued": n} SMART access tokens currently valid
 *   DELETE /_control/tokens             revokes them all (clients holding one now get 401 invalid_token)
 */
const { JSON_TYPE } = require('./http');

function createControl(state) {
  const routes = {
    'GET /_control/health': () => ok({ status: 'ok' }),
    'POST /_control/faults': (body) => ok({ faults: state.faults.add(body?.faults) }),
    'GET /_control/faults': () => ok({ faults: state.faults.list() }),
    'DELETE /_control/faults': () => {
      state.faults.clear();
      return ok({ faults: [] });
    },
    'GET /_control/requests': () => ok({ requests: state.log.list() }),
    'DELETE /_control/requests': () => {
      state.log.clear();
      return ok({ requests: [] });
    },
    'GET /_control/store': (_body, url) => {
      const resources = state.repo.list(url.searchParams.get('type') ?? undefined);
      return ok({ total: resources.length, resources });
    },
    'POST /_control/reset': () => {
      state.reset();
      return ok({ status: 'reset' });
    },
    'GET /_control/config': () => ok(state.publicConfig()),
    'POST /_control/config': (body) => {
      state.configure(body ?? {});
      return ok(state.publicConfig());
    },
    'GET /_control/tokens': () => ok({ issued: state.smart.issuedCount() }),
    'DELETE /_control/tokens': () => ok({ revoked: state.smart.revokeTokens() }),
  };

  /** @returns the answer { status, headers, body } (JSON, not FHIR) */
  function handle(method, url, body) {
    const path = url.pathname.replace(/\/+$/, '');
    const route = routes[`${method} ${path}`];
    if (!route) {
      const known = Object.keys(routes).some((key) => key.endsWith(` ${path}`));
      return error(known ? 405 : 404, `no control route ${method} ${path}`);
    }
    try {
      return route(body, url);
    } catch (err) {
      return error(400, err.message);
    }
  }

  return { handle, contentType: JSON_TYPE };
}

function ok(body) {
  return { status: 200, headers: {}, body };
}

function error(status, message) {
  return { status, headers: {}, body: { error: message } };
}

module.exports = { createControl };
