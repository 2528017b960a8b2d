/**
 * The Jobs section of the panel: the schedules, and the runs of the selected one (or of all).
 */
import { Contents } from '@jupyterlab/services';

import { ModelSection } from '../environment/panel';
import { button, el, facts, guarded, NodeCache, showList } from '../ui';
import { runActions, scheduleActions } from './actions';
import { IRun, ISchedule } from './api';
import { ACTIVE_STATES, formatDuration, formatTime, runSource } from './format';
import { JobsModel } from './model';

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
export class JobsSection extends ModelSection<number | null, JobsModel> {
  constructor(private readonly options: IJobsSectionOptions) {
    super(
      { title: 'Jobs', testId: 'stratolab-jobs', className: 'jp-Stratolab-jobs', errorTestId: 'stratolab-jobs-error' },
      new JobsModel(null)
    );
    this.schedulesNode = el('div', 'jp-Stratolab-schedules', undefined, 'stratolab-schedules');
    this.runsTitle = el('div', 'jp-Stratolab-subTitle', 'Runs', 'stratolab-runs-title');
    this.runsNode = el('div', 'jp-Stratolab-runs', undefined, 'stratolab-runs');
    this.body.append(
      this.errorNode,
      el('div', 'jp-Stratolab-subTitle', 'Schedules'),
      this.schedulesNode,
      this.runsTitle,
      this.runsNode
    );
    this.schedulesNode.append(el('p', 'jp-Stratolab-loading', 'Loading…'));
    this.model.startPolling(this);
  }

  protected render(): void {
    this.showCards(
      this.schedulesNode,
      this.scheduleNodes,
      this.model.schedules,
      s => this.renderSchedule(s),
      NO_SCHEDULES,
      { noun: 'schedules', testId: 'stratolab-schedules-more' }
    );

    const selected = this.model.schedules.find(s => s.id === this.model.selected);
    if (selected) {
      const all = button(
        'Show all',
        () => (this.selected = null),
        'stratolab-runs-show-all',
        'Show the runs of every schedule'
      );
      this.runsTitle.replaceChildren(document.createTextNode(`Runs of ${selected.name} `), all);
    } else {
      this.runsTitle.textContent = 'Runs';
    }
    showList(
      this.runsNode,
      this.model.runs.map(r => this.runNodes.reuse(r.id, r, () => this.renderRun(r))),
      ['No runs yet.', 'stratolab-runs-empty']
    );
  }

  private renderSchedule(s: ISchedule): HTMLElement {
    const card = el('div', 'jp-Stratolab-schedule', undefined, `stratolab-schedule-${s.id}`);
    card.dataset.scheduleId = String(s.id);
    card.dataset.scheduleName = s.name;
    card.dataset.scheduleActive = String(s.active);
    card.classList.toggle('jp-mod-selected', s.id === this.model.selected);
    card.classList.toggle('jp-mod-paused', !s.active);

    const status = s.active ? 'active' : 'paused';
    const badge = el('span', `jp-Stratolab-badge jp-mod-${status}`, status, `stratolab-schedule-${s.id}-status`);
    const hints = { select: 'Show the runs of this schedule only', unselect: 'Show the runs of every schedule' };
    const title = this.selectableTitle(s.id, s.name, `stratolab-schedule-${s.id}-select`, hints, badge);
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
    actions.append(
      ...scheduleActions(s, `stratolab-schedule-${s.id}-action`, run => this.guard(run), {
        editSchedule: this.options.editSchedule,
        onRunStarted: () => this.model.select(s.id, false) // the refresh after the action shows its runs
      })
    );
    card.append(actions);
    return card;
  }

  private renderRun(r: IRun): HTMLElement {
    const row = el('div', 'jp-Stratolab-run', undefined, `stratolab-run-${r.id}`);
    row.dataset.runId = String(r.id);
    row.dataset.runState = r.state;
    row.dataset.runTrigger = r.trigger;
    if (r.schedule_id !== null) {
      row.dataset.runScheduleId = String(r.schedule_id);
    }

    const title = el('div', 'jp-Stratolab-functionTitle');
    title.append(
      el('span', 'jp-Stratolab-runName', `#${r.id} ${runSource(r)}`),
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
    actions.append(...runActions(r, `stratolab-run-${r.id}-action`, run => this.guard(run), this.options));
    row.append(actions);
    return row;
  }

  /** Run an action; show its error in a dialog; refresh after. */
  private guard(run: () => Promise<unknown>): Promise<void> {
    return guarded('Stratolab jobs', run, () => this.refresh(true));
  }

  private readonly schedulesNode: HTMLElement;
  private readonly runsTitle: HTMLElement;
  private readonly runsNode: HTMLElement;
  private readonly scheduleNodes = new NodeCache<number>(CACHE_LIMIT);
  private readonly runNodes = new NodeCache<number>(CACHE_LIMIT);
}

/** Nodes kept for reuse before the cache starts over (runs come and go). */
const CACHE_LIMIT = 200;

/** What the list says before the first schedule. */
const NO_SCHEDULES: [string, string] = [
  'No scheduled jobs yet. Right-click a notebook in the file browser and choose “Schedule…”.',
  'stratolab-jobs-empty'
];
