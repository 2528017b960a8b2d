/**
 * Scheduled notebook jobs in the lab: the client of the scheduler service (reached through this
 * server's `stratolab/scheduler/` proxy) and the Jobs section of the panel, with its schedules and
 * their runs.
 *
 * The shapes mirror docs/scheduler-api.md.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { Contents } from '@jupyterlab/services';
import { Widget } from '@lumino/widgets';

import { schedulerClient } from './api/client';
import { actionButtons, alertNode, button, el, facts, guarded, JoinedLoads, link, NodeCache, Poller } from './ui';
import { PanelSection } from './panel';

/** Who hears about runs; the service leaves out what is not set (`{}`: nobody). */
export interface INotify {
  webhook?: string | null;
  email?: string[];
  on?: string[];
}

export interface IRun {
  id: number;
  schedule_id: number;
  schedule_name: string;
  owner: string;
  trigger: string;
  state: string;
  attempt: number;
  scheduled_for: string | null;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  duration: number | null;
  lateness: number | null;
  error: string | null;
  parameters: Record<string, unknown>;
  outputs?: string[];
}

export interface ISchedule {
  id: number;
  name: string;
  owner: string;
  notebook: string;
  snapshot: { digest: string; taken_at: string } | null;
  cron: string | null;
  timezone: string;
  description: string | null;
  parameters: Record<string, unknown>;
  profile: string | null;
  timeout: number | null;
  retries: number;
  retry_backoff: number;
  output_formats: string[];
  notify: INotify | null;
  missed: string;
  active: boolean;
  next_run_at: string | null;
  last_run: IRun | null;
  created_at: string;
  updated_at: string;
}

/** What a schedule is created or changed with (`POST`/`PATCH api/schedules`). */
export interface IScheduleRequest {
  notebook?: string;
  content?: unknown;
  name?: string;
  cron?: string | null;
  timezone?: string;
  parameters?: Record<string, unknown>;
  profile?: string | null;
  timeout?: number | null;
  retries?: number;
  retry_backoff?: number;
  output_formats?: string[];
  notify?: INotify | null;
  missed?: string;
  active?: boolean;
}

export interface ICronPreview {
  description: string;
  next: string[];
  timezone: string;
}

export interface INotebookParameter {
  name: string;
  type: string;
  default: unknown;
  help: string;
}

export interface IProfile {
  slug: string;
  display_name: string;
  gpus: number;
}

/** States after which a run changes no more. */
export const FINISHED_STATES = ['succeeded', 'failed', 'timed_out', 'stopped'];
export const ACTIVE_STATES = ['queued', 'running'];

/** The environments runs can use (the hub's profiles). */
export async function listProfiles(): Promise<IProfile[]> {
  return (await schedulerClient.get<{ profiles: IProfile[] }>('api/profiles')).profiles;
}

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

export function listSchedules(): Promise<ISchedule[]> {
  return schedulerClient.get<{ schedules: ISchedule[] }>('api/schedules').then(d => d.schedules);
}

export function listRuns(scheduleId: number | null, limit = 30): Promise<IRun[]> {
  const query = scheduleId === null ? `limit=${limit}` : `schedule=${scheduleId}&limit=${limit}`;
  return schedulerClient.get<{ runs: IRun[] }>(`api/runs?${query}`).then(d => d.runs);
}

/** A new idempotency key: one per click, so a retried request does not start a second run. */
export function idempotencyKey(): string {
  return typeof crypto.randomUUID === 'function'
    ? crypto.randomUUID()
    : `${Date.now().toString(16)}-${Math.random().toString(16).slice(2)}`;
}

/** Start a run of a schedule now ("Run now"). */
export function runNow(scheduleId: number): Promise<IRun> {
  return schedulerClient.post<IRun>(`api/schedules/${scheduleId}/runs`, {
    idempotency_key: idempotencyKey()
  });
}

// --- how runs and schedules are shown --------------------------------------------------------------

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

/** Create `path` and the folders above it that are missing, with the contents manager. */
export async function ensureDirectory(contents: Contents.IManager, path: string): Promise<void> {
  let current = '';
  for (const part of path.split('/').filter(Boolean)) {
    current = current ? `${current}/${part}` : part;
    try {
      await contents.get(current, { content: false });
    } catch {
      await contents.save(current, { type: 'directory' });
    }
  }
}

function runOutputs(run: IRun): string[] {
  if (run.outputs) {
    return run.outputs;
  }
  return FINISHED_STATES.includes(run.state) ? ['ipynb'] : [];
}

