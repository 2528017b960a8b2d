import { ITrigger, ITriggerEvent } from '../api';
import {
  countsText,
  deadCount,
  deadLetterLine,
  deliveryText,
  hasWork,
  inboxPath,
  sourceSummary,
  triggerState
} from '../format';

function trigger(over: Partial<ITrigger> = {}): ITrigger {
  return {
    id: 1,
    name: 'resize-upload',
    owner: 'alice',
    function: 'resize',
    kind: 'upload',
    source: { folder: 'inbox/resize', output: 'next', pattern: '*' },
    filters: [],
    batch: 1,
    concurrency: 8,
    ordered: false,
    retries: 3,
    max_age_s: 86400,
    backoff_s: 1,
    destination: null,
    paused: false,
    created: '2026-01-05T06:00:00Z',
    status: { connected: true, error: null, received: 0 },
    counts: { pending: 0, running: 0, done: 0, dead: 0 },
    ingress_url: null,
    upload_url: null,
    ...over
  };
}

describe('a trigger’s state', () => {
  it('is paused when paused, whatever its source said before', () => {
    expect(triggerState(trigger({ paused: true, status: { connected: false, error: 'gone', received: 0 } }))).toEqual({
      state: 'paused',
      text: 'paused'
    });
  });

  it('is an error while its source reports one, else active', () => {
    expect(
      triggerState(trigger({ status: { connected: false, error: 'connection refused', received: 0 } })).state
    ).toBe('error');
    expect(triggerState(trigger()).text).toBe('active');
    expect(
      triggerState(trigger({ status: { state: 'starting', connected: false, error: null, received: 0 } })).text
    ).toBe('active (starting)');
    expect(triggerState(trigger({ status: { connected: false, error: null, received: 0 } })).text).toBe(
      'active (connecting)'
    );
  });
});

describe('a trigger in one line', () => {
  it('says where each kind’s events come from', () => {
    expect(sourceSummary(trigger())).toBe('inbox/resize/ · results beside each file');
    expect(sourceSummary(trigger({ source: { folder: 'in', output: 'out/x', pattern: '*.png' } }))).toBe(
      'in/*.png · results to out/x/'
    );
    expect(sourceSummary(trigger({ kind: 'mqtt', source: { filter: 'sensors/#', qos: 1 } }))).toBe(
      'topic sensors/# (QoS 1)'
    );
    expect(sourceSummary(trigger({ kind: 'postgres', source: { table: 'public.t', operations: ['INSERT'] } }))).toBe(
      'table public.t: INSERT'
    );
    expect(sourceSummary(trigger({ kind: 'cron', source: { expr: '0 7 * * *', timezone: 'Europe/Paris' } }))).toBe(
      '0 7 * * * (Europe/Paris)'
    );
    expect(sourceSummary(trigger({ kind: 'cloudevents', source: {} }))).toMatch(/ingress URL/);
  });

  it('gives an upload trigger’s inbox as a folder of the file browser', () => {
    expect(inboxPath(trigger({ source: { folder: 'inbox/resize/' } }))).toBe('inbox/resize/');
    expect(inboxPath(trigger({ kind: 'mqtt', source: { filter: 'a' } }))).toBeNull();
  });

  it('counts events, running only while some are', () => {
    expect(countsText({ pending: 2, running: 0, done: 5, dead: 1 })).toBe('2 pending · 5 done · 1 dead');
    expect(countsText({ pending: 0, running: 3, done: 0, dead: 0 })).toBe('0 pending · 3 running · 0 done · 0 dead');
    const busy = trigger({ counts: { pending: 0, running: 1, done: 0, dead: 2 } });
    expect(hasWork([trigger(), busy])).toBe(true);
    expect(hasWork([trigger()])).toBe(false);
    expect(deadCount([busy, busy])).toBe(4);
  });

  it('says the delivery settings that matter', () => {
    const t = trigger({
      filters: [{ attribute: 'subject', suffix: '.png' }],
      batch: 8,
      ordered: true,
      retries: 0,
      destination: { kind: 'function', target: 'store', when: 'failure' }
    });
    expect(deliveryText(t)).toBe(
      'only subject$=.png · batches of 8 · in order per key · 0 retries · results to function store (on failure)'
    );
  });
});

describe('a dead letter', () => {
  it('reads with its id, type, subject and attempts', () => {
    const event = {
      id: 7,
      ce_id: 'x',
      type: 'stratolab.upload',
      subject: 'inbox/resize/a.png',
      attempts: 4,
      received_at: 'not a date',
      finished_at: null
    } as unknown as ITriggerEvent;
    expect(deadLetterLine(event)).toBe('#7 stratolab.upload · inbox/resize/a.png · 4 attempts · not a date');
  });
});
