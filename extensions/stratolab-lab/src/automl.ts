/**
 * AutoML searches in the lab: the client of the scheduler's `api/automl` routes (through this
 * server's `stratolab/scheduler/` proxy, with `schedulerClient` of api/client.ts) and the AutoML section of
 * the panel: the searches, and the selected one's leaderboard, charts, trial notebooks and
 * "Deploy best".
 *
 * The shapes mirror docs/scheduler-api.md, "AutoML searches".
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { Contents } from '@jupyterlab/services';

import { formatNumber, historyChart, IAxis, IHistoryPoint, ILine, importanceBars, parallelCoordinates } from './charts';
import { functionsClient, RawBody, schedulerClient } from './api/client';
import { functionNameInput, IFunction } from './functions';
import {
  actionButtons,
  alertNode,
  button,
  el,
  facts,
  fieldRow,
  FormBody,
  guarded,
  JoinedLoads,
  NodeCache,
  Poller,
  readOnlyField,
  setProgress
} from './ui';
import {
  ACTIVE_STATES,
  ensureDirectory,
  formatDuration,
  formatTime,
  INotebookParameter
} from './jobs';
import { PanelSection } from './panel';

// --- the API -----------------------------------------------------------------------------------------

/** One parameter's range or choices; `when` makes it apply only under a categorical choice. */
export interface ISpaceItem {
  type: 'float' | 'int' | 'categorical';
  low?: number;
  high?: number;
  log?: boolean;
  step?: number;
  choices?: unknown[];
  when?: Record<string, unknown[]>;
}

export type ISearchSpace = Record<string, ISpaceItem>;

export type Direction = 'maximize' | 'minimize';

/** What `POST api/automl` takes; optional numbers are left out to get the service's defaults. */
export interface IAutoMLRequest {
  notebook: string;
  content?: unknown;
  name?: string;
  space?: ISearchSpace;
  metric: string;
  direction: Direction;
  trials: number;
  parallel: number;
  timeout?: number;
  max_failed?: number;
  trial_timeout?: number;
  algorithm: 'tpe' | 'random' | 'cmaes' | 'grid';
  pruner: 'none' | 'median' | 'successive_halving' | 'hyperband';
  seed?: number;
  /** the environment trials run in (a profile slug); the default profile when absent */
  profile?: string;
}

export interface ITrial {
  number: number;
  /** complete, pruned, fail, running, waiting, or lost (its scheduler died; run again). */
  state: string;
  params: Record<string, unknown>;
  value: number | null;
  duration: number | null;
  error: string | null;
  intermediate: Record<string, number>;
  model: boolean;
  started_at?: string | null;
  finished_at?: string | null;
}

export interface IAutoMLJob {
  id: number;
  name: string;
  owner: string;
  notebook: string;
  /** queued, running, succeeded, failed or stopped */
  state: string;
  error: string | null;
  config: {
    space: ISearchSpace;
    metric: string;
    direction: Direction;
    trials: number;
    parallel: number;
    algorithm: string;
    pruner: string;
    [key: string]: unknown;
  };
  counts: Record<string, number>;
  best: ITrial | null;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
}

export interface IInsights {
  history: IHistoryPoint[];
  importances: Record<string, number>;
}

export interface IProposal {
  parameters: INotebookParameter[];
  space: ISearchSpace;
}

export function listAutoMLJobs(): Promise<IAutoMLJob[]> {
  return schedulerClient.get<{ jobs: IAutoMLJob[] }>('api/automl').then(d => d.jobs);
}

export function proposeSpace(notebook: string, content?: unknown): Promise<IProposal> {
  return schedulerClient.post<IProposal>('api/automl/propose', content === undefined ? { notebook } : { notebook, content });
}

export function startAutoMLJob(request: IAutoMLRequest): Promise<IAutoMLJob> {
  return schedulerClient.post<IAutoMLJob>('api/automl', request);
}