/**
 * What the Jobs section needs from the lab: the contents manager and how to open a file (for a
 * run's notebook), and how to edit a schedule (the schedule dialog, given by the plugin).
 */
export interface IJobsSectionOptions {
  contents: Contents.IManager;
  openPath: (path: string) => Promise<unknown>;
  editSchedule: (schedule: ISchedule) => Promise<void>;
}

/**
 * The user's schedules and their runs, refreshed every few seconds while it is visible.
 */
export class JobsSection extends PanelSection {
  constructor(private readonly options: IJobsSectionOptions) {
    super({ title: 'Jobs', testId: 'stratolab-jobs', className: 'jp-Stratolab-jobs' });
    this.schedulesNode = el('div', 'jp-Stratolab-schedules', undefined, 'stratolab-schedules');
    this.runsTitle = el('div', 'jp-Stratolab-subTitle', 'Runs', 'stratolab-runs-title');
    this.runsNode = el('div', 'jp-Stratolab-runs', undefined, 'stratolab-runs');
    this.errorNode = el('div', 'jp-Stratolab-jobsError');
    this.body.append(
      this.errorNode,
      el('div', 'jp-Stratolab-subTitle', 'Schedules'),
      this.schedulesNode,
      this.runsTitle,
      this.runsNode
    );
    this.schedulesNode.append(el('p', 'jp-Stratolab-loading', 'Loading…'));
    this._poller.start();
  }

  /** The schedules last shown. */
  get schedules(): ReadonlyArray<ISchedule> {
    return this._schedules;
  }

  /** The runs last shown (of the selected schedule, or of all). */
  get runs(): ReadonlyArray<IRun> {
    return this._runs;
  }

  /** The schedule whose runs are listed; null for the runs of all schedules. */
  get selected(): number | null {
    return this._selected;
  }

  set selected(id: number | null) {
    if (this._selected !== id) {
      this._selected = id;
      void this.refresh(true);
    }
  }

  /**
   * Reload schedules and runs. A call while a load for the same selection is under way joins it,
   * unless `fresh` (after a change, whose effect a load started earlier would not show).
   */
  refresh(fresh = false): Promise<void> {
    return this._loads.run(this._selected, fresh);
  }

  private async load(selected: number | null): Promise<void> {
    const seq = ++this._seq;
    try {
      const [schedules, runs] = await Promise.all([listSchedules(), listRuns(selected)]);
      if (seq !== this._seq) {
        return; // a later load (another selection, or after a change) shows newer data
      }
      this._schedules = schedules;
      if (selected !== null && !schedules.some(s => s.id === selected)) {
        this._selected = null; // deleted
        this._runs = await listRuns(null);
        if (seq !== this._seq) {
          return;
        }
      } else {
        this._runs = runs;
      }
      this.errorNode.replaceChildren();
      this.render();
    } catch (error) {
      if (seq !== this._seq) {
        return;
      }
      const message = (error as Error).message || String(error);
      this.errorNode.replaceChildren(alertNode(message, 'stratolab-jobs-error'));
    }
  }

  dispose(): void {
    this._poller.stop();
    super.dispose();
  }


  private render(): void {
    if (this._schedules.length === 0) {
      this.schedulesNode.replaceChildren(
        el(
          'p',
          'jp-Stratolab-note',
          'No scheduled jobs yet. Right-click a notebook in the file browser and choose “Schedule…”.',
          'stratolab-jobs-empty'
        )
      );
    } else {
      this.schedulesNode.replaceChildren(
        ...this._schedules.map(s =>
          this.scheduleNodes.reuse(s.id, { s, selected: s.id === this._selected }, () => this.renderSchedule(s))
        )
      );
    }

    const selected = this._schedules.find(s => s.id === this._selected);
    if (selected) {
      const all = button('Show all', () => (this.selected = null), 'stratolab-runs-show-all', 'Show the runs of every schedule');
      this.runsTitle.replaceChildren(document.createTextNode(`Runs of ${selected.name} `), all);
    } else {
      this.runsTitle.textContent = 'Runs';
    }
    if (this._runs.length === 0) {
      this.runsNode.replaceChildren(el('p', 'jp-Stratolab-note', 'No runs yet.', 'stratolab-runs-empty'));
    } else {
      this.runsNode.replaceChildren(
        ...this._runs.map(r => this.runNodes.reuse(r.id, r, () => this.renderRun(r)))
      );
    }
  }

