/**
 * How triggers and their events read in the panel: a source in one line, the state (active, paused,
 * or the source's error), the event counts, a dead letter's line. Pure: no requests, no DOM.
 */
import { formatTime } from '../jobs/format';
import { IDestination, ITrigger, ITriggerEvent } from './api';
import { formatFilter } from './request';

export type TriggerState = 'active' | 'paused' | 'error';

/**
 * A trigger's state: paused (by its owner; its source is stopped, so an error from before is old
 * news), else in error while its source reports one (a broker unreachable, a table gone), else
 * active (the service says "starting" until the source runs, and whether it is connected).
 */
export function triggerState(trigger: ITrigger): { state: TriggerState; text: string } {
  if (trigger.paused) {
    return { state: 'paused', text: 'paused' };
  }
  if (trigger.status?.error || trigger.status?.state === 'error') {
    return { state: 'error', text: 'error' };
  }
  if (trigger.status?.state === 'starting') {
    return { state: 'active', text: 'active (starting)' };
  }
  return { state: 'active', text: trigger.status && !trigger.status.connected ? 'active (connecting)' : 'active' };
}

const str = (value: unknown): string => (value === undefined || value === null ? '' : String(value));

/** Where a trigger's events come from, in one line. */
export function sourceSummary(trigger: ITrigger): string {
  const s = trigger.source ?? {};
  switch (trigger.kind) {
    case 'upload': {
      const output = str(s.output);
      const results =
        !output || output === 'none'
          ? 'results not written'
          : output === 'next'
            ? 'results beside each file'
            : `results to ${output}/`;
      const pattern = str(s.pattern);
      return `${str(s.folder)}/${pattern && pattern !== '*' ? pattern : ''} · ${results}`;
    }
    case 'mqtt':
      return `topic ${str(s.filter)} (QoS ${str(s.qos ?? 1)})`;
    case 'postgres':
      return `table ${str(s.table)}: ${Array.isArray(s.operations) ? s.operations.join(', ') : 'INSERT, UPDATE, DELETE'}`;
    case 'nats':
      return `subject ${str(s.subject)}`;
    case 'rabbitmq':
      return `queue ${str(s.queue)}`;
    case 'redis':
      return `stream ${str(s.stream)}`;
    case 'cron':
      return `${str(s.expr)} (${str(s.timezone) || 'UTC'})`;
    case 'cloudevents':
      return 'CloudEvents sent to its ingress URL';
    default:
      return JSON.stringify(s);
  }
}

/** The upload folder as a path of the file browser (relative to the home, with a slash). */
export function inboxPath(trigger: ITrigger): string | null {
  const folder = trigger.kind === 'upload' ? str(trigger.source?.folder) : '';
  return folder ? `${folder.replace(/\/+$/, '')}/` : null;
}

/** Its events: pending, running (only while some are), done and dead. */
export function countsText(counts: ITrigger['counts'] | undefined): string {
  const c = counts ?? { pending: 0, running: 0, done: 0, dead: 0 };
  const parts = [`${c.pending ?? 0} pending`];
  if (c.running) {
    parts.push(`${c.running} running`);
  }
  parts.push(`${c.done ?? 0} done`, `${c.dead ?? 0} dead`);
  return parts.join(' · ');
}

/** Whether events are waiting or being handled (the view polls faster then). */
export function hasWork(triggers: ReadonlyArray<ITrigger>): boolean {
  return triggers.some(t => (t.counts?.pending ?? 0) + (t.counts?.running ?? 0) > 0);
}

/** How many events of the triggers are dead-lettered. */
export function deadCount(triggers: ReadonlyArray<ITrigger>): number {
  return triggers.reduce((sum, t) => sum + (t.counts?.dead ?? 0), 0);
}

export function destinationText(destination: IDestination | null): string {
  if (!destination) {
    return '';
  }
  const when = destination.when === 'success' ? '' : ` (on ${destination.when})`;
  return `${destination.kind} ${destination.target}${when}`;
}

/** The delivery settings that differ from a plain trigger's, in one line ('' when none do). */
export function deliveryText(trigger: ITrigger): string {
  const parts: string[] = [];
  if (trigger.filters?.length) {
    parts.push(`only ${trigger.filters.map(formatFilter).join(', ')}`);
  }
  if (trigger.batch > 1) {
    parts.push(`batches of ${trigger.batch}`);
  }
  if (trigger.ordered) {
    parts.push('in order per key');
  }
  parts.push(`${trigger.retries} retries`);
  if (trigger.destination) {
    parts.push(`results to ${destinationText(trigger.destination)}`);
  }
  return parts.join(' · ');
}

/** A dead letter's line: its type and subject, its attempts, and when it died. */
export function deadLetterLine(event: ITriggerEvent): string {
  const what = [event.type, event.subject].filter(Boolean).join(' · ') || event.ce_id;
  const attempts = `${event.attempts} attempt${event.attempts === 1 ? '' : 's'}`;
  return `#${event.id} ${what} · ${attempts} · ${formatTime(event.finished_at ?? event.received_at)}`;
}
