'use strict';
/**
 * Small HTTP helpers shared by the FHIR endpoint and the control API.
 *
 * Handlers in this program do not write to the socket themselves: they return an answer
 * `{ status, headers, body }` and app.js writes it. That is what lets a fault such as apply-then-fail process a
 * request completely and then throw the real answer away.
 */
const { STATUS_CODES } = require('node:http');

const FHIR_JSON = 'application/fhir+json; charset=utf-8';
const JSON_TYPE = 'application/json; charset=utf-8';

/** Issue codes (R4 issue-type) that fit an HTTP status when the sandbox has to invent an OperationOutcome. */
const ISSUE_CODE_BY_STATUS = {
  400: 'invalid',
  401: 'login',
  403: 'forbidden',
  404: 'not-found',
  405: 'not-supported',
  406: 'not-supported',
  408: 'timeout',
  409: 'conflict',
  410: 'deleted',
  412: 'conflict',
  413: 'too-costly',
  415: 'not-supported',
  422: 'processing',
  429: 'throttled',
  500: 'exception',
  502: 'transient',
  503: 'transient',
  504: 'timeout',
};

function operationOutcome(status, diagnostics, code = ISSUE_CODE_BY_STATUS[status] ?? 'processing') {
  return {
    resourceType: 'OperationOutcome',
    issue: [{ severity: status >= 400 ? 'error' : 'information', code, diagnostics }],
  };
}

/** A FHIR answer: an OperationOutcome with the given status. */
function outcomeAnswer(status, diagnostics, headers = {}) {
  return { status, headers, body: operationOutcome(status, diagnostics) };
}

/** Status line text for Bundle.entry.response.status, e.g. "201 Created". */
function statusLine(status) {
  return `${status} ${STATUS_CODES[status] ?? ''}`.trim();
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

/** Parses a JSON body; `{ value }` on success, `{ error }` with the parser's message otherwise. */
function parseJson(buffer) {
  if (!buffer || buffer.length === 0) {
    return { value: undefined };
  }
  try {
    return { value: JSON.parse(buffer.toString('utf8')) };
  } catch (err) {
    return { error: err.message };
  }
}

/** Writes `{ status, headers, body, contentType? }`; the answer's own contentType (OAuth JSON) wins. */
function writeAnswer(res, answer, contentType = FHIR_JSON) {
  const headers = { ...answer.headers };
  let payload = '';
  if (answer.body !== undefined && answer.status !== 204 && answer.status !== 304) {
    payload = JSON.stringify(answer.body);
    headers['Content-Type'] = answer.contentType ?? contentType;
  }
  headers['Content-Length'] = Buffer.byteLength(payload);
  res.writeHead(answer.status, headers);
  res.end(payload);
}

function sleep(ms) {
  return ms > 0 ? new Promise((resolve) => setTimeout(resolve, ms)) : Promise.resolve();
}

module.exports = {
  FHIR_JSON,
  JSON_TYPE,
  operationOutcome,
  outcomeAnswer,
  statusLine,
  readBody,
  parseJson,
  writeAnswer,
  sleep,
};