  private renderSchedule(s: ISchedule): HTMLElement {
    const card = el('div', 'jp-Stratolab-schedule', undefined, `stratolab-schedule-${s.id}`);
    card.dataset.scheduleId = String(s.id);
    card.dataset.scheduleName = s.name;
    card.dataset.scheduleActive = String(s.active);
    card.classList.toggle('jp-mod-selected', s.id === this._selected);
    card.classList.toggle('jp-mod-paused', !s.active);

    const title = el('div', 'jp-Stratolab-functionTitle');
    const name = el('button', 'jp-Stratolab-scheduleName', s.name, `stratolab-schedule-${s.id}-select`);
    name.type = 'button';
    name.title = s.id === this._selected ? 'Show the runs of every schedule' : 'Show the runs of this schedule only';
    name.addEventListener('click', () => (this.selected = s.id === this._selected ? null : s.id));
    title.append(name, el('span', `jp-Stratolab-badge ${s.active ? 'jp-mod-active' : 'jp-mod-paused'}`, s.active ? 'active' : 'paused', `stratolab-schedule-${s.id}-status`));
    card.append(title);

    const { node: factList, add: fact } = facts(`stratolab-schedule-${s.id}`);
    fact('When', s.cron ? s.description || `${s.cron} (${s.timezone})` : 'on demand', 'when');
    fact('Notebook', s.notebook, 'notebook');
    if (s.cron) {
      fact('Next run', s.active ? formatTime(s.next_run_at) : 'paused', 'next');
    }
    const last = s.last_run;
    fact('Last run', last ? `${last.state} · ${formatTime(last.started_at || last.created_at)}` : 'never', 'last');
    card.append(factList);

    const actions = el('div', 'jp-Stratolab-actions');
    const act = actionButtons(`stratolab-schedule-${s.id}-action`, run => this.guard(run));
    actions.append(
      act('Run now', 'Run the notebook now, with this schedule’s settings', async () => {
        await runNow(s.id);
        this._selected = s.id;
      }),
      s.active
        ? act('Pause', 'Stop starting runs on schedule (Run now still works)', () => schedulerClient.post(`api/schedules/${s.id}/pause`))
        : act('Resume', 'Start runs on schedule again', () => schedulerClient.post(`api/schedules/${s.id}/resume`)),
      act('Edit', 'Change the schedule, its parameters and settings', () => this.options.editSchedule(s)),
      act('Delete', 'Delete the schedule, its runs and their outputs', () => this.removeSchedule(s))
    );
    card.append(actions);
    return card;
  }

  private renderRun(r: IRun): HTMLElement {
    const row = el('div', 'jp-Stratolab-run', undefined, `stratolab-run-${r.id}`);
    row.dataset.runId = String(r.id);
    row.dataset.runState = r.state;
    row.dataset.runTrigger = r.trigger;
    row.dataset.runScheduleId = String(r.schedule_id);

    const title = el('div', 'jp-Stratolab-functionTitle');
    title.append(
      el('span', 'jp-Stratolab-runName', `#${r.id} ${r.schedule_name}`),
      el('span', `jp-Stratolab-badge jp-Stratolab-state jp-mod-${r.state}`, r.state, `stratolab-run-${r.id}-state`)
    );
    if (ACTIVE_STATES.includes(r.state)) {
      title.append(el('span', 'jp-Stratolab-spinner'));
    }
    row.append(title);

    const { node: factList, add: fact } = facts(`stratolab-run-${r.id}`);
    fact('Trigger', r.attempt > 1 ? `${r.trigger} (attempt ${r.attempt})` : r.trigger, 'trigger');
    if (r.scheduled_for) {
      fact('Scheduled', formatTime(r.scheduled_for), 'scheduled');
    }
    fact('Started', formatTime(r.started_at), 'started');
    fact('Duration', formatDuration(r.duration), 'duration');
    row.append(factList);
    if (r.error) {
      row.append(el('div', 'jp-Stratolab-runError', r.error, `stratolab-run-${r.id}-error`));
    }

    const actions = el('div', 'jp-Stratolab-actions');
    const act = actionButtons(`stratolab-run-${r.id}-action`, run => this.guard(run));
    const outputs = runOutputs(r);
    if (outputs.includes('ipynb')) {
      actions.append(act('Open', 'Open the executed notebook (a copy in stratolab-runs/)', () => this.openRun(r)));
    }
    if (outputs.includes('html')) {
      const href = `${schedulerClient.url(`api/runs/${r.id}/output`)}?format=html&download=1`;
      actions.append(link('HTML', href, `stratolab-run-${r.id}-action-html`, 'Download the executed notebook as HTML', true));
    }
    actions.append(
      act('Log', 'What papermill logged during the run', () => this.showLog(r)),
      act('Files', 'Files the notebook wrote', () => this.showFiles(r))
    );
    if (ACTIVE_STATES.includes(r.state)) {
      actions.append(act('Stop', 'Stop this run', () => schedulerClient.post(`api/runs/${r.id}/stop`)));
    }
    row.append(actions);
    return row;
  }

