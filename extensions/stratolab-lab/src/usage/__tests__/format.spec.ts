import type { IBudget } from '../api';
import {
  budgetFraction,
  budgetState,
  budgetText,
  formatAmount,
  formatCost,
  formatUtc,
  freesText,
  gaugeState,
  gaugeWidth,
  gbSeconds,
  kindLabel,
  monthStart,
  sortRows,
  thingLabel,
  totalsFacts
} from '../format';

const budget = (over: Partial<IBudget> = {}): IBudget => ({
  name: 'gpu-monthly',
  resource: 'gpu_hours',
  limit: 10,
  used: 3.2,
  fraction: 0.32,
  window: '30d',
  frees_at: '2026-12-09T14:00:00+00:00',
  state: 'ok',
  action: 'stop',
  ...over
});

describe('monthStart', () => {
  it('is the first instant of the month in UTC', () => {
    expect(monthStart(new Date('2026-12-06T14:04:00Z'))).toBe('2026-12-01T00:00:00Z');
    expect(monthStart(new Date('2027-01-01T00:00:00Z'))).toBe('2027-01-01T00:00:00Z');
    expect(monthStart(new Date('2026-02-28T23:59:59.999Z'))).toBe('2026-02-01T00:00:00Z');
  });
});

describe('formatCost', () => {
  it('writes two decimals and the currency', () => {
    expect(formatCost(12.345, 'USD')).toBe('12.35 USD');
    expect(formatCost(0, 'EUR')).toBe('0.00 EUR');
    expect(formatCost(1234.5, 'EUR')).toBe('1234.50 EUR');
  });

  it('keeps two significant digits below a cent, so small costs do not read as nothing', () => {
    expect(formatCost(0.004213, 'USD')).toBe('0.0042 USD');
    expect(formatCost(0.01, 'USD')).toBe('0.01 USD');
  });

  it('counts a missing or broken number as 0 and leaves out an empty currency', () => {
    expect(formatCost(NaN, 'USD')).toBe('0.00 USD');
    expect(formatCost(undefined as unknown as number, '')).toBe('0.00');
  });
});

describe('quantities', () => {
  it('rounds amounts to two decimals', () => {
    expect(formatAmount(1.005)).toBe('1.00');
    expect(formatAmount(2.5)).toBe('2.50');
    expect(formatAmount(null)).toBe('0.00');
  });

  it('takes function GB-seconds as a number or by billing unit', () => {
    expect(gbSeconds(12.5)).toBe(12.5);
    expect(gbSeconds({ '1': 3, '100': 4, '1000': 9 })).toBe(3);
    expect(gbSeconds(undefined)).toBe(0);
  });

  it('lists the totals in order, with their keys', () => {
    const facts = totalsFacts({
      cpu_core_hours: 1.234,
      memory_gb_hours: 8,
      gpu_hours: 0.5,
      requests: 1200,
      function_gb_seconds: 7.25,
      cost: 3
    });
    expect(facts.map(([, key]) => key)).toEqual([
      'cpu_core_hours',
      'memory_gb_hours',
      'gpu_hours',
      'requests',
      'function_gb_seconds'
    ]);
    expect(facts.map(([, , text]) => text)).toEqual(['1.23', '8.00', '0.50', '1200', '7.25']);
  });
});

