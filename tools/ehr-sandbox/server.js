#!/usr/bin/env node
'use strict';
/**
 * Cicatrix EHR sandbox: a real FHIR R4 server (@medplum/fhir-router over an in-memory repository, every write
 * validated against the R4 definitions) with a control API for fault injection, used by the local stack and the
 * tests in place of a hospital EHR. See README.md.
 *
 * Environment:
 *   EHR_SANDBOX_HOST   interface to listen on (default 127.0.0.1)
 *   EHR_SANDBOX_PORT   port (default 8090; 0 picks a free port)
 *   EHR_SANDBOX_TOKEN  when set, FHIR requests need "Authorization: Bearer <token>"
 *   EHR_SANDBOX_PROFILE  capability profile (lib/profiles.js): hapi (default; alias full), minimal, ...
 *   EHR_SANDBOX_SMART_CLIENT_ID, EHR_SANDBOX_SMART_JWKS (a JWK Set, inline JSON or a file path),
 *   EHR_SANDBOX_SMART_TOKEN_SECONDS   enable the SMART Backend Services token endpoint for that client
 *
 * Prints exactly one line to stdout once it accepts connections:
 *   ehr-sandbox listening on http://HOST:PORT/fhir
 * Everything else (errors) goes to stderr. Exits with status 0 on SIGTERM or SIGINT.
 */
const fs = require('node:fs');
const http = require('node:http');
const { loadDefinitions } = require('./lib/definitions');
const { createApp } = require('./lib/app');
const { smartConfigFromEnv } = require('./lib/smart');

function main() {
  const host = process.env.EHR_SANDBOX_HOST || '127.0.0.1';
  const port = parsePort(process.env.EHR_SANDBOX_PORT ?? '8090');
  loadDefinitions();
  let app;
  try {
    app = createApp({
      token: process.env.EHR_SANDBOX_TOKEN || null,
      profile: process.env.EHR_SANDBOX_PROFILE || 'hapi',
      smart: smartConfigFromEnv(process.env, (file) => fs.readFileSync(file, 'utf8')),
    });
  } catch (err) {
    console.error(`ehr-sandbox: bad configuration: ${err.message}`);
    process.exit(2);
  }
  const server = http.createServer(app);

  server.on('error', (err) => {
    console.error(`ehr-sandbox: cannot listen on ${host}:${port}: ${err.message}`);
    process.exit(1);
  });
  server.listen(port, host, () => {
    const address = server.address();
    const shownHost = address.family === 'IPv6' ? `[${address.address}]` : address.address;
    process.stdout.write(`ehr-sandbox listening on http://${shownHost}:${address.port}/fhir\n`);
  });

  const stop = () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

function parsePort(value) {
  const port = Number(value);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    console.error(`ehr-sandbox: EHR_SANDBOX_PORT must be a port number, got "${value}"`);
    process.exit(2);
  }
  return port;
}

main();
