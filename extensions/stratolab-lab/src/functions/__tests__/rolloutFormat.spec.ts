import {
  allowedActions,
  checkValue,
  decisionText,
  ICheckResult,
  IDecision,
  metricRows,
  nextCheckText,
  parseSteps,
  phaseText,
  stepMarks,
  verdictStyle
} from '../rolloutFormat';

function decision(extra: Partial<IDecision>): IDecision {
  return {
    action: 'advance',
    at: 0,
    from_weight: 10,
    to_weight: 25,
    traffic: { '1': 75, '2': 25 },
    step: 1,
    failures: 0,
    phase: 'progressing',
    reason: 'every check passed',
    judgement: null,
    ...extra
  };
}

describe('stepMarks', () => {
  it('highlights the current step while progressing', () => {
    const marks = stepMarks({ steps: [10, 25, 50, 100], weight: 25, phase: 'progressing', decisions: [] });
    expect(marks.map(m => m.state)).toEqual(['done', 'current', 'todo', 'todo']);
  });

  it('adds the 100 a service may leave out, and marks all done once promoted', () => {
    const marks = stepMarks({ steps: [10, 50], weight: 100, phase: 'promoted', decisions: [] });
    expect(marks).toEqual([
      { percent: 10, state: 'done' },
      { percent: 50, state: 'done' },
      { percent: 100, state: 'done' }
    ]);
  });

  it('marks the step a rollback happened at', () => {
    const marks = stepMarks({
      steps: [10, 25, 50, 100],
      weight: 0,
      phase: 'rolled_back',
      decisions: [decision({}), decision({ action: 'rollback', from_weight: 25, to_weight: 0 })]
    });
    expect(marks.map(m => m.state)).toEqual(['done', 'failed', 'todo', 'todo']);
  });
});

describe('buttons by phase', () => {
  it('allows pause while progressing, resume while paused, nothing once ended', () => {
    expect(allowedActions('progressing')).toEqual(['pause', 'promote', 'abort']);
    expect(allowedActions('paused')).toEqual(['resume', 'promote', 'abort']);
    expect(allowedActions('promoted')).toEqual([]);
    expect(allowedActions('rolled_back')).toEqual([]);
  });
});

describe('numbers', () => {
  it('puts both versions side by side', () => {
    const rows = metricRows({
      baseline: {
        requests: 900,
        errors: 9,
        error_rate: 0.01,
        latency_p50_ms: 4.2,
        latency_p99_ms: 120,
        accuracy: 0.9,
        feedback: 100
      },
      candidate: {
        requests: 100,
        errors: 0,
        error_rate: 0,
        latency_p50_ms: null,
        latency_p99_ms: null,
        accuracy: null,
        feedback: 0
      }
    });
    expect(rows.map(r => r[3])).toEqual(['requests', 'error-rate', 'p50', 'p99', 'accuracy']);
    expect(rows[0].slice(1, 3)).toEqual(['900', '100']);
    expect(rows[1].slice(1, 3)).toEqual(['1.00 %', '0.00 %']);
    expect(rows[2].slice(1, 3)).toEqual(['4.2 ms', '–']);
    expect(rows[3][1]).toBe('120 ms');
    expect(rows[4].slice(1, 3)).toEqual(['90.0 % (100 labels)', 'no feedback']);
  });

  it('shows a missing version as dashes', () => {
    expect(metricRows({ baseline: null, candidate: null }).every(r => r[1] === '–' && r[2] === '–')).toBe(true);
  });

  it("writes a check's values in its unit", () => {
    const check = (metric: string): ICheckResult => ({
      name: metric,
      metric,
      test: 'statistical',
      verdict: 'pass',
      reason: '',
      candidate: null,
      baseline: null,
      p_value: null,
      samples_baseline: 0,
      samples_candidate: 0
    });
    expect(checkValue(check('error_rate'), 0.0123)).toBe('1.23 %');
    expect(checkValue(check('latency'), 250.4)).toBe('250 ms');
    expect(checkValue(check('custom:loss'), 0.123456)).toBe('0.1235');
    expect(checkValue(check('latency'), null)).toBe('–');
  });

  it('styles verdicts', () => {
    expect(verdictStyle('pass').className).toBe('jp-Stratolab-verdict-pass');
    expect(verdictStyle('fail').className).toBe('jp-Stratolab-verdict-fail');
    expect(verdictStyle('nodata').label).toBe('no data yet');
  });
});

describe('words', () => {
  it('says each decision in a line', () => {
    expect(decisionText(decision({}))).toBe('advanced 10 % → 25 %: every check passed');
    expect(decisionText(decision({ action: 'hold', from_weight: 25, to_weight: 25, reason: '' }))).toBe(
      'held (not enough data) at 25 %'
    );
  });

  it('says the phase', () => {
    expect(phaseText({ phase: 'progressing', weight: 25, candidate: 3, mode: 'canary' })).toBe(
      'progressing: v3 at 25 %'
    );
    expect(phaseText({ phase: 'progressing', weight: 10, candidate: 3, mode: 'shadow' })).toBe(
      'progressing: v3 at 10 % shadow'
    );
    expect(phaseText({ phase: 'rolled_back', weight: 0, candidate: 3, mode: 'canary' })).toBe(
      'rolled back: v3 takes no traffic'
    );
  });

  it('counts down to the next check', () => {
    const now = Date.parse('2026-01-01T00:00:00Z');
    expect(nextCheckText('2026-01-01T00:00:42Z', now)).toBe('in 42 s');
    expect(nextCheckText('2025-12-31T23:59:00Z', now)).toBe('due');
    expect(nextCheckText(null, now)).toBe('–');
  });
});

describe('parseSteps', () => {
  it('reads 10,25,50,100 and refuses what the service would', () => {
    expect(parseSteps('10, 25,50 100%')).toEqual([10, 25, 50, 100]);
    expect(() => parseSteps('')).toThrow(/steps/);
    expect(() => parseSteps('10,5')).toThrow(/go up/);
    expect(() => parseSteps('0,150')).toThrow(/1 to 100/);
    expect(() => parseSteps('ten')).toThrow(/whole percentage/);
  });
});
