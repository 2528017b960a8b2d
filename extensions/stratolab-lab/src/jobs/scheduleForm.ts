/**
 * What the Schedule dialog's fields mean: the default name, time zones, the cron preview's hints,
 * the notebook's parameters typed as text (read back with their types), e-mail addresses, and the
 * request they make. Pure: no requests, no DOM.
 */
import { ICronPreview, INotebookParameter, INotify, IScheduleRequest } from './api';
import { typedNumber } from '../ui/parse';
import { formatTime } from './format';

/** The default name of a schedule: the notebook's file name without its extension. */
export function defaultScheduleName(path: string): string {
  const file = path.split('/').pop() || path;
  return file.replace(/\.ipynb$/i, '') || file;
}

/** The browser's IANA time zone (UTC when it does not say). */
export function browserTimeZone(): string {
  try {
    return Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
  } catch {
    return 'UTC';
  }
}

/** Every IANA time zone the browser knows, for the time zone field's suggestions. */
export function knownTimeZones(): string[] {
  const intl = Intl as unknown as { supportedValuesOf?: (key: string) => string[] };
  try {
    const zones = intl.supportedValuesOf ? intl.supportedValuesOf('timeZone') : [];
    return zones.includes('UTC') ? zones : ['UTC', ...zones];
  } catch {
    return ['UTC'];
  }
}

/** How a parameter's value is written in its field: strings as they are, the rest as JSON. */
export function formatParameterValue(value: unknown, type: string): string {
  if (type === 'str' && typeof value === 'string') {
    return value;
  }
  if (value === undefined) {
    return '';
  }
  try {
    return JSON.stringify(value);
  } catch {
    return String(value);
  }
}

export type Parsed = { ok: true; value: unknown } | { ok: false; error: string };

/**
 * The value typed into a parameter's field, with the type of the notebook's default: ints, floats,
 * bools, JSON lists and dicts; strings as they are; for other types JSON when it parses, else text.
 */
export function parseParameterValue(text: string, type: string): Parsed {
  const t = text.trim();
  switch (type) {
    case 'str':
      return { ok: true, value: text };
    case 'int':
      return /^[-+]?\d+$/.test(t)
        ? { ok: true, value: Number(t) }
        : { ok: false, error: 'Expected an integer, e.g. 3' };
    case 'float': {
      const value = Number(t);
      return t !== '' && Number.isFinite(value)
        ? { ok: true, value }
        : { ok: false, error: 'Expected a number, e.g. 0.5' };
    }
    case 'bool': {
      const lower = t.toLowerCase();
      if (['true', '1', 'yes'].includes(lower)) {
        return { ok: true, value: true };
      }
      if (['false', '0', 'no'].includes(lower)) {
        return { ok: true, value: false };
      }
      return { ok: false, error: 'Expected true or false' };
    }
    case 'list':
    case 'dict': {
      let value: unknown;
      try {
        value = JSON.parse(t);
      } catch {
        return {
          ok: false,
          error: `Expected a JSON ${type === 'list' ? 'list, e.g. [1, 2]' : 'object, e.g. {"a": 1}'}`
        };
      }
      const isList = Array.isArray(value);
      const isDict = value !== null && typeof value === 'object' && !isList;
      if ((type === 'list' && !isList) || (type === 'dict' && !isDict)) {
        return { ok: false, error: `Expected a JSON ${type === 'list' ? 'list' : 'object'}` };
      }
      return { ok: true, value };
    }
    default:
      try {
        return { ok: true, value: JSON.parse(t) };
      } catch {
        return { ok: true, value: text };
      }
  }
}

/**
 * The parameters to send: those whose field no longer shows the notebook's default (so a schedule
 * follows later changes of the defaults it does not override), typed; or the errors, by name.
 */
export function changedParameters(
  declared: INotebookParameter[],
  typed: Record<string, string>
): { values: Record<string, unknown>; errors: Record<string, string> } {
  const values: Record<string, unknown> = {};
  const errors: Record<string, string> = {};
  for (const p of declared) {
    const text = typed[p.name];
    if (text === undefined || text === formatParameterValue(p.default, p.type)) {
      continue;
    }
    const parsed = parseParameterValue(text, p.type);
    if (parsed.ok) {
      values[p.name] = parsed.value;
    } else {
      errors[p.name] = parsed.error;
    }
  }
  return { values, errors };
}