export function listTrials(jobId: number): Promise<ITrial[]> {
  return schedulerClient.get<{ trials: ITrial[] }>(`api/automl/${jobId}/trials`).then(d => d.trials);
}

export function fetchInsights(jobId: number): Promise<IInsights> {
  return schedulerClient.get<IInsights>(`api/automl/${jobId}/insights`);
}

/** The best trial's function bundle (.tar.gz), as bytes. */
export async function fetchBestBundle(jobId: number): Promise<ArrayBuffer> {
  return schedulerClient.arrayBuffer(`api/automl/${jobId}/best/bundle`);
}

/**
 * Deploy a bundle as a new version of the function `name`, as `deploy_bundle` of
 * stratolab/functions/client.py does: the .tar.gz as the body of `POST api/functions/NAME`.
 */
export async function deployBundle(name: string, bundle: ArrayBuffer): Promise<IFunction> {
  return functionsClient.post<IFunction>(`api/functions/${encodeURIComponent(name)}`, new RawBody(bundle, 'application/gzip'));
}

// --- pure parts --------------------------------------------------------------------------------------

/** Trial states that change no more (a lost trial is run again as a new one). */
const ENDED_TRIAL_STATES = ['complete', 'pruned', 'fail', 'lost'];

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
    const params = Object.entries(t.params).map(([k, p]) => `${k}=${formatValue(p)}`).join(', ');
    return {
      values: { ...t.params, [valueAxis]: v },
      score: job.config.direction === 'maximize' ? raw : 1 - raw,
      label: `Trial #${t.number}: ${metric} ${formatValue(v)}${params ? ` (${params})` : ''}`,
      best: t.number === bestNumber
    };
  });
  return { axes, lines };
}

// --- the section -------------------------------------------------------------------------------------

/** What the AutoML section needs from the lab. */
export interface IAutoMLSectionOptions {
  contents: Contents.IManager;
  openPath: (path: string) => Promise<unknown>;
  /** Called after Deploy best made a function (the Functions section reloads). */
  onDeployed?: (fn: IFunction) => void;
}

/**
 * The user's AutoML searches; the selected one's leaderboard, charts and actions. Reloads every 2 s
 * while a search is queued or running and the panel is visible.
 */
export class AutoMLSection extends PanelSection {
  constructor(private readonly options: IAutoMLSectionOptions) {
    super({ title: 'AutoML', testId: 'stratolab-automl', className: 'jp-Stratolab-automl' });
    this.errorNode = el('div', 'jp-Stratolab-jobsError');
    this.jobsNode = el('div', 'jp-Stratolab-automlJobs', undefined, 'stratolab-automl-jobs');
    this.detailNode = el('div', 'jp-Stratolab-automlDetail', undefined, 'stratolab-automl-detail');
    this.body.append(this.errorNode, this.jobsNode, this.detailNode);
    this.jobsNode.append(el('p', 'jp-Stratolab-loading', 'Loading…'));
    this._poller.start();
  }

  /** The searches last shown, newest first. */
  get jobs(): ReadonlyArray<IAutoMLJob> {
    return this._jobs;
  }

  /** The search whose leaderboard is shown; null for none. */
  get selected(): number | null {
    return this._selected;
  }

  set selected(id: number | null) {
    this._selected = id;
    void this.refresh(true);
  }

  /**
   * Reload the searches and the selected one's trials and insights; a call while a load is under
   * way joins it, unless `fresh` (after a change).
   */
  refresh(fresh = false): Promise<void> {
    return this._loads.run(this._selected, fresh);
  }

  dispose(): void {
    this._poller.stop();
    super.dispose();
  }

