/**
 * The errors of Stratolab's services as the lab shows them. The services answer errors as
 * `{"error": message, "field": name?, "error_id": id?}` with a 4xx/5xx status
 * (`ServiceHandler.write_error` of stratolab/web.py). Pure: no requests.
 */

/** The services this server has a proxy route to. */
export type ServiceName = 'functions' | 'scheduler' | 'triggers' | 'usage' | 'pipelines';

/** A refused or failed call: the service's message, the HTTP status (0: not reached), the field. */
export class ServiceError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly field?: string,
    readonly errorId?: string
  ) {
    super(message);
    this.name = 'ServiceError';
  }
}

/**
 * The error an answer's status and JSON body (`null` when it was not JSON) stand for. A 404 with no
 * JSON body comes from this server, not the service: the route to the service is missing.
 */
export function decodeError(service: ServiceName, status: number, body: unknown, statusText = ''): ServiceError {
  const data = (body !== null && typeof body === 'object' ? body : {}) as Record<string, unknown>;
  if (status === 404 && body === null) {
    return new ServiceError(
      `This server cannot reach the ${service} service (no stratolab/${service} route on it: is the Stratolab server extension enabled?).`,
      404
    );
  }
  const detail = data.error || data.message || statusText || `request failed (${status})`;
  const field = typeof data.field === 'string' && data.field ? data.field : undefined;
  const errorId = typeof data.error_id === 'string' && data.error_id ? data.error_id : undefined;
  const message = errorId ? `${detail} (error id ${errorId})` : String(detail);
  return new ServiceError(message, status, field, errorId);
}
