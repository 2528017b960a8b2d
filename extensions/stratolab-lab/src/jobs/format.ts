/**
 * How runs and schedules read in the panel: states, times, durations, environments, and where a
 * run's notebook is copied. Pure: no requests, no DOM.
 */
import { IProfile, IRun } from './api';

/** States after which a run changes no more. */
export const FINISHED_STATES = ['succeeded', 'failed', 'timed_out', 'stopped'];

export const ACTIVE_STATES = ['queued', 'running'];

/**
 * The options of an environment select: the default first, GPU profiles with their GPU count
 * (`gpuNote` after it: "per trial"), and `wanted` kept when the scheduler no longer lists it.
 */
export function profileOptions(profiles: ReadonlyArray<IProfile>, wanted = '', gpuNote = ''): [string, string][] {
  const options: [string, string][] = [['', 'Default environment']];
  for (const p of profiles) {
    const gpus = `${p.gpus} GPU${p.gpus > 1 ? 's' : ''}${gpuNote ? ` ${gpuNote}` : ''}`;
    options.push([p.slug, p.gpus ? `${p.display_name} (${gpus})` : p.display_name]);
  }
  if (wanted && !profiles.some(p => p.slug === wanted)) {
    options.push([wanted, wanted]);
  }
  return options;
}

/** A date and time in the browser's locale (in `timeZone` when given and known). */
export function formatTime(iso: string | null | undefined, timeZone?: string): string {
  if (!iso) {
    return '–';
  }
  const date = new Date(iso);
  if (isNaN(date.getTime())) {
    return iso;
  }
  const options: Intl.DateTimeFormatOptions = { dateStyle: 'medium', timeStyle: 'medium' };
  try {
    return date.toLocaleString(undefined, timeZone ? { ...options, timeZone } : options);
  } catch {
    return date.toLocaleString(undefined, options);
  }
}

export function formatDuration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined) {
    return '–';
  }
  if (seconds < 60) {
    return `${seconds < 10 ? seconds.toFixed(1) : Math.round(seconds)} s`;
  }
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) {
    return `${minutes} min ${Math.round(seconds % 60)} s`;
  }
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

/**
 * Where "Open" puts a run's executed notebook in the home: `stratolab-runs/<schedule>/run-<id>.ipynb`
 * (the schedule's name made safe as one path segment).
 */
export function runNotebookPath(scheduleName: string, runId: number): string {
  const folder = scheduleName.replace(/[/\\]/g, '-').replace(/^\.+/, '').trim() || 'schedule';
  return `stratolab-runs/${folder}/run-${runId}.ipynb`;
}

export function runOutputs(run: IRun): string[] {
  if (run.outputs) {
    return run.outputs;
  }
  return FINISHED_STATES.includes(run.state) ? ['ipynb'] : [];
}

/**
 * What a run is a run of: its schedule's name; for a pipeline's step "step · pipeline pipeline"; for
 * another ad-hoc run, its name and "(run once)".
 */
export function runSource(run: IRun): string {
  if (run.schedule_id !== null && run.schedule_id !== undefined) {
    return run.schedule_name;
  }
  const labels = run.labels || {};
  if (labels.pipeline_run) {
    return `${labels.step || run.schedule_name} · pipeline ${labels.pipeline || labels.pipeline_run}`;
  }
  return `${run.schedule_name} (run once)`;
}
