/**
 * The scheduler's API for notebook jobs, as the lab uses it (through `schedulerClient`).
 *
 * The shapes mirror docs/scheduler-api.md.
 */
import { schedulerClient } from '../api/client';

/** Who hears about runs; the service leaves out what is not set (`{}`: nobody). */
export interface INotify {
  webhook?: string | null;
  email?: string[];
  on?: string[];
}

export interface IRun {
  id: number;
  /** null for an ad-hoc run (run once, or a pipeline's step) */
  schedule_id: number | null;
  /** its schedule's name; an ad-hoc run's own name */
  schedule_name: string;
  /** an ad-hoc run's labels: a pipeline's step has pipeline_run, pipeline and step */
  labels?: Record<string, string>;
  owner: string;
  trigger: string;
  state: string;
  attempt: number;
  scheduled_for: string | null;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  duration: number | null;
  lateness: number | null;
  error: string | null;
  parameters: Record<string, unknown>;
  outputs?: string[];
}

export interface ISchedule {
  id: number;
  name: string;
  owner: string;
  notebook: string;
  snapshot: { digest: string; taken_at: string } | null;
  cron: string | null;
  timezone: string;
  description: string | null;
  parameters: Record<string, unknown>;
  profile: string | null;
  timeout: number | null;
  retries: number;
  retry_backoff: number;
  output_formats: string[];
  notify: INotify | null;
  missed: string;
  active: boolean;
  next_run_at: string | null;
  last_run: IRun | null;
  created_at: string;
  updated_at: string;
}

/** What a schedule is created or changed with (`POST`/`PATCH api/schedules`). */
export interface IScheduleRequest {
  notebook?: string;
  content?: unknown;
  name?: string;
  cron?: string | null;
  timezone?: string;
  parameters?: Record<string, unknown>;
  profile?: string | null;
  timeout?: number | null;
  retries?: number;
  retry_backoff?: number;
  output_formats?: string[];
  notify?: INotify | null;
  missed?: string;
  active?: boolean;
}

export interface ICronPreview {
  description: string;
  next: string[];
  timezone: string;
}

export interface INotebookParameter {
  name: string;
  type: string;
  default: unknown;
  help: string;
}

export interface IProfile {
  slug: string;
  display_name: string;
  gpus: number;
}

/** The environments runs can use (the hub's profiles). */
export async function listProfiles(): Promise<IProfile[]> {
  return (await schedulerClient.get<{ profiles: IProfile[] }>('api/profiles')).profiles;
}

export function listSchedules(): Promise<ISchedule[]> {
  return schedulerClient.get<{ schedules: ISchedule[] }>('api/schedules').then(d => d.schedules);
}

export function listRuns(scheduleId: number | null, limit = 30): Promise<IRun[]> {
  const query = scheduleId === null ? `limit=${limit}` : `schedule=${scheduleId}&limit=${limit}`;
  return schedulerClient.get<{ runs: IRun[] }>(`api/runs?${query}`).then(d => d.runs);
}

/** A new idempotency key: one per click, so a retried request does not start a second run. */
export function idempotencyKey(): string {
  return typeof crypto.randomUUID === 'function'
    ? crypto.randomUUID()
    : `${Date.now().toString(16)}-${Math.random().toString(16).slice(2)}`;
}

/** Start a run of a schedule now ("Run now"). */
export function runNow(scheduleId: number): Promise<IRun> {
  return schedulerClient.post<IRun>(`api/schedules/${scheduleId}/runs`, {
    idempotency_key: idempotencyKey()
  });
}