  private async load(selected: number | null): Promise<void> {
    const seq = ++this._seq;
    try {
      const jobs = await listAutoMLJobs();
      const job = jobs.find(j => j.id === selected) ?? null;
      let detail = this._detail;
      if (job) {
        // An ended search changes no more: its trials and insights are fetched once.
        const version = JSON.stringify([job.state, job.counts, job.best, job.finished_at]);
        if (!detail || detail.jobId !== job.id || detail.version !== version || ACTIVE_STATES.includes(job.state)) {
          const [trials, insights] = await Promise.all([listTrials(job.id), fetchInsights(job.id)]);
          detail = { jobId: job.id, version, trials, insights };
        }
      } else {
        detail = null;
      }
      if (seq !== this._seq) {
        return; // a later load shows newer data
      }
      this._jobs = jobs;
      if (selected !== null && !job) {
        this._selected = null; // deleted
      }
      this._detail = detail;
      this.errorNode.replaceChildren();
      this.render();
    } catch (error) {
      if (seq !== this._seq) {
        return;
      }
      const message = (error as Error).message || String(error);
      this.errorNode.replaceChildren(alertNode(message, 'stratolab-automl-error'));
    }
  }


  // --- rendering -------------------------------------------------------------------------------------

  private render(): void {
    if (this._jobs.length === 0) {
      this.jobsNode.replaceChildren(
        el(
          'p',
          'jp-Stratolab-note',
          'No AutoML searches yet. Right-click a notebook with a “parameters” cell and choose “Tune…”.',
          'stratolab-automl-empty'
        )
      );
    } else {
      this.jobsNode.replaceChildren(
        ...this._jobs.map(j =>
          this.jobNodes.reuse(j.id, { j, selected: j.id === this._selected }, () => this.renderJob(j))
        )
      );
    }
    const job = this._jobs.find(j => j.id === this._selected);
    if (!job || !this._detail) {
      this.detailNode.replaceChildren();
      return;
    }
    this.detailNode.replaceChildren(this.renderDetail(job, this._detail.trials, this._detail.insights));
  }

  private renderJob(j: IAutoMLJob): HTMLElement {
    const card = el('div', 'jp-Stratolab-automlJob', undefined, `stratolab-automl-job-${j.id}`);
    card.dataset.automlJobId = String(j.id);
    card.dataset.automlJobName = j.name;
    card.dataset.automlState = j.state;
    card.classList.toggle('jp-mod-selected', j.id === this._selected);

    const title = el('div', 'jp-Stratolab-functionTitle');
    const name = el('button', 'jp-Stratolab-scheduleName', j.name, `stratolab-automl-job-${j.id}-select`);
    name.type = 'button';
    name.title = j.id === this._selected ? 'Hide the leaderboard' : 'Show the leaderboard and charts of this search';
    name.addEventListener('click', () => (this.selected = j.id === this._selected ? null : j.id));
    title.append(name, el('span', `jp-Stratolab-badge jp-Stratolab-state jp-mod-${j.state}`, j.state, `stratolab-automl-job-${j.id}-state`));
    if (ACTIVE_STATES.includes(j.state)) {
      title.append(el('span', 'jp-Stratolab-spinner'));
    }
    card.append(title);

    const { node: factList, add: fact } = facts(`stratolab-automl-job-${j.id}`);
    fact('Notebook', j.notebook, 'notebook');
    fact('Objective', `${j.config.direction} ${j.config.metric}`, 'objective');
    fact('Trials', `${countsText(j.counts ?? {})} (of ${j.config.trials})`, 'counts');
    fact('Best', j.best ? `${formatValue(j.best.value)} (trial #${j.best.number})` : '–', 'best');
    card.append(factList);
    if (j.error) {
      card.append(el('div', 'jp-Stratolab-runError', j.error, `stratolab-automl-job-${j.id}-error`));
    }

    const actions = el('div', 'jp-Stratolab-actions');
    const act = actionButtons(`stratolab-automl-job-${j.id}-action`, run => this.guard(run));
    if (ACTIVE_STATES.includes(j.state)) {
      actions.append(act('Stop', 'Stop the search: running trials are stopped, completed ones kept', () => schedulerClient.post(`api/automl/${j.id}/stop`)));
    } else {
      actions.append(act('Delete', 'Delete the search, its trials and their outputs', () => this.remove(j)));
    }
    card.append(actions);
    return card;
  }

