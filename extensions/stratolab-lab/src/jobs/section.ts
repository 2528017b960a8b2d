/**
 * The Jobs section of the panel: the schedules, and the runs of the selected one (or of all).
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { Contents } from '@jupyterlab/services';
import { Widget } from '@lumino/widgets';

import { schedulerClient } from '../api/client';
import { PanelSection } from '../environment/panel';
import { actionButtons, alertNode, button, el, facts, guarded, link, NodeCache } from '../ui';
import { IRun, ISchedule, runNow } from './api';
import { ACTIVE_STATES, FINISHED_STATES, formatDuration, formatTime, runNotebookPath, runOutputs } from './format';
import { JobsModel } from './model';
import { ensureDirectory } from './notebooks';

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
    this.model.changed.connect(() => {
      this.errorNode.replaceChildren();
      this.render();
    });
    this.model.failed.connect((_, message) => this.errorNode.replaceChildren(alertNode(message, 'stratolab-jobs-error')));
    this.model.startPolling(this);
  }

  /** The schedules and runs shown, the selection, polling. */
  readonly model = new JobsModel();

  /** The schedule whose runs are listed; null for the runs of all schedules. */
  get selected(): number | null {
    return this.model.selected;
  }

  set selected(id: number | null) {
    this.model.selected = id;
  }

  /** Reload schedules and runs (`fresh`: after a change, not joining a load under way). */
  refresh(fresh = false): Promise<void> {
    return this.model.refresh(fresh);
  }

  dispose(): void {
    this.model.dispose();
    super.dispose();
  }

  private render(): void {
    if (this.model.schedules.length === 0) {
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
        ...this.model.schedules.map(s =>
          this.scheduleNodes.reuse(s.id, { s, selected: s.id === this.model.selected }, () => this.renderSchedule(s))
        )
      );
    }

    const selected = this.model.schedules.find(s => s.id === this.model.selected);
    if (selected) {
      const all = button('Show all', () => (this.selected = null), 'stratolab-runs-show-all', 'Show the runs of every schedule');
      this.runsTitle.replaceChildren(document.createTextNode(`Runs of ${selected.name} `), all);
    } else {
      this.runsTitle.textContent = 'Runs';
    }
    if (this.model.runs.length === 0) {
      this.runsNode.replaceChildren(el('p', 'jp-Stratolab-note', 'No runs yet.', 'stratolab-runs-empty'));
    } else {
      this.runsNode.replaceChildren(
        ...this.model.runs.map(r => this.runNodes.reuse(r.id, r, () => this.renderRun(r)))
      );
    }
  }

  private renderSchedule(s: ISchedule): HTMLElement {
    const card = el('div', 'jp-Stratolab-schedule', undefined, `stratolab-schedule-${s.id}`);
    card.dataset.scheduleId = String(s.id);
    card.dataset.scheduleName = s.name;
    card.dataset.scheduleActive = String(s.active);
    card.classList.toggle('jp-mod-selected', s.id === this.model.selected);
    card.classList.toggle('jp-mod-paused', !s.active);

    const title = el('div', 'jp-Stratolab-functionTitle');
    const name = el('button', 'jp-Stratolab-scheduleName', s.name, `stratolab-schedule-${s.id}-select`);
    name.type = 'button';
    name.title = s.id === this.model.selected ? 'Show the runs of every schedule' : 'Show the runs of this schedule only';
    name.addEventListener('click', () => (this.selected = s.id === this.model.selected ? null : s.id));
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
        this.model.select(s.id, false); // the refresh after the action shows its runs
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
}

/** Nodes kept for reuse before the cache starts over (runs come and go). */
const CACHE_LIMIT = 200;
