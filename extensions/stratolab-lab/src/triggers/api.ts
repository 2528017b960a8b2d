/**
 * The triggers service's API, as the lab uses it (through `triggersClient`, the server's proxy to
 * `/services/triggers/`).
 *
 * The shapes mirror the service's TRIGGER and EVENT JSON (issue 14's contract): a trigger ties one
 * source of events (an upload folder, an MQTT topic filter, a table, a queue, a timer, an ingress
 * URL) to one of its owner's functions; its events are stored, delivered, retried, and dead-lettered
 * after the last try.
 */
import { triggersClient } from '../api/client';

/** The kinds of trigger, in the order the Add trigger form offers them. */
export const TRIGGER_KINDS = [
  'upload',
  'mqtt',
  'postgres',
  'nats',
  'rabbitmq',
  'redis',
  'cron',
  'cloudevents'
] as const;

export type TriggerKind = (typeof TRIGGER_KINDS)[number];

export type EventState = 'pending' | 'running' | 'done' | 'dead';

/** A filter as the service answers it: the attribute and one of exact, prefix or suffix. */
export interface IFilter {
  attribute: string;
  exact?: string;
  prefix?: string;
  suffix?: string;
}

/** Where results go, as the service answers it. */
export interface IDestination {
  kind: 'function' | 'webhook' | 'mqtt';
  target: string;
  when: 'success' | 'failure' | 'always';
}

export interface ITrigger {
  id: number;
  name: string;
  owner: string;
  function: string;
  kind: TriggerKind;
  source: Record<string, unknown>;
  filters: IFilter[];
  batch: number;
  concurrency: number;
  ordered: boolean;
  retries: number;
  max_age_s: number;
  backoff_s: number;
  destination: IDestination | null;
  paused: boolean;
  created: string;
  /** What its source reports; `state` is active, starting, paused or error. */
  status: { state?: string; connected: boolean; error: string | null; received: number };
  counts: Record<EventState, number>;
  ingress_url: string | null;
  upload_url: string | null;
  /** Only in the answer to the creation: shown once. */
  key?: string;
}

export interface ITriggerEvent {
  id: number;
  trigger_id: number | null;
  owner: string;
  function: string;
  ce_id: string;
  source: string;
  type: string;
  subject: string | null;
  time: string | null;
  key: string | null;
  state: EventState;
  attempts: number;
  received_at: string;
  finished_at: string | null;
  next_attempt_at: string | null;
  error: string | null;
  result_content_type: string | null;
  result_status?: number | null;
  /** The event's data in bytes. */
  size?: number | null;
  result?: unknown;
}

/** The body of `POST api/triggers` (stratolab/triggers/spec.py's `parse_trigger`). */
export interface ITriggerRequest {
  function: string;
  kind: TriggerKind;
  source: Record<string, unknown>;
  name?: string;
  filters?: IFilter[];
  batch?: number;
  concurrency?: number;
  ordered?: boolean;
  retries?: number;
  max_age_s?: number;
  backoff_s?: number;
  /** `{"function": NAME}`, `{"webhook": URL}` or `{"mqtt": TOPIC}`, with `when`. */
  destination?: Record<string, string>;
  paused?: boolean;
}

const q = encodeURIComponent;

export async function listTriggers(fn: string): Promise<ITrigger[]> {
  return (await triggersClient.get<{ triggers: ITrigger[] }>(`api/triggers?function=${q(fn)}`)).triggers;
}

export function createTrigger(request: ITriggerRequest): Promise<ITrigger> {
  return triggersClient.post<ITrigger>('api/triggers', request);
}

export function setPaused(id: number, paused: boolean): Promise<ITrigger> {
  return triggersClient.patch<ITrigger>(`api/triggers/${id}`, { paused });
}

export function deleteTrigger(id: number): Promise<void> {
  return triggersClient.delete(`api/triggers/${id}`);
}

/** The function's dead-lettered events, newest first. */
export async function deadLetters(fn: string): Promise<ITriggerEvent[]> {
  return (await triggersClient.get<{ events: ITriggerEvent[] }>(`api/dlq?function=${q(fn)}`)).events;
}

/** Deliver dead events again: the ones named, or every one of the function's. */
export async function redrive(target: { events: number[] } | { function: string }): Promise<number> {
  return (await triggersClient.post<{ redriven: number }>('api/dlq/redrive', target)).redriven;
}