  private renderDetail(job: IAutoMLJob, trials: ITrial[], insights: IInsights): HTMLElement {
    const detail = el('div', 'jp-Stratolab-automlJobDetail');
    detail.dataset.automlJobId = String(job.id);

    const title = this.chartNodes.reuse(`title-${job.id}`, [job.name, job.best], () => {
      const node = el('div', 'jp-Stratolab-subTitle');
      node.append(el('span', '', `Leaderboard of ${job.name}`));
      const deploy = button('Deploy best', () => void this.deployBest(job), 'stratolab-automl-deploy-best',
        job.best ? `Deploy the model of trial #${job.best.number} as a function` : 'No trial has completed yet');
      deploy.classList.add('jp-mod-accept');
      node.append(deploy);
      return node;
    });
    const deploy = title.querySelector<HTMLButtonElement>('[data-testid=stratolab-automl-deploy-best]')!;
    deploy.disabled = !job.best || this.deploying.has(job.id);
    detail.append(title, this.deployOutcome(job.id));

    detail.append(this.tableNodes.reuse(job.id, [job.config, job.best?.number, trials], () => this.renderLeaderboard(job, trials)));

    const chart = (label: string, node: SVGElement, testId: string) => {
      const box = el('figure', 'jp-Stratolab-chartBox', undefined, testId);
      box.append(el('figcaption', 'jp-Stratolab-chartTitle', label), node);
      return box;
    };
    detail.append(
      this.chartNodes.reuse(`history-${job.id}`, insights.history, () =>
        chart('Optimization history', historyChart(insights.history, job.config.metric), 'stratolab-automl-history-box')),
      this.chartNodes.reuse(`importances-${job.id}`, insights.importances, () =>
        chart('Parameter importances', importanceBars(insights.importances), 'stratolab-automl-importances-box'))
    );
    const parallel = parallelData(job, trials);
    detail.append(
      this.chartNodes.reuse(`parallel-${job.id}`, parallel, () =>
        chart('Parallel coordinates', parallelCoordinates(parallel.axes, parallel.lines), 'stratolab-automl-parallel-box'))
    );
    return detail;
  }

  private renderLeaderboard(job: IAutoMLJob, trials: ITrial[]): HTMLElement {
    const wrap = el('div', 'jp-Stratolab-leaderboardWrap');
    if (trials.length === 0) {
      wrap.append(el('p', 'jp-Stratolab-note', 'No trial has started yet.', 'stratolab-automl-no-trials'));
      return wrap;
    }
    const params = Object.keys(job.config.space ?? {});
    for (const t of trials) {
      for (const name of Object.keys(t.params)) {
        if (!params.includes(name)) {
          params.push(name);
        }
      }
    }
    const table = el('table', 'jp-Stratolab-leaderboard', undefined, 'stratolab-automl-leaderboard');
    const head = el('tr', '');
    // Open, the number and the objective first: in the narrow panel the table scrolls sideways.
    const headers = ['', '#', job.config.metric, ...params, 'State', 'Duration'];
    headers.forEach((h, i) => {
      const th = el('th', i >= 3 && i < 3 + params.length ? 'jp-Stratolab-paramCell' : '', h);
      if (i === 2) {
        th.title = `The objective (${job.config.direction}): what the notebook records with stratolab.record`;
      }
      head.append(th);
    });
    const thead = el('thead', '');
    thead.append(head);
    const tbody = el('tbody', '');
    for (const t of sortTrials(trials, job.config.direction)) {
      tbody.append(...this.renderTrial(job, t, params));
    }
    table.append(thead, tbody);
    wrap.append(table);
    return wrap;
  }

