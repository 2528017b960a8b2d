/**
 * How a function's rollout reads in the panel: its steps (done, current, to come), the two versions'
 * numbers side by side, the judge's verdict per check, the decisions in words, and which buttons a
 * phase allows. Pure: no requests, no DOM. Shapes as the functions service answers
 * `GET api/functions/NAME/rollouts/current` (stratolab/functions/service/rollouts.py).
 */
import { formatMs } from './format';

export interface IVersionMetrics {
  requests: number;
  errors: number;
  error_rate: number | null;
  latency_p50_ms: number | null;
  latency_p99_ms: number | null;
  labels?: Record<string, number>;
  feedback?: number;
  accuracy: number | null;
}

export interface ICheckResult {
  name: string;
  metric: string;
  test: string;
  verdict: string;
  reason: string;
  candidate: number | null;
  baseline: number | null;
  p_value: number | null;
  samples_candidate: number;
  samples_baseline: number;
  critical?: boolean;
}

export interface IJudgement {
  verdict: string;
  score: number | null;
  metrics: ICheckResult[];
}

export interface IDecision {
  action: string;
  at: number | string;
  from_weight: number;
  to_weight: number;
  traffic: Record<string, number>;
  shadow_percent?: number;
  step: number;
  failures: number;
  phase: string;
  reason: string;
  judgement: IJudgement | null;
}

export interface IRollout {
  id: number;
  function: string;
  owner: string;
  baseline: number;
  candidate: number;
  mode: string;
  steps: number[];
  interval: number;
  failure_threshold?: number;
  phase: string;
  weight: number;
  traffic: Record<string, number>;
  shadow_percent?: number;
  failures: number;
  metrics: { baseline: IVersionMetrics | null; candidate: IVersionMetrics | null };
  last_judgement: IJudgement | null;
  decisions: IDecision[];
  started_at: string | null;
  updated_at: string | null;
  ended_at: string | null;
  next_check_at: string | null;
}

export const ENDED_PHASES = ['promoted', 'rolled_back', 'aborted'];

export function isEnded(rollout: { phase: string }): boolean {
  return ENDED_PHASES.includes(rollout.phase);
}

/** The buttons a phase allows (a finished rollout: none; the service answers 409 to them). */
export function allowedActions(phase: string): Array<'pause' | 'resume' | 'promote' | 'abort'> {
  if (phase === 'progressing') {
    return ['pause', 'promote', 'abort'];
  }
  if (phase === 'paused') {
    return ['resume', 'promote', 'abort'];
  }
  return [];
}

export interface IStepMark {
  percent: number;
  state: 'done' | 'current' | 'todo' | 'failed';
}

/**
 * The steps as marks: those below the candidate's weight done, the weight's own step current, the
 * rest to come; a promoted rollout has all done, a rolled-back or aborted one marks the step it ended at.
 */
export function stepMarks(rollout: Pick<IRollout, 'steps' | 'weight' | 'phase' | 'decisions'>): IStepMark[] {
  const steps = rollout.steps.includes(100) ? rollout.steps : [...rollout.steps, 100];
  if (rollout.phase === 'promoted') {
    return steps.map(percent => ({ percent, state: 'done' }));
  }
  if (rollout.phase === 'rolled_back' || rollout.phase === 'aborted') {
    // the weight is 0 now: the step it reached is the last decision's from_weight
    const last = rollout.decisions.length ? rollout.decisions[rollout.decisions.length - 1].from_weight : 0;
    return steps.map(percent => ({ percent, state: percent < last ? 'done' : percent === last ? 'failed' : 'todo' }));
  }
  return steps.map(percent => ({
    percent,
    state: percent < rollout.weight ? 'done' : percent === rollout.weight ? 'current' : 'todo'
  }));
}

export function percentText(rate: number | null | undefined, digits = 2): string {
  return rate === null || rate === undefined ? '–' : `${(rate * 100).toFixed(digits)} %`;
}

/** The rows of the side-by-side table: [label, baseline, candidate, key]. */
export function metricRows(metrics: IRollout['metrics']): Array<[string, string, string, string]> {
  const b = metrics.baseline;
  const c = metrics.candidate;
  const num = (m: IVersionMetrics | null, f: (m: IVersionMetrics) => string) => (m ? f(m) : '–');
  return [
    ['Requests', num(b, m => String(m.requests)), num(c, m => String(m.requests)), 'requests'],
    ['Error rate', num(b, m => percentText(m.error_rate)), num(c, m => percentText(m.error_rate)), 'error-rate'],
    ['Latency p50', num(b, m => formatMs(m.latency_p50_ms)), num(c, m => formatMs(m.latency_p50_ms)), 'p50'],
    ['Latency p99', num(b, m => formatMs(m.latency_p99_ms)), num(c, m => formatMs(m.latency_p99_ms)), 'p99'],
    ['Accuracy', num(b, m => accuracyText(m)), num(c, m => accuracyText(m)), 'accuracy']
  ];
}

