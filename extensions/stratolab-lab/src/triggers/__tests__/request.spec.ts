import { KIND_SPECS, kindLabel, kindSpec } from '../kinds';
import { formatFilter, ITriggerFields, parseDestination, parseFilters, triggerRequest } from '../request';
import { TRIGGER_KINDS } from '../api';

/** The form's fields as a fresh form has them for `kind` (each setting's first value). */
function fresh(kind: ITriggerFields['kind'], fn = 'resize'): ITriggerFields {
  const source: Record<string, string> = {};
  const several: Record<string, string[]> = {};
  for (const field of kindSpec(kind).fields) {
    if (field.several) {
      several[field.key] = [...field.several];
    } else {
      source[field.key] = field.initial?.(fn) ?? '';
    }
  }
  return {
    kind,
    name: '',
    source,
    several,
    filters: '',
    batch: '',
    concurrency: '',
    ordered: false,
    retries: '',
    maxAge: '',
    backoff: '',
    destination: '',
    when: 'success'
  };
}

describe('kinds', () => {
  it('offers every kind the service knows, once', () => {
    expect(KIND_SPECS.map(s => s.kind)).toEqual([...TRIGGER_KINDS]);
    expect(kindLabel('postgres')).toBe('PostgreSQL table');
    expect(kindLabel('kafka')).toBe('kafka');
  });
});

describe('the request of the Add trigger form', () => {
  it('an upload trigger as the form starts: the inbox of the function, results beside each file', () => {
    const { request, problems } = triggerRequest('resize', fresh('upload'));
    expect(problems).toEqual([]);
    expect(request).toEqual({
      function: 'resize',
      kind: 'upload',
      source: { folder: 'inbox/resize', output: 'next', pattern: '*' }
    });
  });

  it('names the empty required setting with the field the service would name', () => {
    const { request, problems } = triggerRequest('f', fresh('mqtt'));
    expect(request).toBeNull();
    expect(problems).toEqual([['source.filter', 'Enter the topic filter, e.g. sensors/+/temperature.']]);
  });

  it('sends an MQTT QoS as a number and a table’s ticked operations as a list', () => {
    const mqtt = fresh('mqtt');
    mqtt.source.filter = ' sensors/+/temperature ';
    expect(triggerRequest('f', mqtt).request?.source).toEqual({ filter: 'sensors/+/temperature', qos: 1 });

    const pg = fresh('postgres');
    pg.source.table = 'public.readings';
    pg.several.operations = ['INSERT', 'DELETE'];
    expect(triggerRequest('f', pg).request?.source).toEqual({
      table: 'public.readings',
      operations: ['INSERT', 'DELETE']
    });
    pg.several.operations = [];
    expect(triggerRequest('f', pg).problems.map(p => p[0])).toEqual(['source.operations']);
  });

  it('leaves an optional setting out when it is empty (the service’s default applies)', () => {
    const cron = fresh('cron');
    cron.source.expr = '*/5 * * * *';
    cron.source.timezone = '';
    expect(triggerRequest('tick', cron).request?.source).toEqual({ expr: '*/5 * * * *' });
    expect(triggerRequest('f', fresh('cloudevents')).request?.source).toEqual({});
  });

  it('the advanced settings: filters, numbers in the service’s bounds, ordering, a destination', () => {
    const fields = fresh('upload');
    Object.assign(fields, {
      name: ' images ',
      filters: 'subject$=.png, type=com.example.upload',
      batch: '16',
      concurrency: '4',
      ordered: true,
      retries: '0',
      maxAge: '3600',
      backoff: '0.5',
      destination: 'function:store',
      when: 'always'
    });
    const { request, problems } = triggerRequest('resize', fields);
    expect(problems).toEqual([]);
    expect(request).toMatchObject({
      name: 'images',
      filters: [
        { attribute: 'subject', suffix: '.png' },
        { attribute: 'type', exact: 'com.example.upload' }
      ],
      batch: 16,
      concurrency: 4,
      ordered: true,
      retries: 0,
      max_age_s: 3600,
      backoff_s: 0.5,
      destination: { function: 'store', when: 'always' }
    });
  });

  it('refuses numbers out of bounds, by the name the service gives them', () => {
    const fields = fresh('upload');
    Object.assign(fields, { batch: '0', retries: '2.5', maxAge: '999999999', backoff: '0' });
    expect(triggerRequest('f', fields).problems.map(p => p[0])).toEqual(['batch', 'retries', 'max_age_s', 'backoff_s']);
  });
});

describe('filters and destinations as typed', () => {
  it('reads exact, prefix and suffix filters split by commas or lines; commas may be in values', () => {
    expect(parseFilters('type=a.b\nsubject^=sensors/, source$=x,y')).toEqual({
      filters: [
        { attribute: 'type', exact: 'a.b' },
        { attribute: 'subject', prefix: 'sensors/' },
        { attribute: 'source', suffix: 'x,y' }
      ]
    });
    expect(parseFilters('  ')).toEqual({ filters: [] });
    expect(parseFilters('Type=a')).toHaveProperty('error');
    expect(parseFilters('subject')).toHaveProperty('error');
  });

  it('writes a filter back as it is typed', () => {
    for (const text of ['type=a', 'subject^=s/', 'subject$=.png']) {
      const parsed = parseFilters(text) as { filters: never[] };
      expect(formatFilter(parsed.filters[0])).toBe(text);
    }
  });

  it('reads function:, webhook: and mqtt: destinations', () => {
    expect(parseDestination('', 'success')).toEqual({});
    expect(parseDestination('webhook:https://example.org/hook?a=1', 'failure')).toEqual({
      destination: { webhook: 'https://example.org/hook?a=1', when: 'failure' }
    });
    expect(parseDestination('mqtt: results/resize', '')).toEqual({
      destination: { mqtt: 'results/resize', when: 'success' }
    });
    expect(parseDestination('store', 'success')).toHaveProperty('error');
  });
});
