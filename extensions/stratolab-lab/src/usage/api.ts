/**
 * The usage service's API, as the lab uses it (through `usageClient`, the server's proxy to
 * `/services/usage/`): what this user used and what it cost, their budgets, and the notifications
 * the service wrote for them (a budget at its warning level, used up, or a server stopped for it).
 *
 * The shapes mirror the service's JSON (issue 15's contract).
 */
import { usageClient } from '../api/client';

/** The quantities every total, breakdown line and daily point carries. */
export interface IQuantities {
  cpu_core_hours: number;
  memory_gb_hours: number;
  gpu_hours: number;
  requests: number;
  /** A number, or (from some versions of the service) the GB-seconds by billing unit in ms. */
  function_gb_seconds: number | Record<string, number>;
  cpu_hours_used?: number | null;
  peak_memory_gb?: number | null;
  cost: number;
}

/** One line of a breakdown: a thing (server, schedule, function…) or a resource or a day. */
export interface IBreakdownLine extends Partial<IQuantities> {
  key: string;
  kind?: string;
  cost: number;
}

/** One day of the series (`day`: YYYY-MM-DD, UTC). */
export interface ISeriesPoint extends Partial<IQuantities> {
  day: string;
  cost: number;
}

export interface IUsage {
  from: string;
  to: string;
  currency: string;
  scope: { user?: string; group?: string };
  totals: IQuantities;
  breakdown: IBreakdownLine[];
  comparison?: Record<string, number>;
  series?: ISeriesPoint[];
}

export type GaugeState = 'ok' | 'warning' | 'exceeded';

export interface IBudget {
  name: string;
  resource: string;
  /** How `limit` and `used` are counted (`GPU-hours`; empty for money: the currency). */
  unit?: string;
  limit: number;
  used: number;
  /** null when the limit is 0 and something was used. */
  fraction: number | null;
  window: string;
  frees_at: string | null;
  state: GaugeState;
  action: string;
  warn_at?: number;
}

export interface IUsageNotification {
  id: number;
  budget: string;
  level: 'warning' | 'exceeded' | 'stopped' | string;
  message: string;
  created_at: string;
  read_at?: string | null;
}

const q = encodeURIComponent;

/** The user's usage since `from` (ISO), broken down by `by`. */
export function getUsage(from: string, by: 'thing' | 'resource' | 'day' = 'thing'): Promise<IUsage> {
  return usageClient.get<IUsage>(`api/usage?from=${q(from)}&by=${by}`);
}

export async function getBudgets(): Promise<IBudget[]> {
  return (await usageClient.get<{ budgets: IBudget[] }>('api/budgets')).budgets;
}

/** The notifications not read yet, oldest first. */
export async function unreadNotifications(): Promise<IUsageNotification[]> {
  const answer = await usageClient.get<{ notifications: IUsageNotification[] } | IUsageNotification[]>(
    'api/notifications?unread=1'
  );
  return Array.isArray(answer) ? answer : answer.notifications;
}

export function markRead(id: number): Promise<unknown> {
  return usageClient.post(`api/notifications/${id}/read`);
}
