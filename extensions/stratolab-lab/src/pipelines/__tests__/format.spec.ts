import { IPipelineRun, IPipelineStep } from '../api';
import {
  errorsByNode,
  errorText,
  isActive,
  opInfo,
  parseParameter,
  recordLines,
  resumeFrom,
  shortDuration,
  shortValue,
  stepDuration,
  stepStyle,
  stepSummary
} from '../format';
import { IGraphNode } from '../graph';

function step(extra: Partial<IPipelineStep>): IPipelineStep {
  return {
    id: 'n1',
    name: 'train',
    op: 'execute-notebook-node',
    state: 'pending',
    started_at: null,
    finished_at: null,
    duration: null,
    run_id: null,
    records: null,
    error: null,
    ...extra
  };
}

describe('stepStyle', () => {
  it('colours each state as the contract says', () => {
    expect(stepStyle('pending')).toMatchObject({ colour: 'grey', dashed: false, pulsing: false });
    expect(stepStyle('running')).toMatchObject({
      colour: 'blue',
      pulsing: true,
      className: 'jp-Stratolab-step-running'
    });
    expect(stepStyle('succeeded').colour).toBe('green');
    expect(stepStyle('failed').colour).toBe('red');
    expect(stepStyle('skipped')).toMatchObject({ dashed: true });
    expect(stepStyle('cached').colour).toBe('teal');
  });

  it('draws an unknown state or no run plainly', () => {
    expect(stepStyle(null).className).toBe('jp-Stratolab-step-none');
    expect(stepStyle('weird')).toMatchObject({ className: 'jp-Stratolab-step-none', label: 'weird', pulsing: false });
  });
});

describe('durations and values', () => {
  it('formats durations short', () => {
    expect(shortDuration(0.42)).toBe('0.4 s');
    expect(shortDuration(12.4)).toBe('12 s');
    expect(shortDuration(185)).toBe('3 min 5 s');
    expect(shortDuration(3720)).toBe('1 h 2 min');
    expect(shortDuration(null)).toBe('');
    expect(shortDuration(-1)).toBe('');
  });

  it("uses the service's duration, else start to end, else start to now", () => {
    expect(stepDuration(step({ duration: 3 }))).toBe(3);
    expect(stepDuration(step({ started_at: '2026-01-01T00:00:00Z', finished_at: '2026-01-01T00:00:10Z' }))).toBe(10);
    expect(stepDuration(step({ started_at: '2026-01-01T00:00:00Z' }), Date.parse('2026-01-01T00:01:00Z'))).toBe(60);
    expect(stepDuration(step({}))).toBeNull();
  });

  it('shortens recorded values', () => {
    expect(shortValue(0.912345678)).toBe('0.9123');
    expect(shortValue(42)).toBe('42');
    expect(shortValue({ a: [1, 2] })).toBe('{"a":[1,2]}');
    expect(shortValue('x'.repeat(40), 10)).toBe('xxxxxxxxx…');
    expect(shortValue(null)).toBe('null');
  });

  it('lists records in name order, at most three and a count', () => {
    expect(recordLines({ b: 2, a: 1 })).toEqual(['a = 1', 'b = 2']);
    expect(recordLines({ a: 1, b: 2, c: 3, d: 4, e: 5 })).toEqual(['a = 1', 'b = 2', 'c = 3', '+2 more']);
    expect(recordLines(null)).toEqual([]);
  });

  it('summarises a step: state, duration, branch', () => {
    expect(stepSummary(step({ state: 'succeeded', duration: 12 }))).toBe('succeeded · 12 s');
    expect(
      stepSummary(step({ state: 'succeeded', duration: 0.1, branch: false, op: 'stratolab-condition-node' }))
    ).toBe('succeeded · false · 0.1 s');
    expect(stepSummary(step({ state: 'skipped', duration: 0 }))).toBe('skipped');
    expect(stepSummary(undefined)).toBe('');
  });
});

describe('runs', () => {
  const run = (state: string, steps: IPipelineStep[] = []): IPipelineRun => ({
    id: 7,
    owner: 'u',
    pipeline: 'p',
    path: 'p.pipeline',
    state,
    parameters: {},
    created_at: '2026-01-01T00:00:00Z',
    started_at: null,
    finished_at: null,
    duration: null,
    error: null,
    steps
  });

  it('knows active runs', () => {
    expect(isActive(run('queued'))).toBe(true);
    expect(isActive(run('running'))).toBe(true);
    expect(isActive(run('failed'))).toBe(false);
    expect(isActive(null)).toBe(false);
  });

  it('resumes from the first failed step', () => {
    const r = run('failed', [
      step({ name: 'a', state: 'succeeded' }),
      step({ name: 'b', state: 'failed' }),
      step({ name: 'c', state: 'pending' })
    ]);
    expect(resumeFrom(r)).toBe('b');
    expect(resumeFrom(run('succeeded', [step({ state: 'succeeded' })]))).toBeNull();
  });
});

describe('validation errors', () => {
  const nodes: IGraphNode[] = [
    { id: 'id-1', name: 'train', label: 'train', op: 'execute-notebook-node', filename: 'train.ipynb', x: 0, y: 0 },
    { id: 'id-2', name: 'Load_data', label: 'Load data', op: 'execute-notebook-node', filename: null, x: 0, y: 0 }
  ];

  it('puts each error on the node it names, by id, name or label', () => {
    const byNode = errorsByNode(
      [
        { node: 'train', node_id: 'id-1', field: 'filename', message: 'train.ipynb does not exist' },
        { node: 'Load data', node_id: null, field: null, message: 'a cycle' },
        { node: null, node_id: null, field: 'pipelines', message: 'no pipelines' }
      ],
      nodes
    );
    expect(byNode.get('id-1')?.length).toBe(1);
    expect(byNode.get('id-2')?.[0].message).toBe('a cycle');
    expect(byNode.get('')?.[0].field).toBe('pipelines');
  });

  it('names the field unless the message does', () => {
    expect(errorText({ node: null, node_id: null, field: 'timeout', message: 'must be a number' })).toBe(
      'timeout: must be a number'
    );
    expect(errorText({ node: null, node_id: null, field: 'timeout', message: 'timeout must be a number' })).toBe(
      'timeout must be a number'
    );
  });
});

describe('parameters', () => {
  it('parses typed values and refuses bad ones naming the parameter', () => {
    expect(parseParameter('n', '5', 'Integer', 1)).toBe(5);
    expect(() => parseParameter('n', '5.5', 'Integer', 1)).toThrow(/n: "5.5" is not an integer/);
    expect(parseParameter('lr', '0.5', 'Float', 0.1)).toBe(0.5);
    expect(parseParameter('lr', '0.5', null, 0.1)).toBe(0.5);
    expect(parseParameter('on', 'yes', 'Bool', false)).toBe(true);
    expect(() => parseParameter('on', 'maybe', 'Bool', false)).toThrow(/true or false/);
    expect(parseParameter('cfg', '{"a": 1}', null, {})).toEqual({ a: 1 });
    expect(parseParameter('tag', ' v1 ', 'String', '')).toBe(' v1 ');
  });

  it('knows each op', () => {
    expect(opInfo('stratolab-deploy-node').kind).toBe('deploy');
    expect(opInfo('something-else').kind).toBe('something-else');
  });
});
