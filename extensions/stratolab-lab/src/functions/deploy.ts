/**
 * What "Deploy as function" runs in the notebook's kernel and reads back, and how the deployed
 * function is called. Pure: no requests, no DOM.
 */
import { IFunction } from './api';

/** What the dialog sends to the kernel. */
export interface IDeployRequest {
  handler: string;
  name: string;
  scaling: Record<string, number>;
  public: boolean;
  source: string;
}

/** What came back from the kernel: the service's JSON, or the error to show. */
export type DeployOutcome = { ok: true; data: IFunction } | { ok: false; error: string };

/**
 * Names of the functions a cell defines at top level (`def NAME(`), in order.
 */
export function definedFunctions(source: string): string[] {
  return Array.from(source.matchAll(/^(?:async\s+)?def\s+([A-Za-z_]\w*)\s*\(/gm), m => m[1]);
}

/**
 * The default function name for a handler: lower-case, `_` → `-` (as the Python client does).
 */
export function functionName(handler: string): string {
  return handler
    .toLowerCase()
    .replace(/_/g, '-')
    .replace(/^-+|-+$/g, '');
}

/**
 * The Python run in the kernel: deploy, then print the outcome as JSON between two markers.
 *
 * All inputs travel as one JSON document inside a Python string literal (a JSON string is a valid
 * Python literal), so no value from the dialog is ever spliced into code.
 */
export function deployCode(request: IDeployRequest, marker: string): string {
  const payload = JSON.stringify(JSON.stringify({ ...request, marker }));
  return [
    'def _stratolab_lab_deploy(p):',
    '    import json',
    '    try:',
    '        from stratolab.functions.client import deploy',
    '        d = deploy(p["handler"], name=p["name"], scaling=p["scaling"] or None,',
    '                   public=p["public"], cell_source=p["source"])',
    '        out = {"ok": True, "data": d.data}',
    '    except Exception as e:',
    '        out = {"ok": False, "error": f"{type(e).__name__}: {e}" if not str(e) else str(e)}',
    '    print(p["marker"] + json.dumps(out, default=str) + p["marker"], flush=True)',
    '',
    'try:',
    `    _stratolab_lab_deploy(__import__("json").loads(${payload}))`,
    'finally:',
    '    del _stratolab_lab_deploy',
    ''
  ].join('\n');
}

/**
 * Find the outcome between the markers in what the kernel printed; null when it is not there.
 */
export function parseDeployOutput(text: string, marker: string): DeployOutcome | null {
  const start = text.indexOf(marker);
  const end = start < 0 ? -1 : text.indexOf(marker, start + marker.length);
  if (end < 0) {
    return null;
  }
  try {
    return JSON.parse(text.slice(start + marker.length, end)) as DeployOutcome;
  } catch {
    return null;
  }
}

/**
 * The curl command that calls the endpoint, with the credentials it needs.
 */
export function curlExample(fn: IFunction, body: string): string {
  let auth = '';
  if (!fn.public) {
    auth = fn.key ? `-H 'X-Function-Key: ${fn.key}' ` : '-H "Authorization: token $JUPYTERHUB_API_TOKEN" ';
  }
  const data = body.replace(/'/g, "'\\''");
  return `curl -X POST ${auth}-H 'Content-Type: application/json' -d '${data}' ${fn.url}`;
}
