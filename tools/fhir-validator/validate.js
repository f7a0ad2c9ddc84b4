#!/usr/bin/env node
'use strict';
/**
 * Long-lived FHIR R4 validator process for the Cicatrix test suite.
 *
 * Why a process: loading and indexing the R4 StructureDefinitions takes about a second, so the
 * Python tests start this once per pytest worker and stream resources through it.
 *
 * Protocol (newline-delimited JSON):
 *   start-up  -> {"ready": true, "fhirVersion": "4.0.1"}   (or {"ready": false, "error": "..."} and exit 1)
 *   request   <- {"id": n, "resource": {...}}
 *   response  -> {"id": n, "issues": [{"severity", "code", "expression", "message", "check"}]}
 *   bad line  -> {"id": n|null, "error": "..."}
 * `check` is "medplum" (@medplum/core validateResource) or "bindings" (required bindings, bindings.js).
 * Warnings are reported with severity "warning" and are not errors (e.g. urn:uuid references in a
 * transaction Bundle, whose target type Medplum cannot infer).
 */
const fs = require('node:fs');
const path = require('node:path');
const readline = require('node:readline');
const { indexStructureDefinitionBundle, validateResource, OperationOutcomeError } = require('@medplum/core');
const { BindingChecker, Terminology } = require('./bindings');

/** Absolute path of the R4 4.0.1 definitions: Medplum indexes only what it is given, so give it exact files. */
const R4_DIR = path.resolve(__dirname, 'node_modules', '@medplum', 'definitions', 'dist', 'fhir', 'r4');

function loadBundle(file) {
  return JSON.parse(fs.readFileSync(path.join(R4_DIR, file), 'utf8'));
}

const resourcesOf = (bundle) => (bundle.entry || []).map((e) => e.resource).filter(Boolean);

/** Loads the definitions once; returns the two checks as functions of a resource. */
function loadValidators() {
  const types = loadBundle('profiles-types.json');
  const resources = loadBundle('profiles-resources.json');
  indexStructureDefinitionBundle(types);
  indexStructureDefinitionBundle(resources);
  const terminology = new Terminology(
    ['valuesets.json', 'v3-codesystems.json', 'v2-tables.json'].flatMap((f) => resourcesOf(loadBundle(f)))
  );
  const sds = [...resourcesOf(types), ...resourcesOf(resources)].filter((r) => r.resourceType === 'StructureDefinition');
  const bindings = new BindingChecker(sds, terminology);
  return { medplum: medplumIssues, bindings: (resource) => bindings.check(resource) };
}

/** Check (a): Medplum throws an OperationOutcomeError when any issue is an error, else returns warnings. */
function medplumIssues(resource) {
  let issues;
  try {
    issues = validateResource(resource);
  } catch (err) {
    if (!(err instanceof OperationOutcomeError)) {
      return [{ severity: 'error', code: 'exception', expression: resource?.resourceType || '', message: String(err?.message || err) }];
    }
    issues = err.outcome.issue || [];
  }
  return issues.map((issue) => ({
    severity: issue.severity,
    code: issue.code,
    expression: (issue.expression || [])[0] || '',
    message: issue.details?.text || issue.diagnostics || '',
  }));
}

function validate(checks, resource) {
  if (!resource || typeof resource !== 'object' || Array.isArray(resource)) {
    return [{ severity: 'error', code: 'structure', expression: '', message: 'resource must be a JSON object', check: 'medplum' }];
  }
  const issues = [];
  for (const [check, run] of Object.entries(checks)) {
    for (const issue of run(resource)) issues.push({ ...issue, check });
  }
  return issues;
}

function main() {
  const send = (message) => process.stdout.write(JSON.stringify(message) + '\n');
  let checks;
  try {
    checks = loadValidators();
  } catch (err) {
    send({ ready: false, error: `cannot load R4 definitions from ${R4_DIR}: ${err.message}` });
    process.exit(1);
  }
  send({ ready: true, fhirVersion: '4.0.1' });
  const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  lines.on('line', (line) => {
    if (!line.trim()) return;
    let request;
    try {
      request = JSON.parse(line);
    } catch (err) {
      send({ id: null, error: `request is not JSON: ${err.message}` });
      return;
    }
    const id = request?.id ?? null;
    try {
      send({ id, issues: validate(checks, request?.resource) });
    } catch (err) {
      send({ id, error: `validator crashed: ${err.stack || err}` });
    }
  });
}

main();