  /** Run an action; show its error in a dialog; refresh after. */
  private guard(run: () => Promise<unknown>): Promise<void> {
    return guarded('Stratolab jobs', run, () => this.refresh(true));
  }

  /** Copy the run's executed notebook into the home (once) and open it. */
  private async openRun(r: IRun): Promise<void> {
    const { contents, openPath } = this.options;
    const path = runNotebookPath(r.schedule_name, r.id);
    let exists = false;
    try {
      await contents.get(path, { content: false });
      exists = true;
    } catch {
      // not copied yet
    }
    // A finished run's notebook changes no more: a copy made earlier (maybe with the user's edits) stays.
    if (!exists || !FINISHED_STATES.includes(r.state)) {
      const nb = await schedulerClient.get<unknown>(`api/runs/${r.id}/output?format=ipynb`);
      await ensureDirectory(contents, path.slice(0, path.lastIndexOf('/')));
      await contents.save(path, { type: 'notebook', format: 'json', content: nb });
    }
    await openPath(path);
  }

  private async showLog(r: IRun): Promise<void> {
    const text = await schedulerClient.text(`api/runs/${r.id}/log`);
    const pre = el('pre', 'jp-Stratolab-logs', text || '(empty log)', 'stratolab-run-log');
    await showDialog({
      title: `Log of run #${r.id} (${r.schedule_name})`,
      body: new Widget({ node: pre }),
      buttons: [Dialog.okButton({ label: 'Close' })]
    });
  }

  private async showFiles(r: IRun): Promise<void> {
    const data = await schedulerClient.get<{ files: { path: string; size: number }[] }>(`api/runs/${r.id}/files`);
    const list = el('ul', 'jp-Stratolab-fileList', undefined, 'stratolab-run-files');
    for (const file of data.files) {
      const path = file.path.split('/').map(encodeURIComponent).join('/');
      const item = el('li', 'jp-Stratolab-file');
      const a = el('a', 'jp-Stratolab-fileLink', file.path);
      a.href = schedulerClient.url(`api/runs/${r.id}/files/${path}`);
      a.download = file.path.split('/').pop() || file.path;
      a.target = '_blank';
      a.rel = 'noopener';
      item.append(a, el('span', 'jp-Stratolab-note', ` ${file.size} bytes`));
      list.append(item);
    }
    const body = data.files.length ? list : el('p', 'jp-Stratolab-note', 'The run wrote no files.', 'stratolab-run-files');
    await showDialog({
      title: `Files of run #${r.id} (${r.schedule_name})`,
      body: new Widget({ node: body }),
      buttons: [Dialog.okButton({ label: 'Close' })]
    });
  }

  private async removeSchedule(s: ISchedule): Promise<void> {
    const result = await showDialog({
      title: `Delete ${s.name}?`,
      body: 'Its running runs are stopped, and its runs and their outputs deleted.',
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Delete' })]
    });
    if (result.button.accept) {
      await schedulerClient.delete(`api/schedules/${s.id}`);
    }
  }

  private readonly schedulesNode: HTMLElement;
  private readonly runsTitle: HTMLElement;
  private readonly runsNode: HTMLElement;
  private readonly errorNode: HTMLElement;
  private readonly scheduleNodes = new NodeCache<number>(CACHE_LIMIT);
  private readonly runNodes = new NodeCache<number>(CACHE_LIMIT);
  private _schedules: ISchedule[] = [];
  private _runs: IRun[] = [];
  private _selected: number | null = null;
  private _poller = new Poller(
    this,
    () => this.refresh(),
    () => this._runs.some(r => ACTIVE_STATES.includes(r.state)),
    ACTIVE_POLL_MS,
    IDLE_POLL_MS
  );
  private _loads = new JoinedLoads<number | null>(selected => this.load(selected));
  private _seq = 0;
}

/** Milliseconds between refreshes while a run is queued or running, and otherwise. */
const ACTIVE_POLL_MS = 3000;
const IDLE_POLL_MS = 10000;
/** Nodes kept for reuse before the cache starts over (runs come and go). */
const CACHE_LIMIT = 200;
