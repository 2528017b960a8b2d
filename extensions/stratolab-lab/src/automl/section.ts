/**
 * The AutoML section of the panel: the searches, and the selected one's leaderboard, charts, trial
 * notebooks and "Deploy best".
 */
import { Contents } from '@jupyterlab/services';

import { schedulerClient } from '../api/client';
import { ModelSection } from '../environment/panel';
import { IFunction } from '../functions/api';
import { ACTIVE_STATES, formatDuration, formatTime } from '../jobs/format';
import { ensureDirectory } from '../jobs/notebooks';
import { button, el, facts, guarded, NodeCache } from '../ui';
import { deployBestTrial, searchActions } from './actions';
import { IAutoMLJob, IInsights, ITrial } from './api';
import { AutoMLModel } from './model';
import { historyChart, importanceBars, parallelCoordinates } from './charts';
import {
  countsText,
  ENDED_TRIAL_STATES,
  formatValue,
  parallelData,
  sortTrials,
  trialNotebookPath,
  trialStateLabel
} from './trials';

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
export class AutoMLSection extends ModelSection<number | null, AutoMLModel> {
  constructor(private readonly options: IAutoMLSectionOptions) {
    super(
      {
        title: 'AutoML',
        testId: 'stratolab-automl',
        className: 'jp-Stratolab-automl',
        errorTestId: 'stratolab-automl-error'
      },
      new AutoMLModel(null)
    );
    this.body.append(this.errorNode, this.jobsNode, this.detailNode);
    this.model.startPolling(this);
    this.jobsNode.append(el('p', 'jp-Stratolab-loading', 'Loading…'));
  }

  protected render(): void {
    this.showCards(this.jobsNode, this.jobNodes, this.model.jobs, j => this.renderJob(j), NO_SEARCHES, {
      noun: 'searches',
      testId: 'stratolab-automl-more'
    });
    const job = this.model.jobs.find(j => j.id === this.model.selected);
    const detail = this.model.detail;
    if (!job || !detail) {
      this.detailNode.replaceChildren();
      return;
    }
    this.detailNode.replaceChildren(this.renderDetail(job, detail.trials, detail.insights));
  }

  private renderJob(j: IAutoMLJob): HTMLElement {
    const card = el('div', 'jp-Stratolab-automlJob', undefined, `stratolab-automl-job-${j.id}`);
    card.dataset.automlJobId = String(j.id);
    card.dataset.automlJobName = j.name;
    card.dataset.automlState = j.state;
    card.classList.toggle('jp-mod-selected', j.id === this.model.selected);

    const state = el(
      'span',
      `jp-Stratolab-badge jp-Stratolab-state jp-mod-${j.state}`,
      j.state,
      `stratolab-automl-job-${j.id}-state`
    );
    const title = this.selectableTitle(
      j.id,
      j.name,
      `stratolab-automl-job-${j.id}-select`,
      { select: 'Show the leaderboard and charts of this search', unselect: 'Hide the leaderboard' },
      state
    );
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
    actions.append(
      ...searchActions(
        j,
        `stratolab-automl-job-${j.id}-action`,
        run => this.guard(run),
        () => this.outcomes.delete(j.id)
      )
    );
    card.append(actions);
    return card;
  }