/** E-mail addresses typed with commas (or spaces, or semicolons) between them. */
export function splitAddresses(text: string): string[] {
  return text.split(/[\s,;]+/).filter(Boolean);
}

/** What the cron field's preview says without asking the scheduler; null when it must ask. */
export function cronHint(cron: string, onDemand: boolean): string | null {
  if (onDemand) {
    return 'Runs only when started with “Run now”.';
  }
  if (!cron.trim()) {
    return 'e.g. 0 7 * * 1-5: at 07:00, Monday through Friday.';
  }
  return null;
}

/** The next runs of a cron preview, each in the schedule's time zone. */
export function nextRunLines(preview: ICronPreview): string[] {
  return preview.next.map(iso => `${formatTime(iso, preview.timezone)} (${preview.timezone})`);
}

/** What the Schedule dialog's fields hold, as typed. */
export interface IScheduleFields {
  name: string;
  cron: string;
  onDemand: boolean;
  timezone: string;
  missed: string;
  /** Each declared parameter's field, by name. */
  parameters: Record<string, string>;
  profile: string;
  timeout: string;
  retries: string;
  retryBackoff: string;
  ipynb: boolean;
  html: boolean;
  webhook: string;
  emails: string;
  onFailure: boolean;
  onSuccess: boolean;
}

/** What was wrong, by the field the service would name (`cron`, `parameters.n`). */
export type Problems = [field: string, message: string][];

/**
 * The request the Schedule dialog sends (`POST api/schedules`, or `PATCH` when `editing`: then
 * cleared settings are sent as null), or what is wrong with the fields. `needsCron`: saving a
 * schedule needs a cron expression unless it runs on demand ("Run now" does not).
 */
export function scheduleRequest(
  fields: IScheduleFields,
  options: { declared: INotebookParameter[]; editing: boolean; needsCron: boolean }
): { request: IScheduleRequest | null; problems: Problems } {
  const problems: Problems = [];
  const name = fields.name.trim();
  if (!name) {
    problems.push(['name', 'Give the schedule a name.']);
  }
  const cron = fields.cron.trim();
  if (!fields.onDemand && !cron && options.needsCron) {
    problems.push(['cron', 'Enter a cron expression, or tick “On demand only”.']);
  }
  const { values, errors } = changedParameters(options.declared, fields.parameters);
  for (const [param, message] of Object.entries(errors)) {
    problems.push([`parameters.${param}`, message]);
  }
  const numbers: Record<string, number | undefined> = {};
  for (const [field, text] of [
    ['timeout', fields.timeout],
    ['retries', fields.retries],
    ['retry_backoff', fields.retryBackoff]
  ] as const) {
    const value = typedNumber(text);
    if (value !== undefined && (!Number.isFinite(value) || value < 0)) {
      problems.push([field, 'Expected a number of at least 0.']);
    }
    numbers[field] = value;
  }
  const webhook = fields.webhook.trim();
  const email = splitAddresses(fields.emails);
  const on = [fields.onFailure ? 'failure' : '', fields.onSuccess ? 'success' : ''].filter(Boolean);
  if ((webhook || email.length) && on.length === 0) {
    problems.push(['notify', 'Tick when to notify: on failure, on success or both.']);
  }
  if (problems.length) {
    return { request: null, problems };
  }

  const { editing } = options;
  const request: IScheduleRequest = {
    name,
    cron: fields.onDemand || !cron ? null : cron,
    timezone: fields.timezone.trim() || 'UTC',
    parameters: values,
    output_formats: [fields.ipynb ? 'ipynb' : '', fields.html ? 'html' : ''].filter(Boolean),
    missed: fields.missed
  };
  if (fields.profile || editing) {
    request.profile = fields.profile || null;
  }
  if (numbers.timeout !== undefined || editing) {
    request.timeout = numbers.timeout ?? null;
  }
  if (numbers.retries !== undefined) {
    request.retries = numbers.retries;
  }
  if (numbers.retry_backoff !== undefined) {
    request.retry_backoff = numbers.retry_backoff;
  }
  if (webhook || email.length) {
    request.notify = { webhook: webhook || null, email, on } as INotify;
  } else if (editing) {
    request.notify = null;
  }
  return { request, problems };
}
