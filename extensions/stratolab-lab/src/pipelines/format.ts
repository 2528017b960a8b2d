/**
 * How pipeline runs and their steps read in the lab: a step state's style and words, an op's short
 * name and glyph, durations, recorded values, and validation errors matched to nodes. Pure: no DOM,
 * no requests.
 */
import { IPipelineRun, IPipelineStep, IValidationError } from './api';
import { IGraphNode } from './graph';

/** A run's states after which it changes no more. */
export const FINISHED_RUN_STATES = ['succeeded', 'failed', 'stopped'];

export const ACTIVE_RUN_STATES = ['queued', 'running'];

/** Whether a run is still going (the view polls it then). */
export function isActive(run: { state: string } | null | undefined): boolean {
  return !!run && ACTIVE_RUN_STATES.includes(run.state);
}

/**
 * The style of a step in a state: the CSS class of its box (`jp-Stratolab-step-<state>`), its colour
 * name, whether its outline is dashed (skipped) and whether it pulses (running).
 */
export interface IStepStyle {
  className: string;
  colour: 'grey' | 'blue' | 'green' | 'red' | 'teal' | 'amber';
  dashed: boolean;
  pulsing: boolean;
  label: string;
}

const STYLES: Record<string, Omit<IStepStyle, 'className'>> = {
  pending: { colour: 'grey', dashed: false, pulsing: false, label: 'pending' },
  queued: { colour: 'grey', dashed: false, pulsing: false, label: 'queued' },
  running: { colour: 'blue', dashed: false, pulsing: true, label: 'running' },
  succeeded: { colour: 'green', dashed: false, pulsing: false, label: 'succeeded' },
  failed: { colour: 'red', dashed: false, pulsing: false, label: 'failed' },
  skipped: { colour: 'grey', dashed: true, pulsing: false, label: 'skipped' },
  cached: { colour: 'teal', dashed: false, pulsing: false, label: 'cached' },
  stopped: { colour: 'amber', dashed: false, pulsing: false, label: 'stopped' }
};

/** The style of a step (no run selected: `null`, drawn as a plain node). */
export function stepStyle(state: string | null | undefined): IStepStyle {
  const key = state && STYLES[state] ? state : 'none';
  const style = STYLES[key] ?? { colour: 'grey', dashed: false, pulsing: false, label: state || '' };
  return { className: `jp-Stratolab-step-${state && STYLES[state] ? state : 'none'}`, ...style };
}

/** What each op is, in a word, and the glyph drawn in its node. */
export const OPS: Record<string, { kind: string; glyph: string }> = {
  'execute-notebook-node': { kind: 'notebook', glyph: '▤' },
  'execute-python-node': { kind: 'python', glyph: 'Py' },
  'execute-r-node': { kind: 'R', glyph: 'R' },
  'stratolab-condition-node': { kind: 'condition', glyph: '◇' },
  'stratolab-function-node': { kind: 'function', glyph: 'λ' },
  'stratolab-deploy-node': { kind: 'deploy', glyph: '⇪' },
  'stratolab-automl-node': { kind: 'AutoML', glyph: '✱' }
};

export function opInfo(op: string): { kind: string; glyph: string } {
  return OPS[op] ?? { kind: op || 'step', glyph: '▪' };
}

/** A duration in seconds, short: `0.4 s`, `12 s`, `3 min 5 s`, `1 h 2 min`; `''` when unknown. */
export function shortDuration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds) || seconds < 0) {
    return '';
  }
  if (seconds < 10) {
    return `${seconds.toFixed(1)} s`;
  }
  if (seconds < 60) {
    return `${Math.round(seconds)} s`;
  }
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) {
    return `${minutes} min ${Math.round(seconds % 60)} s`;
  }
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

/**
 * A step's duration: the one the service gives, else from its start to its end (or to `now` while it
 * runs).
 */
export function stepDuration(step: Partial<IPipelineStep>, now: number = Date.now()): number | null {
  if (typeof step.duration === 'number') {
    return step.duration;
  }
  const start = step.started_at ? Date.parse(step.started_at) : NaN;
  if (isNaN(start)) {
    return null;
  }
  const end = step.finished_at ? Date.parse(step.finished_at) : now;
  return isNaN(end) ? null : Math.max(0, (end - start) / 1000);
}