  private renderTrial(job: IAutoMLJob, t: ITrial, params: string[]): HTMLElement[] {
    const row = el('tr', `jp-Stratolab-trial jp-mod-${t.state}`, undefined, `stratolab-automl-trial-${t.number}`);
    row.dataset.trialNumber = String(t.number);
    row.dataset.trialState = t.state;
    const best = job.best?.number === t.number;
    row.classList.toggle('jp-mod-best', best);
    if (t.error) {
      row.title = t.error;
    }
    const cell = (text: string, className = '', testId?: string) => {
      const td = el('td', className, text, testId);
      row.append(td);
      return td;
    };
    const actions = cell('', 'jp-Stratolab-trialActions');
    if (ENDED_TRIAL_STATES.includes(t.state) && t.state !== 'lost') {
      actions.append(
        button('Open', () => void this.guard(() => this.openTrial(job, t)), `stratolab-automl-trial-${t.number}-open`,
          `Open the executed notebook of trial #${t.number} (a copy in stratolab-automl/)`)
      );
    }
    cell(`${t.number}${best ? ' ★' : ''}`, 'jp-Stratolab-trialNumber').title = best ? 'The best trial' : '';
    cell(formatValue(t.value), 'jp-Stratolab-valueCell', `stratolab-automl-trial-${t.number}-value`);
    for (const p of params) {
      cell(p in t.params ? formatValue(t.params[p]) : '', 'jp-Stratolab-paramCell').title = p in t.params ? `${p} = ${formatValue(t.params[p])}` : `${p} did not apply`;
    }
    const state = cell('', '');
    state.append(el('span', `jp-Stratolab-badge jp-Stratolab-state jp-mod-${t.state}`, trialStateLabel(t.state), `stratolab-automl-trial-${t.number}-state`));
    cell(formatDuration(t.duration), 'jp-Stratolab-durationCell').title = t.started_at ? `Started ${formatTime(t.started_at)}` : '';
    const rows = [row];
    if (t.error) {
      const errorRow = el('tr', 'jp-Stratolab-trialErrorRow');
      errorRow.dataset.trialErrorOf = String(t.number);
      const td = el('td', 'jp-Stratolab-runError', t.error, `stratolab-automl-trial-${t.number}-error`);
      td.colSpan = params.length + 5;
      errorRow.append(td);
      rows.push(errorRow);
    }
    return rows;
  }

  /** The node where Deploy best reports, kept across refreshes. */
  private deployOutcome(jobId: number): HTMLElement {
    let node = this.outcomes.get(jobId);
    if (!node) {
      node = el('div', 'jp-Stratolab-outcome', undefined, 'stratolab-automl-deploy-outcome');
      this.outcomes.set(jobId, node);
    }
    return node;
  }

  // --- actions ---------------------------------------------------------------------------------------

  /** Run an action; show its error in a dialog; refresh after. */
  private guard(run: () => Promise<unknown>): Promise<void> {
    return guarded('Stratolab AutoML', run, () => this.refresh(true));
  }

  /** Copy the trial's executed notebook into the home and open it. */
  private async openTrial(job: IAutoMLJob, t: ITrial): Promise<void> {
    const { contents, openPath } = this.options;
    const path = trialNotebookPath(job.name, t.number);
    const nb = await schedulerClient.get<unknown>(`api/automl/${job.id}/trials/${t.number}/output`);
    await ensureDirectory(contents, path.slice(0, path.lastIndexOf('/')));
    await contents.save(path, { type: 'notebook', format: 'json', content: nb });
    await openPath(path);
  }

  private async remove(j: IAutoMLJob): Promise<void> {
    const result = await showDialog({
      title: `Delete ${j.name}?`,
      body: 'Its trials, their executed notebooks and saved models are deleted (functions already deployed stay).',
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Delete' })]
    });
    if (result.button.accept) {
      await schedulerClient.delete(`api/automl/${j.id}`);
      this.outcomes.delete(j.id);
    }
  }

