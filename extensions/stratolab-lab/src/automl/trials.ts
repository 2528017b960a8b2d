/**
 * How an AutoML search's trials read: sorted and labelled, their values, names and paths, and the
 * data of the parallel-coordinates plot. Pure: no requests, no DOM.
 */
import { Direction, IAutoMLJob, ITrial } from './api';
import { formatNumber, IAxis, ILine } from './charts';

/** Trial states that change no more (a lost trial is run again as a new one). */
export const ENDED_TRIAL_STATES = ['complete', 'pruned', 'fail', 'lost'];

/** How a trial's state reads (Optuna's `fail` is "failed"). */
export function trialStateLabel(state: string): string {
  return state === 'fail' ? 'failed' : state;
}

/**
 * The leaderboard's order: completed trials best first (by the search's direction), then running
 * and waiting ones, then pruned, then failed and lost; by number within each.
 */
export function sortTrials(trials: ReadonlyArray<ITrial>, direction: Direction): ITrial[] {
  const group = (t: ITrial) =>
    t.state === 'complete' ? 0 : t.state === 'running' || t.state === 'waiting' ? 1 : t.state === 'pruned' ? 2 : 3;
  const sign = direction === 'maximize' ? -1 : 1;
  return [...trials].sort((a, b) => {
    const g = group(a) - group(b);
    if (g !== 0) {
      return g;
    }
    if (group(a) === 0 && a.value !== b.value) {
      return sign * ((a.value ?? 0) - (b.value ?? 0));
    }
    return a.number - b.number;
  });
}

/** The default name of the function Deploy best creates: the search's name, lower-case, [a-z0-9-]. */
export function bestFunctionName(jobName: string): string {
  return jobName.toLowerCase().replace(/[^a-z0-9-]/g, '-');
}

/** Where "Open" puts a trial's executed notebook: `stratolab-automl/<job name>/trial-<N>.ipynb`. */
export function trialNotebookPath(jobName: string, trial: number): string {
  const folder = jobName.replace(/[/\\]/g, '-').replace(/^\.+/, '').trim() || 'automl';
  return `stratolab-automl/${folder}/trial-${trial}.ipynb`;
}

/** A parameter's or objective's value, short. */
export function formatValue(value: unknown): string {
  if (value === null || value === undefined) {
    return '–';
  }
  if (typeof value === 'number') {
    return formatNumber(value);
  }
  return typeof value === 'string' ? value : JSON.stringify(value);
}

/** "3 complete · 1 pruned · 0 failed · 2 running" */
export function countsText(counts: Record<string, number>): string {
  const parts = [
    `${counts.complete ?? 0} complete`,
    `${counts.pruned ?? 0} pruned`,
    `${(counts.fail ?? 0) + (counts.failed ?? 0)} failed`,
    `${counts.running ?? 0} running`
  ];
  if (counts.lost) {
    parts.push(`${counts.lost} lost`);
  }
  return parts.join(' · ');
}

/** The axes and lines of the parallel-coordinates plot: each parameter, then the objective. */
export function parallelData(job: IAutoMLJob, trials: ReadonlyArray<ITrial>): { axes: IAxis[]; lines: ILine[] } {
  const complete = trials.filter(t => t.state === 'complete' && typeof t.value === 'number');
  const names = Object.keys(job.config.space ?? {});
  for (const t of complete) {
    for (const name of Object.keys(t.params)) {
      if (!names.includes(name)) {
        names.push(name);
      }
    }
  }
  const axes: IAxis[] = names.map(name => {
    const item = job.config.space?.[name];
    if (item?.type === 'categorical') {
      return { name, kind: 'category', choices: item.choices };
    }
    if (item) {
      return { name, kind: item.log ? 'log' : 'number' };
    }
    const numeric = complete.every(t => t.params[name] === undefined || typeof t.params[name] === 'number');
    return { name, kind: numeric ? 'number' : 'category' };
  });
  const metric = job.config.metric;
  const valueAxis = `\u0000value`;
  axes.push({ name: valueAxis, label: `${metric} ${job.config.direction === 'maximize' ? '↑' : '↓'}`, kind: 'number' });
  const values = complete.map(t => t.value as number);
  const lo = Math.min(...values);
  const hi = Math.max(...values);
  const bestNumber = job.best?.number;
  const lines: ILine[] = complete.map(t => {
    const v = t.value as number;
    const raw = hi > lo ? (v - lo) / (hi - lo) : 1;
    const params = Object.entries(t.params)
      .map(([k, p]) => `${k}=${formatValue(p)}`)
      .join(', ');
    return {
      values: { ...t.params, [valueAxis]: v },
      score: job.config.direction === 'maximize' ? raw : 1 - raw,
      label: `Trial #${t.number}: ${metric} ${formatValue(v)}${params ? ` (${params})` : ''}`,
      best: t.number === bestNumber
    };
  });
  return { axes, lines };
}
