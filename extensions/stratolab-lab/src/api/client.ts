/**
 * The one client of Stratolab's services from the lab: each is reached through this server's proxy
 * route (`{base_url}stratolab/<service>/PATH`, see stratolab/server), with
 * `ServerConnection.makeRequest` (so the lab's token and XSRF headers go along).
 *
 * The services answer errors as `{"error": message, "field": name?, "error_id": id?}` with a
 * 4xx/5xx status (`ServiceHandler.write_error` of stratolab/web.py); `ServiceError` carries the
 * message (written to be read by users), the status and the input it is about.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { decodeError, ServiceError, ServiceName } from './errors';

export { decodeError, ServiceError } from './errors';
export type { ServiceName } from './errors';

/** The `ServiceError` of a failed answer (its body read as JSON when it is). */
export async function answerError(service: ServiceName, response: Response): Promise<ServiceError> {
  let body: unknown = null;
  try {
    body = await response.json();
  } catch {
    // Not JSON: described from the status.
  }
  return decodeError(service, response.status, body, response.statusText);
}

/** A request body that goes as it is (bytes, text) with its content type; any other body goes as JSON. */
export class RawBody {
  constructor(
    readonly body: BodyInit,
    readonly contentType: string
  ) {}
}

/** The client of one service; `functionsClient`, `schedulerClient`, `triggersClient` and `usageClient` below are the lab's. */
export class ServiceClient {
  private _settings: ServerConnection.ISettings | null;

  constructor(
    readonly service: ServiceName,
    settings?: ServerConnection.ISettings
  ) {
    this._settings = settings ?? null;
  }

  /** The server's connection settings (made on first use: the page config is read then). */
  get settings(): ServerConnection.ISettings {
    if (this._settings === null) {
      this._settings = ServerConnection.makeSettings();
    }
    return this._settings;
  }

  /** The browser URL of a route of the service (for links and downloads). */
  url(path: string): string {
    return URLExt.join(this.settings.baseUrl, 'stratolab', this.service, path);
  }

  /** The raw answer, whatever its status; throws a `ServiceError` (status 0) when the server is not reached. */
  async fetch(path: string, init: RequestInit = {}): Promise<Response> {
    try {
      return await ServerConnection.makeRequest(this.url(path), init, this.settings);
    } catch (error) {
      throw new ServiceError(`Cannot reach this server: ${(error as Error).message || error}`, 0);
    }
  }

  /** A call answered with JSON (`undefined` for an empty answer); throws a `ServiceError` on 4xx/5xx. */
  async request<T>(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<T> {
    const response = await this.send(method, path, body, headers);
    const text = await response.text();
    if (response.status === 204 || !text) {
      return undefined as T;
    }
    try {
      return JSON.parse(text) as T;
    } catch {
      throw new ServiceError(
        `The ${this.service} service sent an answer to ${path} that is not JSON.`,
        response.status
      );
    }
  }

  get<T>(path: string, headers?: Record<string, string>): Promise<T> {
    return this.request<T>('GET', path, undefined, headers);
  }

  post<T>(path: string, body?: unknown, headers?: Record<string, string>): Promise<T> {
    return this.request<T>('POST', path, body, headers);
  }

  patch<T>(path: string, body?: unknown, headers?: Record<string, string>): Promise<T> {
    return this.request<T>('PATCH', path, body, headers);
  }

  put<T>(path: string, body?: unknown, headers?: Record<string, string>): Promise<T> {
    return this.request<T>('PUT', path, body, headers);
  }

  delete<T = void>(path: string, headers?: Record<string, string>): Promise<T> {
    return this.request<T>('DELETE', path, undefined, headers);
  }

  /** A text answer (a log); throws a `ServiceError` on 4xx/5xx. */
  async text(path: string, init: RequestInit = {}): Promise<string> {
    return (await this.checked(path, init)).text();
  }

  /** A binary answer (a bundle); throws a `ServiceError` on 4xx/5xx. */
  async arrayBuffer(path: string, init: RequestInit = {}): Promise<ArrayBuffer> {
    return (await this.checked(path, init)).arrayBuffer();
  }

  private async send(method: string, path: string, body: unknown, headers: Record<string, string>): Promise<Response> {
    const init: RequestInit = { method, headers: { ...headers } };
    if (body instanceof RawBody) {
      init.body = body.body;
      (init.headers as Record<string, string>)['Content-Type'] = body.contentType;
    } else if (body !== undefined) {
      init.body = JSON.stringify(body);
      (init.headers as Record<string, string>)['Content-Type'] = 'application/json';
    }
    return this.checked(path, init);
  }

  private async checked(path: string, init: RequestInit): Promise<Response> {
    const response = await this.fetch(path, init);
    if (!response.ok) {
      throw await answerError(this.service, response);
    }
    return response;
  }
}

/** The functions service (`stratolab/functions/`: management `api/...` and invocations `fn/OWNER/NAME`). */
export const functionsClient = new ServiceClient('functions');

/** The scheduler service (`stratolab/scheduler/`: schedules, runs and AutoML searches under `api/`). */
export const schedulerClient = new ServiceClient('scheduler');

/** The triggers service (`stratolab/triggers/`: triggers, their events and dead letters under `api/`). */
export const triggersClient = new ServiceClient('triggers');

/** The usage service (`stratolab/usage/service/`: usage, bills, budgets and notifications under `api/`). */
export const usageClient = new ServiceClient('usage');

/** The pipelines service (`stratolab/pipelines/`: pipeline runs, validation and schedules under `api/`). */
export const pipelinesClient = new ServiceClient('pipelines');
