/**
 * How the Usage section writes figures: money, quantities, budget gauges, times; and the order of
 * its breakdown table. Pure (no DOM, no requests), so jest checks it, and one format everywhere:
 * the numbers shown are the API's, rounded the same way each time.
 */
import type { GaugeState, IBreakdownLine, IBudget, IQuantities } from './api';

/** The first instant of `now`'s month, in UTC, as the API takes it (`2026-12-01T00:00:00Z`). */
export function monthStart(now: Date): string {
  const start = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1));
  return start.toISOString().replace('.000Z', 'Z');
}

/** A non-finite or missing number counts as 0 (a quantity the service left out). */
function finite(value: number | null | undefined): number {
  return typeof value === 'number' && Number.isFinite(value) ? value : 0;
}

/**
 * A sum of money: two decimals, or two significant digits below one cent (so a few function calls
 * do not read as nothing), then the currency: `12.34 EUR`, `0.0042 USD`, `0.00 USD`.
 */
export function formatCost(value: number, currency: string): string {
  const v = finite(value);
  const text = v !== 0 && Math.abs(v) < 0.01 ? v.toPrecision(2) : v.toFixed(2);
  return currency ? `${text} ${currency}` : text;
}

/** A quantity of hours or GB-seconds: two decimals. */
export function formatAmount(value: number | null | undefined): string {
  return finite(value).toFixed(2);
}

/** Function GB-seconds as one number (the service may answer them by billing unit: the largest wins, none is 0). */
export function gbSeconds(value: IQuantities['function_gb_seconds'] | undefined): number {
  if (typeof value === 'number') {
    return finite(value);
  }
  if (value && typeof value === 'object') {
    // by billing unit (1, 100, 1000, 60000 ms): each is the same calls rounded up differently; the
    // default unit is what the bill prices, and the service names it first
    const first = Object.values(value)[0];
    return finite(first);
  }
  return 0;
}

/** The totals the section shows, in order: label, key (test id), text. */
export function totalsFacts(totals: IQuantities): [label: string, key: string, text: string][] {
  return [
    ['CPU core-hours', 'cpu_core_hours', formatAmount(totals.cpu_core_hours)],
    ['Memory GB-hours', 'memory_gb_hours', formatAmount(totals.memory_gb_hours)],
    ['GPU-hours', 'gpu_hours', formatAmount(totals.gpu_hours)],
    ['Requests', 'requests', String(Math.round(finite(totals.requests)))],
    ['Function GB-seconds', 'function_gb_seconds', formatAmount(gbSeconds(totals.function_gb_seconds))]
  ];
}

/** What a budget's resource is counted in (its limit and use). */
export function resourceUnit(resource: string, currency: string): string {
  switch (resource) {
    case 'cpu_hours':
      return 'CPU-hours';
    case 'memory_gb_hours':
      return 'GB-hours';
    case 'gpu_hours':
      return 'GPU-hours';
    case 'requests':
      return 'requests';
    case 'function_gb_seconds':
      return 'GB-seconds';
    case 'cost':
      return currency;
    default:
      return resource;
  }
}

/** A budget's state from its use: exceeded at 100%, warning from `warnAt` (0.8 unless the budget says). */
export function gaugeState(fraction: number, warnAt = 0.8): GaugeState {
  const f = finite(fraction);
  if (f >= 1) {
    return 'exceeded';
  }
  return f >= warnAt ? 'warning' : 'ok';
}

/** The state to show: the service's when it gave a known one, else worked out from the fraction. */
export function budgetState(budget: IBudget): GaugeState {
  if (budget.state === 'ok' || budget.state === 'warning' || budget.state === 'exceeded') {
    return budget.state;
  }
  return budget.fraction === null ? 'exceeded' : gaugeState(budget.fraction, budget.warn_at);
}

/** How full a budget's gauge is: its fraction, full when it has none (a limit of 0, used). */
export function budgetFraction(budget: IBudget): number {
  return budget.fraction === null ? 1 : finite(budget.fraction);
}

/** The width of a gauge's bar in percent: 0 to 100, whatever the use. */
export function gaugeWidth(fraction: number | null): number {
  return Math.round(Math.min(1, Math.max(0, finite(fraction))) * 1000) / 10;
}

/** `2026-12-09 14:00 UTC` for an ISO time; the text as it is when it is not one. */
export function formatUtc(iso: string): string {
  const t = Date.parse(iso);
  if (Number.isNaN(t)) {
    return iso;
  }
  return `${new Date(t).toISOString().slice(0, 16).replace('T', ' ')} UTC`;
}

/** A budget's line under its gauge: `3.20 / 10.00 GPU-hours (32%) per 30d` (the unit the service names, else the resource's). */
export function budgetText(budget: IBudget, currency: string): string {
  const unit = budget.unit || resourceUnit(budget.resource, currency);
  const pct = budget.fraction === null ? 'over' : `${Math.round(finite(budget.fraction) * 100)}%`;
  const used = budget.resource === 'requests' ? String(Math.round(finite(budget.used))) : formatAmount(budget.used);
  const limit = budget.resource === 'requests' ? String(Math.round(finite(budget.limit))) : formatAmount(budget.limit);
  const window = budget.window === 'month' ? 'per month' : `per ${budget.window}`;
  return `${used} / ${limit} ${unit} (${pct}) ${window}`;
}

/** When a budget frees up, as a line; empty when it is not used at all. */
export function freesText(budget: IBudget): string {
  return budget.frees_at ? `frees up at ${formatUtc(budget.frees_at)}` : '';
}

/** A breakdown line's name: the thing, or "default server" for the server with no name. */
export function thingLabel(line: IBreakdownLine): string {
  if (line.key) {
    return line.key;
  }
  return line.kind === 'server' || !line.kind ? 'default server' : `(unnamed ${line.kind})`;
}

/** What kind of thing a breakdown line is, as a person reads it: a pipeline's steps are its pipeline's
 * line ("pipeline"); the other kinds as the API names them, with spaces. */
export function kindLabel(kind: string | undefined): string {
  if (kind === 'pipeline_step') {
    return 'pipeline';
  }
  return (kind ?? '').replace(/_/g, ' ');
}

export type SortOrder = 'asc' | 'desc';

/**
 * `rows` sorted by `key` (a copy; stable): numbers as numbers, text by the locale, missing values
 * last in either order.
 */
export function sortRows<T extends object>(rows: ReadonlyArray<T>, key: keyof T, order: SortOrder = 'desc'): T[] {
  const sign = order === 'asc' ? 1 : -1;
  const missing = (v: unknown) => v === null || v === undefined || (typeof v === 'number' && Number.isNaN(v));
  return rows
    .map((row, index) => ({ row, index }))
    .sort((a, b) => {
      const x = a.row[key] as unknown;
      const y = b.row[key] as unknown;
      if (missing(x) || missing(y)) {
        return missing(x) === missing(y) ? a.index - b.index : missing(x) ? 1 : -1;
      }
      let c: number;
      if (typeof x === 'number' && typeof y === 'number') {
        c = x - y;
      } else {
        c = String(x).localeCompare(String(y));
      }
      return c * sign || a.index - b.index;
    })
    .map(({ row }) => row);
}
