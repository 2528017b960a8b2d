import { decodeError, ServiceError } from '../errors';

describe('decodeError', () => {
  it('keeps the service message, status and field', () => {
    const error = decodeError('scheduler', 400, { error: 'not a cron expression', field: 'cron' });
    expect(error).toBeInstanceOf(ServiceError);
    expect(error).toBeInstanceOf(Error);
    expect(error.message).toBe('not a cron expression');
    expect(error.status).toBe(400);
    expect(error.field).toBe('cron');
  });

  it('leaves the field out when the service names none', () => {
    const error = decodeError('functions', 409, { error: 'name taken', field: '' });
    expect(error.field).toBeUndefined();
    expect(error.errorId).toBeUndefined();
  });

  it('names the error id of an internal error, to quote to an admin', () => {
    const error = decodeError('functions', 500, { error: 'internal error', error_id: 'abc123' });
    expect(error.message).toBe('internal error (error id abc123)');
    expect(error.errorId).toBe('abc123');
  });

  it('says the route is missing on a 404 that is not JSON', () => {
    const error = decodeError('scheduler', 404, null, 'Not Found');
    expect(error.status).toBe(404);
    expect(error.message).toMatch(/cannot reach the scheduler service/);
  });

  it('keeps a JSON 404 of the service itself', () => {
    expect(decodeError('functions', 404, { error: 'no function f' }).message).toBe('no function f');
  });

  it('falls back on the status text, then the status', () => {
    expect(decodeError('functions', 502, null, 'Bad Gateway').message).toBe('Bad Gateway');
    expect(decodeError('functions', 502, 'oops').message).toBe('request failed (502)');
  });
});