  /** Ask for the function's name, then fetch the best trial's bundle and deploy it. */
  private async deployBest(job: IAutoMLJob): Promise<void> {
    const form = el('div', 'jp-Stratolab-form');
    const input = functionNameInput('stratolab-automl-deploy-name', bestFunctionName(job.name));
    const row = fieldRow('Function name', input);
    const best = job.best;
    form.append(
      el('p', 'jp-Stratolab-note', best
        ? `The model of trial #${best.number} (${job.config.metric} ${formatValue(best.value)}) becomes a new version of this function.`
        : 'No trial has completed yet.'),
      row
    );
    const result = await showDialog({
      title: `Deploy the best trial of ${job.name}`,
      body: new FormBody(form, () => input.value.trim()),
      buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Deploy' })],
      focusNodeSelector: 'input'
    });
    const name = result.value;
    if (!result.button.accept || !name) {
      return;
    }
    const outcome = this.deployOutcome(job.id);
    const fail = (message: string) => outcome.replaceChildren(alertNode(message, 'stratolab-automl-deploy-error'));
    if (!input.checkValidity()) {
      fail(`Invalid function name “${name}”: ${input.title}.`);
      return;
    }
    this.deploying.add(job.id);
    this.setDeployButton(job.id, true);
    const progress = el('div', 'jp-Stratolab-progress', undefined, 'stratolab-automl-deploy-progress');
    setProgress(progress, 'Deploying the best trial’s model…');
    outcome.replaceChildren(progress);
    try {
      const bundle = await fetchBestBundle(job.id);
      const fn = await deployBundle(name, bundle);
      const url = readOnlyField(fn.url, 'stratolab-automl-deploy-url');
      const nodes: HTMLElement[] = [
        el('div', 'jp-Stratolab-success', `Deployed ${fn.name}, version ${fn.version ?? '?'}${best ? `, from trial #${best.number}` : ''}.`, 'stratolab-automl-deploy-success'),
        el('div', 'jp-Stratolab-fieldLabel', 'Endpoint'),
        url
      ];
      if (fn.key) {
        const key = readOnlyField(fn.key, 'stratolab-automl-deploy-key');
        nodes.push(
          el('div', 'jp-Stratolab-fieldLabel', 'Function key'),
          key,
          el('div', 'jp-Stratolab-note jp-Stratolab-keyNote', 'Shown once: store it now. Callers send it as the X-Function-Key header.')
        );
      }
      outcome.replaceChildren(...nodes);
      this.options.onDeployed?.(fn);
    } catch (error) {
      fail((error as Error).message || String(error));
    } finally {
      this.deploying.delete(job.id);
      this.setDeployButton(job.id, false);
    }
  }

  private setDeployButton(jobId: number, busy: boolean): void {
    const job = this._jobs.find(j => j.id === jobId);
    const title = this.chartNodes.get(`title-${jobId}`);
    const b = title?.querySelector<HTMLButtonElement>('[data-testid=stratolab-automl-deploy-best]');
    if (b) {
      b.disabled = busy || !job?.best;
    }
  }

  private readonly errorNode: HTMLElement;
  private readonly jobsNode: HTMLElement;
  private readonly detailNode: HTMLElement;
  private readonly jobNodes = new NodeCache<number>(CACHE_LIMIT);
  private readonly tableNodes = new NodeCache<number>(CACHE_LIMIT);
  private readonly chartNodes = new NodeCache<string, HTMLElement | SVGElement>(CACHE_LIMIT);
  private readonly outcomes = new Map<number, HTMLElement>();
  private readonly deploying = new Set<number>();
  private _jobs: IAutoMLJob[] = [];
  private _selected: number | null = null;
  private _detail: { jobId: number; version: string; trials: ITrial[]; insights: IInsights } | null = null;
  private _poller = new Poller(
    this,
    () => this.refresh(),
    () => this._jobs.some(j => ACTIVE_STATES.includes(j.state)),
    ACTIVE_POLL_MS,
    IDLE_POLL_MS
  );
  private _loads = new JoinedLoads<number | null>(selected => this.load(selected));
  private _seq = 0;
}

/** Milliseconds between refreshes while a search is queued or running, and otherwise. */
const ACTIVE_POLL_MS = 2000;
const IDLE_POLL_MS = 10000;
/** Nodes kept for reuse before the cache starts over. */
const CACHE_LIMIT = 200;