describe('budget gauges', () => {
  it('is ok below the warning level, a warning from it, exceeded from 100%', () => {
    expect(gaugeState(0)).toBe('ok');
    expect(gaugeState(0.79)).toBe('ok');
    expect(gaugeState(0.8)).toBe('warning');
    expect(gaugeState(0.999)).toBe('warning');
    expect(gaugeState(1)).toBe('exceeded');
    expect(gaugeState(1.7)).toBe('exceeded');
    expect(gaugeState(0.5, 0.5)).toBe('warning');
    expect(gaugeState(NaN)).toBe('ok');
  });

  it("shows the service's state when it is a known one, else works it out", () => {
    expect(budgetState(budget({ state: 'exceeded', fraction: 0.2 }))).toBe('exceeded');
    expect(budgetState(budget({ state: 'odd' as IBudget['state'], fraction: 0.9 }))).toBe('warning');
    expect(budgetState(budget({ state: undefined as unknown as IBudget['state'], fraction: 1.2 }))).toBe('exceeded');
  });

  it('counts a used limit of 0 (no fraction) as exceeded and full', () => {
    const zero = budget({ limit: 0, used: 1, fraction: null, state: undefined as unknown as IBudget['state'] });
    expect(budgetState(zero)).toBe('exceeded');
    expect(budgetFraction(zero)).toBe(1);
    expect(budgetText(zero, 'USD')).toBe('1.00 / 0.00 GPU-hours (over) per 30d');
  });

  it("writes the unit the service names, else the resource's", () => {
    expect(budgetText(budget({ unit: 'core-hours', resource: 'cpu_hours' }), 'USD')).toBe(
      '3.20 / 10.00 core-hours (32%) per 30d'
    );
    expect(budgetText(budget({ unit: '', resource: 'cost' }), 'EUR')).toBe('3.20 / 10.00 EUR (32%) per 30d');
  });

  it('fills the bar from 0 to 100%, whatever the use', () => {
    expect(gaugeWidth(0.32)).toBe(32);
    expect(gaugeWidth(0.1234)).toBe(12.3);
    expect(gaugeWidth(1.5)).toBe(100);
    expect(gaugeWidth(-1)).toBe(0);
  });

  it('says the use, the limit, the unit, the share and the window', () => {
    expect(budgetText(budget(), 'USD')).toBe('3.20 / 10.00 GPU-hours (32%) per 30d');
    expect(budgetText(budget({ resource: 'cost', limit: 50, used: 60, fraction: 1.2, window: 'month' }), 'EUR')).toBe(
      '60.00 / 50.00 EUR (120%) per month'
    );
    expect(budgetText(budget({ resource: 'requests', limit: 1e6, used: 1234, fraction: 0.001234 }), 'USD')).toBe(
      '1234 / 1000000 requests (0%) per 30d'
    );
  });

  it('says when it frees up, in UTC', () => {
    expect(freesText(budget())).toBe('frees up at 2026-12-09 14:00 UTC');
    expect(freesText(budget({ frees_at: null }))).toBe('');
    expect(formatUtc('not a time')).toBe('not a time');
  });
});

describe('kindLabel', () => {
  it('names a pipeline step line a pipeline, the other kinds as the API does', () => {
    expect(kindLabel('pipeline_step')).toBe('pipeline');
    expect(kindLabel('function_calls')).toBe('function calls');
    expect(kindLabel('function_instance')).toBe('function instance');
    expect(kindLabel('trial')).toBe('trial');
    expect(kindLabel('server')).toBe('server');
    expect(kindLabel('some_new_kind')).toBe('some new kind');
    expect(kindLabel(undefined)).toBe('');
  });
});

describe('thingLabel', () => {
  it('names the default server', () => {
    expect(thingLabel({ key: '', kind: 'server', cost: 0 })).toBe('default server');
    expect(thingLabel({ key: 'gpu-box', kind: 'server', cost: 0 })).toBe('gpu-box');
    expect(thingLabel({ key: '', kind: 'run', cost: 0 })).toBe('(unnamed run)');
  });
});

describe('sortRows', () => {
  const rows = [
    { user: 'carol', cost: 2, gpu: null as number | null },
    { user: 'alice', cost: 10, gpu: 1 },
    { user: 'bob', cost: 2, gpu: 3 },
    { user: 'Dave', cost: 0.5, gpu: 0 }
  ];
  const users = (list: { user: string }[]) => list.map(r => r.user);

  it('sorts numbers as numbers, largest first by default, ties in the given order', () => {
    expect(users(sortRows(rows, 'cost'))).toEqual(['alice', 'carol', 'bob', 'Dave']);
    expect(users(sortRows(rows, 'cost', 'asc'))).toEqual(['Dave', 'carol', 'bob', 'alice']);
  });

  it('sorts text by the locale', () => {
    expect(users(sortRows(rows, 'user', 'asc'))).toEqual(['alice', 'bob', 'carol', 'Dave']);
  });

  it('puts missing values last in either order', () => {
    expect(users(sortRows(rows, 'gpu', 'desc'))).toEqual(['bob', 'alice', 'Dave', 'carol']);
    expect(users(sortRows(rows, 'gpu', 'asc'))).toEqual(['Dave', 'alice', 'bob', 'carol']);
  });

  it('leaves the rows it was given as they were', () => {
    const before = users(rows);
    sortRows(rows, 'cost', 'asc');
    expect(users(rows)).toEqual(before);
  });
});