function accuracyText(m: IVersionMetrics): string {
  if (m.accuracy === null || m.accuracy === undefined) {
    return m.feedback ? '–' : 'no feedback';
  }
  return `${percentText(m.accuracy, 1)}${m.feedback ? ` (${m.feedback} labels)` : ''}`;
}

/** A check's value for a version in its unit: rates in percent, latency in ms, custom values as they are. */
export function checkValue(check: ICheckResult, value: number | null): string {
  if (value === null || value === undefined) {
    return '–';
  }
  if (['error_rate', 'success_rate', 'accuracy'].includes(check.metric)) {
    return percentText(value);
  }
  if (check.metric === 'latency') {
    return formatMs(value);
  }
  return String(Number(value.toPrecision(4)));
}

/** The verdict's class and words: pass green, fail red, nodata grey. */
export function verdictStyle(verdict: string | null | undefined): { className: string; label: string } {
  switch (verdict) {
    case 'pass':
      return { className: 'jp-Stratolab-verdict-pass', label: 'pass' };
    case 'fail':
      return { className: 'jp-Stratolab-verdict-fail', label: 'fail' };
    case 'nodata':
      return { className: 'jp-Stratolab-verdict-nodata', label: 'no data yet' };
    default:
      return { className: 'jp-Stratolab-verdict-nodata', label: verdict || '–' };
  }
}

/** A decision's time (the service gives epoch seconds, or ISO text). */
export function decisionTime(at: number | string, locale?: string): string {
  const date = typeof at === 'number' ? new Date(at * 1000) : new Date(at);
  if (isNaN(date.getTime())) {
    return String(at);
  }
  return date.toLocaleTimeString(locale);
}

const ACTION_WORDS: Record<string, string> = {
  start: 'started',
  advance: 'advanced',
  halt: 'halted (a check failed)',
  hold: 'held (not enough data)',
  promote: 'promoted',
  rollback: 'rolled back',
  pause: 'paused',
  resume: 'resumed',
  abort: 'aborted'
};

/** A decision in one line: `advanced 10 % → 25 %: every check passed`. */
export function decisionText(d: IDecision): string {
  const action = ACTION_WORDS[d.action] ?? d.action;
  const weights = d.from_weight === d.to_weight ? `at ${d.to_weight} %` : `${d.from_weight} % → ${d.to_weight} %`;
  return `${action} ${weights}${d.reason ? `: ${d.reason}` : ''}`;
}

/** The phase in words, with the weight while it goes on. */
export function phaseText(r: Pick<IRollout, 'phase' | 'weight' | 'candidate' | 'mode'>): string {
  const share = r.mode === 'shadow' ? `${r.weight} % shadow` : `${r.weight} %`;
  switch (r.phase) {
    case 'progressing':
      return `progressing: v${r.candidate} at ${share}`;
    case 'paused':
      return `paused: v${r.candidate} at ${share}`;
    case 'promoted':
      return `promoted: v${r.candidate} takes 100 %`;
    case 'rolled_back':
      return `rolled back: v${r.candidate} takes no traffic`;
    case 'aborted':
      return `aborted: v${r.candidate} takes no traffic`;
    default:
      return r.phase;
  }
}

/** Seconds until the next check, in words (`in 42 s`, `due`). */
export function nextCheckText(iso: string | null, now: number = Date.now()): string {
  if (!iso) {
    return '–';
  }
  const at = Date.parse(iso);
  if (isNaN(at)) {
    return iso;
  }
  const s = Math.round((at - now) / 1000);
  return s <= 0 ? 'due' : s < 120 ? `in ${s} s` : `in ${Math.round(s / 60)} min`;
}

/**
 * The Start rollout form's steps text (`10,25,50,100`) as percentages; throws naming the problem.
 */
export function parseSteps(text: string): number[] {
  const parts = text
    .split(/[\s,]+/)
    .map(s => s.replace(/%$/, ''))
    .filter(Boolean);
  if (!parts.length) {
    throw new Error('steps: give the percentages, such as 10,25,50,100');
  }
  const steps = parts.map(p => Number(p));
  if (steps.some(s => !Number.isInteger(s) || s < 1 || s > 100)) {
    throw new Error('steps: every step is a whole percentage from 1 to 100');
  }
  if (steps.some((s, i) => i > 0 && s <= steps[i - 1])) {
    throw new Error('steps: they must go up, such as 10,25,50,100');
  }
  return steps;
}
