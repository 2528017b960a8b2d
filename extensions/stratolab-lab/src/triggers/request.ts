/**
 * The Add trigger form's fields, as typed, into the request `POST api/triggers` takes, or what is
 * wrong with them, by the field the service would name (`source.table`, `batch`, `destination`) so
 * that the form shows each next to its input, as it does the service's own refusals.
 *
 * Only what can be said without the service is checked here (a required setting left empty, a
 * number out of the service's bounds, filters and a destination that do not parse); the rest (a
 * topic filter's wildcards, a cron expression, a time zone, the admin's policy) the service checks
 * and names. Pure: no requests, no DOM.
 */
import { typedNumber } from '../ui/parse';
import { IFilter, ITriggerRequest, TriggerKind } from './api';
import { kindSpec } from './kinds';

/** What the form's fields hold, as typed. */
export interface ITriggerFields {
  kind: TriggerKind;
  name: string;
  /** Each source setting's field, by its key (`folder`, `filter`, `table`, ...). */
  source: Record<string, string>;
  /** The ticked values of settings with several checkboxes (a table's operations), by key. */
  several: Record<string, string[]>;
  /** `type=com.example.created, subject^=sensors/, subject$=.png` */
  filters: string;
  batch: string;
  concurrency: string;
  ordered: boolean;
  retries: string;
  maxAge: string;
  backoff: string;
  /** `function:NAME`, `webhook:URL` or `mqtt:TOPIC`; empty for none. */
  destination: string;
  /** success, failure or always. */
  when: string;
}

/** What was wrong, by the field the service would name. */
export type Problems = [field: string, message: string][];

/** The service's bounds (stratolab/triggers/spec.py): field, label, lowest, highest, whole. */
const NUMBERS = [
  ['batch', 'batch', 1, 1000, true],
  ['concurrency', 'concurrency', 1, 256, true],
  ['retries', 'retries', 0, 100, true],
  ['maxAge', 'max_age_s', 1, 7 * 24 * 3600, true],
  ['backoff', 'backoff_s', 0.01, 3600, false]
] as const;

const FILTER_OPS = { '=': 'exact', '^=': 'prefix', '$=': 'suffix' } as const;

/** Where one filter ends: a comma (or a new line) followed by the next `attribute=`. */
const FILTER_SPLIT = /\n|,(?=\s*[a-z0-9]+\s*[\^$]?=)/;

/**
 * Filters written as `type=x` (exact), `subject^=x` (prefix), `subject$=x` (suffix), separated by
 * commas or new lines; an error message for the first that does not parse.
 */
export function parseFilters(text: string): { filters: IFilter[] } | { error: string } {
  const filters: IFilter[] = [];
  for (const item of text.split(FILTER_SPLIT)) {
    const written = item.trim();
    if (!written) {
      continue;
    }
    const match = /^([a-z0-9]{1,20})\s*(\^=|\$=|=)\s*(.*)$/.exec(written);
    if (!match) {
      return {
        error: `“${written}” is not a filter: write attribute=value, attribute^=prefix or attribute$=suffix (attributes in lower case, such as type or subject).`
      };
    }
    const op = FILTER_OPS[match[2] as keyof typeof FILTER_OPS];
    filters.push({ attribute: match[1], [op]: match[3].trim() });
  }
  return { filters };
}

/** A filter as the CLI and the form write it (`subject^=sensors/`). */
export function formatFilter(filter: IFilter): string {
  if (filter.prefix !== undefined) {
    return `${filter.attribute}^=${filter.prefix}`;
  }
  if (filter.suffix !== undefined) {
    return `${filter.attribute}$=${filter.suffix}`;
  }
  return `${filter.attribute}=${filter.exact ?? ''}`;
}

/** A destination written `function:NAME`, `webhook:URL` or `mqtt:TOPIC` as the request's object. */
export function parseDestination(
  text: string,
  when: string
): { destination?: Record<string, string> } | { error: string } {
  const written = text.trim();
  if (!written) {
    return {};
  }
  const match = /^(function|webhook|mqtt):\s*(\S.*)$/.exec(written);
  if (!match) {
    return { error: 'Write function:NAME, webhook:https://… or mqtt:TOPIC.' };
  }
  return { destination: { [match[1]]: match[2].trim(), when: when || 'success' } };
}

/**
 * The request for the form's values on the function `fn`, or what is wrong with them (then
 * `request` is null).
 */
export function triggerRequest(
  fn: string,
  fields: ITriggerFields
): { request: ITriggerRequest | null; problems: Problems } {
  const problems: Problems = [];
  const spec = kindSpec(fields.kind);
  const source: Record<string, unknown> = {};
  for (const field of spec.fields) {
    const name = `source.${field.key}`;
    if (field.several) {
      const ticked = fields.several[field.key] ?? [];
      if (ticked.length === 0) {
        problems.push([name, `Tick at least one of ${field.several.join(', ')}.`]);
      }
      source[field.key] = ticked;
      continue;
    }
    const value = (fields.source[field.key] ?? '').trim();
    if (!value) {
      if (field.required) {
        problems.push([
          name,
          `Enter the ${field.label.toLowerCase()}${field.placeholder ? `, e.g. ${field.placeholder}` : ''}.`
        ]);
      }
      continue;
    }
    source[field.key] = field.numeric ? Number(value) : value;
  }

  const request: ITriggerRequest = { function: fn, kind: fields.kind, source };
  const name = fields.name.trim();
  if (name) {
    request.name = name;
  }

  const parsed = parseFilters(fields.filters);
  if ('error' in parsed) {
    problems.push(['filters', parsed.error]);
  } else if (parsed.filters.length) {
    request.filters = parsed.filters;
  }

  for (const [key, field, low, high, whole] of NUMBERS) {
    const value = typedNumber(fields[key]);
    if (value === undefined) {
      continue;
    }
    if (!Number.isFinite(value) || value < low || value > high || (whole && !Number.isInteger(value))) {
      problems.push([field, `Expected ${whole ? 'a whole number' : 'a number'} from ${low} to ${high}.`]);
      continue;
    }
    (request as unknown as Record<string, number>)[field] = value;
  }
  if (fields.ordered) {
    request.ordered = true;
  }

  const destination = parseDestination(fields.destination, fields.when);
  if ('error' in destination) {
    problems.push(['destination', destination.error]);
  } else if (destination.destination) {
    request.destination = destination.destination;
  }
  return problems.length ? { request: null, problems } : { request, problems };
}
