import { INotebookParameter } from '../api';
import { formatDuration, profileOptions, runOutputs } from '../format';
import {
  changedParameters,
  cronHint,
  defaultScheduleName,
  formatParameterValue,
  IScheduleFields,
  nextRunLines,
  parseParameterValue,
  scheduleRequest,
  splitAddresses
} from '../scheduleForm';

const declared: INotebookParameter[] = [
  { name: 'n', type: 'int', default: 10 } as INotebookParameter,
  { name: 'lr', type: 'float', default: 0.1 } as INotebookParameter,
  { name: 'label', type: 'str', default: 'x' } as INotebookParameter
];

describe('cron preview', () => {
  it('says what it can without asking the scheduler', () => {
    expect(cronHint('0 7 * * *', true)).toMatch(/Run now/);
    expect(cronHint('  ', false)).toMatch(/^e\.g\. 0 7 \* \* 1-5/);
    expect(cronHint('0 7 * * *', false)).toBeNull();
  });

  it('shows each next run in the schedule’s time zone', () => {
    const lines = nextRunLines({
      cron: '0 7 * * *',
      timezone: 'Europe/Paris',
      description: 'At 07:00',
      next: ['2026-01-05T06:00:00Z', '2026-01-06T06:00:00Z']
    } as never);
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatch(/7:00:00.*\(Europe\/Paris\)$/);
  });
});

describe('parameters', () => {
  it('reads typed values with the type of the default', () => {
    expect(parseParameterValue(' 3 ', 'int')).toEqual({ ok: true, value: 3 });
    expect(parseParameterValue('3.5', 'int')).toEqual({ ok: false, error: 'Expected an integer, e.g. 3' });
    expect(parseParameterValue('1e-3', 'float')).toEqual({ ok: true, value: 0.001 });
    expect(parseParameterValue('', 'float').ok).toBe(false);
    expect(parseParameterValue('Yes', 'bool')).toEqual({ ok: true, value: true });
    expect(parseParameterValue('[1, 2]', 'list')).toEqual({ ok: true, value: [1, 2] });
    expect(parseParameterValue('{"a": 1}', 'list').ok).toBe(false);
    expect(parseParameterValue(' a b ', 'str')).toEqual({ ok: true, value: ' a b ' });
    expect(parseParameterValue('not json', 'NoneType')).toEqual({ ok: true, value: 'not json' });
  });

  it('sends only the values that differ from the defaults', () => {
    expect(formatParameterValue(0.1, 'float')).toBe('0.1');
    expect(changedParameters(declared, { n: '10', lr: '0.5', label: 'x' })).toEqual({
      values: { lr: 0.5 },
      errors: {}
    });
    expect(changedParameters(declared, { n: 'ten' })).toEqual({
      values: {},
      errors: { n: 'Expected an integer, e.g. 3' }
    });
  });

  it('splits addresses and names schedules after their notebook', () => {
    expect(splitAddresses('a@x.org, b@x.org;c@x.org  d@x.org')).toEqual(['a@x.org', 'b@x.org', 'c@x.org', 'd@x.org']);
    expect(defaultScheduleName('reports/daily.ipynb')).toBe('daily');
  });
});

describe('scheduleRequest', () => {
  const fields: IScheduleFields = {
    name: ' daily ',
    cron: '0 7 * * *',
    onDemand: false,
    timezone: '',
    missed: 'catch_up',
    parameters: { n: '10', lr: '0.1', label: 'y' },
    profile: '',
    timeout: '',
    retries: '2',
    retryBackoff: '',
    ipynb: true,
    html: false,
    webhook: '',
    emails: '',
    onFailure: true,
    onSuccess: false
  };
  const create = { declared, editing: false, needsCron: true };

  it('makes a new schedule’s request, leaving out what is not set', () => {
    expect(scheduleRequest(fields, create)).toEqual({
      request: {
        name: 'daily',
        cron: '0 7 * * *',
        timezone: 'UTC',
        parameters: { label: 'y' },
        output_formats: ['ipynb'],
        missed: 'catch_up',
        retries: 2
      },
      problems: []
    });
  });

  it('clears settings of an edited schedule with null', () => {
    const { request } = scheduleRequest({ ...fields, onDemand: true }, { ...create, editing: true });
    expect(request).toMatchObject({ cron: null, profile: null, timeout: null, notify: null });
  });

  it('says what is wrong, by field', () => {
    const { request, problems } = scheduleRequest(
      { ...fields, name: ' ', cron: '', parameters: { n: 'x' }, timeout: '-1', webhook: 'https://h', onFailure: false },
      create
    );
    expect(request).toBeNull();
    expect(problems.map(([field]) => field)).toEqual(['name', 'cron', 'parameters.n', 'timeout', 'notify']);
  });

  it('needs no cron to run now', () => {
    expect(scheduleRequest({ ...fields, cron: '' }, { ...create, needsCron: false }).request?.cron).toBeNull();
  });

  it('notifies when asked to', () => {
    const { request } = scheduleRequest({ ...fields, emails: 'a@x.org b@x.org', onSuccess: true }, create);
    expect(request?.notify).toEqual({ webhook: null, email: ['a@x.org', 'b@x.org'], on: ['failure', 'success'] });
  });
});

describe('format', () => {
  it('lists environments with their GPUs and keeps one no longer listed', () => {
    const profiles = [
      { slug: 'cpu', display_name: 'CPU', gpus: 0 },
      { slug: 'gpu', display_name: 'GPU', gpus: 2 }
    ] as never[];
    expect(profileOptions(profiles, 'old', 'per trial')).toEqual([
      ['', 'Default environment'],
      ['cpu', 'CPU'],
      ['gpu', 'GPU (2 GPUs per trial)'],
      ['old', 'old']
    ]);
  });

  it('shows durations and a run’s outputs', () => {
    expect(formatDuration(null)).toBe('–');
    expect(formatDuration(4.25)).toBe('4.3 s');
    expect(formatDuration(125)).toBe('2 min 5 s');
    expect(formatDuration(7260)).toBe('2 h 1 min');
    expect(runOutputs({ state: 'succeeded' } as never)).toEqual(['ipynb']);
    expect(runOutputs({ state: 'running' } as never)).toEqual([]);
    expect(runOutputs({ state: 'failed', outputs: ['html'] } as never)).toEqual(['html']);
  });
});
