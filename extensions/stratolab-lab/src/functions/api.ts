/**
 * The functions service's API, as the lab uses it (through `functionsClient`).
 *
 * The shapes mirror `stratolab/functions/service/state.py` (`ServiceState.describe`).
 */
import { functionsClient, RawBody } from '../api/client';

export interface IScaling {
  min_instances: number;
  max_instances: number;
  concurrency: number;
  idle_timeout_s: number;
  timeout_s: number;
  memory_mb: number | null;
  [key: string]: number | null;
}

export interface IFunctionVersion {
  version: number;
  state: string;
  error: string | null;
  created_at: string;
  instances?: number;
  cold_starts?: number;
}

export interface IFunction {
  owner: string;
  name: string;
  public: boolean;
  url: string;
  scaling: IScaling;
  traffic: Record<string, number>;
  versions: IFunctionVersion[];
  instances: number;
  cold_starts: number;
  stats: {
    invocations: number;
    errors: number;
    p50_ms: number | null;
    p99_ms: number | null;
  };
  /** Only in the answer to a deploy. */
  version?: number;
  /** Only in the answer to the first deploy of a function: shown once. */
  key?: string;
}

/** What an invocation answered, as text (the function decides the content type). */
export interface IInvocation {
  status: number;
  contentType: string;
  text: string;
  version: string | null;
}

export function listFunctions(): Promise<IFunction[]> {
  return functionsClient.get<{ functions: IFunction[] }>('api/functions').then(d => d.functions);
}

/**
 * Invoke `owner/name` with a JSON body; the answer is returned whatever its status.
 */
export async function invokeFunction(owner: string, name: string, json: string): Promise<IInvocation> {
  const response = await functionsClient.fetch(`fn/${encodeURIComponent(owner)}/${encodeURIComponent(name)}`, {
    method: 'POST',
    body: json,
    headers: { 'Content-Type': 'application/json' }
  });
  return {
    status: response.status,
    contentType: response.headers.get('Content-Type') || '',
    text: await response.text(),
    version: response.headers.get('X-Function-Version')
  };
}

/**
 * Deploy a bundle as a new version of the function `name`, as `deploy_bundle` of
 * stratolab/functions/client.py does: the .tar.gz as the body of `POST api/functions/NAME`.
 */
export async function deployBundle(name: string, bundle: ArrayBuffer): Promise<IFunction> {
  return functionsClient.post<IFunction>(
    `api/functions/${encodeURIComponent(name)}`,
    new RawBody(bundle, 'application/gzip')
  );
}