/** A recorded value, short enough for a line under a node (numbers to 4 significant digits). */
export function shortValue(value: unknown, max = 24): string {
  let out: string;
  if (typeof value === 'number') {
    out = Number.isInteger(value) ? String(value) : String(Number(value.toPrecision(4)));
  } else if (typeof value === 'string') {
    out = value;
  } else if (value === null || value === undefined) {
    out = String(value);
  } else {
    try {
      out = JSON.stringify(value);
    } catch {
      out = String(value);
    }
  }
  return out.length > max ? `${out.slice(0, max - 1)}…` : out;
}

/** A step's records as `name = value` lines, in name order, at most `limit` (then `+N more`). */
export function recordLines(records: Record<string, unknown> | null | undefined, limit = 3): string[] {
  const keys = Object.keys(records ?? {}).sort();
  const lines = keys.slice(0, limit).map(k => `${k} = ${shortValue((records ?? {})[k])}`);
  if (keys.length > limit) {
    lines.push(`+${keys.length - limit} more`);
  }
  return lines;
}

/** The line under a node's label: state, the branch a condition took, duration. */
export function stepSummary(step: Partial<IPipelineStep> | undefined, now: number = Date.now()): string {
  if (!step || !step.state) {
    return '';
  }
  const parts = [step.state];
  if (step.branch === true || step.branch === false) {
    parts.push(step.branch ? 'true' : 'false');
  }
  const duration = shortDuration(stepDuration(step, now));
  if (duration && step.state !== 'pending' && step.state !== 'skipped') {
    parts.push(duration);
  }
  return parts.join(' · ');
}

/** The validation errors about each node (by node id; errors naming no known node are kept under `''`). */
export function errorsByNode(
  errors: ReadonlyArray<IValidationError>,
  nodes: ReadonlyArray<IGraphNode>
): Map<string, IValidationError[]> {
  const out = new Map<string, IValidationError[]>();
  for (const e of errors) {
    const node =
      nodes.find(n => e.node_id && n.id === e.node_id) ??
      nodes.find(n => e.node && (n.name === e.node || n.label === e.node));
    const key = node ? node.id : '';
    out.set(key, [...(out.get(key) ?? []), e]);
  }
  return out;
}

/** A validation error as one sentence: `field: message`. */
export function errorText(e: IValidationError): string {
  return e.field && !e.message.includes(e.field) ? `${e.field}: ${e.message}` : e.message;
}

/** The step to resume a failed run from: its first failed step (file order of the run's steps). */
export function resumeFrom(run: IPipelineRun | null): string | null {
  const failed = run?.steps.find(s => s.state === 'failed' || s.state === 'stopped');
  return failed ? failed.name : null;
}

/** A run in the runs dropdown: `#id state · started`. */
export function runLabel(run: IPipelineRun, formatTime: (iso: string | null) => string): string {
  return `${run.state} · ${formatTime(run.started_at ?? run.created_at)}`;
}

/**
 * The parameters typed in the Run dialog, as values: numbers and true/false for typed defaults, JSON
 * for objects and lists, else text. Throws naming the parameter when a typed value does not parse.
 */
export function parseParameter(name: string, input: string, type: string | null, example: unknown): unknown {
  const t = (type || typeof example).toLowerCase();
  const trimmed = input.trim();
  if (t === 'integer' || t === 'int' || t === 'float' || t === 'number') {
    const n = Number(trimmed);
    if (trimmed === '' || !Number.isFinite(n) || ((t === 'integer' || t === 'int') && !Number.isInteger(n))) {
      throw new Error(
        `${name}: ${JSON.stringify(input)} is not ${t === 'float' || t === 'number' ? 'a number' : 'an integer'}`
      );
    }
    return n;
  }
  if (t === 'bool' || t === 'boolean') {
    if (/^(true|yes|1)$/i.test(trimmed)) {
      return true;
    }
    if (/^(false|no|0)$/i.test(trimmed)) {
      return false;
    }
    throw new Error(`${name}: ${JSON.stringify(input)} is not true or false`);
  }
  if (t === 'object' || t === 'list' || t === 'dict') {
    try {
      return JSON.parse(trimmed);
    } catch {
      throw new Error(`${name}: ${JSON.stringify(input)} is not JSON`);
    }
  }
  return input;
}

/** A parameter's default as the text of its field. */
export function parameterText(value: unknown): string {
  if (value === null || value === undefined) {
    return '';
  }
  return typeof value === 'object' ? JSON.stringify(value) : String(value);
}