  private renderDetail(job: IAutoMLJob, trials: ITrial[], insights: IInsights): HTMLElement {
    const detail = el('div', 'jp-Stratolab-automlJobDetail');
    detail.dataset.automlJobId = String(job.id);

    const title = this.chartNodes.reuse(`title-${job.id}`, [job.name, job.best], () => {
      const node = el('div', 'jp-Stratolab-subTitle');
      node.append(el('span', '', `Leaderboard of ${job.name}`));
      const deploy = button(
        'Deploy best',
        () => void this.deployBest(job),
        'stratolab-automl-deploy-best',
        job.best ? `Deploy the model of trial #${job.best.number} as a function` : 'No trial has completed yet'
      );
      deploy.classList.add('jp-mod-accept');
      node.append(deploy);
      return node;
    });
    const deploy = title.querySelector<HTMLButtonElement>('[data-testid=stratolab-automl-deploy-best]')!;
    deploy.disabled = !job.best || this.deploying.has(job.id);
    detail.append(title, this.deployOutcome(job.id));

    detail.append(
      this.tableNodes.reuse(job.id, [job.config, job.best?.number, trials], () => this.renderLeaderboard(job, trials))
    );

    const chart = (label: string, node: SVGElement, testId: string) => {
      const box = el('figure', 'jp-Stratolab-chartBox', undefined, testId);
      box.append(el('figcaption', 'jp-Stratolab-chartTitle', label), node);
      return box;
    };
    detail.append(
      this.chartNodes.reuse(`history-${job.id}`, insights.history, () =>
        chart('Optimization history', historyChart(insights.history, job.config.metric), 'stratolab-automl-history-box')
      ),
      this.chartNodes.reuse(`importances-${job.id}`, insights.importances, () =>
        chart('Parameter importances', importanceBars(insights.importances), 'stratolab-automl-importances-box')
      )
    );
    const parallel = parallelData(job, trials);
    detail.append(
      this.chartNodes.reuse(`parallel-${job.id}`, parallel, () =>
        chart(
          'Parallel coordinates',
          parallelCoordinates(parallel.axes, parallel.lines),
          'stratolab-automl-parallel-box'
        )
      )
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
        button(
          'Open',
          () => void this.guard(() => this.openTrial(job, t)),
          `stratolab-automl-trial-${t.number}-open`,
          `Open the executed notebook of trial #${t.number} (a copy in stratolab-automl/)`
        )
      );
    }
    cell(`${t.number}${best ? ' ★' : ''}`, 'jp-Stratolab-trialNumber').title = best ? 'The best trial' : '';
    cell(formatValue(t.value), 'jp-Stratolab-valueCell', `stratolab-automl-trial-${t.number}-value`);
    for (const p of params) {
      cell(p in t.params ? formatValue(t.params[p]) : '', 'jp-Stratolab-paramCell').title =
        p in t.params ? `${p} = ${formatValue(t.params[p])}` : `${p} did not apply`;
    }
    const state = cell('', '');
    state.append(
      el(
        'span',
        `jp-Stratolab-badge jp-Stratolab-state jp-mod-${t.state}`,
        trialStateLabel(t.state),
        `stratolab-automl-trial-${t.number}-state`
      )
    );
    cell(formatDuration(t.duration), 'jp-Stratolab-durationCell').title = t.started_at
      ? `Started ${formatTime(t.started_at)}`
      : '';
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

  /** Deploy best, reporting in the search's outcome node; its button is disabled while it deploys. */
  private async deployBest(job: IAutoMLJob): Promise<void> {
    await deployBestTrial(job, {
      outcome: this.deployOutcome(job.id),
      onDeployed: this.options.onDeployed,
      onBusy: busy => {
        if (busy) {
          this.deploying.add(job.id);
        } else {
          this.deploying.delete(job.id);
        }
        this.setDeployButton(job.id, busy);
      }
    });
  }

  private setDeployButton(jobId: number, busy: boolean): void {
    const job = this.model.jobs.find(j => j.id === jobId);
    const title = this.chartNodes.get(`title-${jobId}`);
    const b = title?.querySelector<HTMLButtonElement>('[data-testid=stratolab-automl-deploy-best]');
    if (b) {
      b.disabled = busy || !job?.best;
    }
  }

  private readonly jobsNode = el('div', 'jp-Stratolab-automlJobs', undefined, 'stratolab-automl-jobs');
  private readonly detailNode = el('div', 'jp-Stratolab-automlDetail', undefined, 'stratolab-automl-detail');
  private readonly jobNodes = new NodeCache<number>(CACHE_LIMIT);
  private readonly tableNodes = new NodeCache<number>(CACHE_LIMIT);
  private readonly chartNodes = new NodeCache<string, HTMLElement | SVGElement>(CACHE_LIMIT);
  private readonly outcomes = new Map<number, HTMLElement>();
  private readonly deploying = new Set<number>();
}

/** Nodes kept for reuse before the cache starts over. */
const CACHE_LIMIT = 200;

/** What the list says before the first search. */
const NO_SEARCHES: [string, string] = [
  'No AutoML searches yet. Right-click a notebook with a “parameters” cell and choose “Tune…”.',
  'stratolab-automl-empty'
];
