/**
 * What can be done to a schedule (run now, pause or resume, edit, delete) and to a run (open its
 * executed notebook, download it as HTML, its log, its files, stop it): the buttons of the Jobs
 * section's cards and of the detail views of the Schedules and Runs tabs, and the calls behind them.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { Contents } from '@jupyterlab/services';
import { Widget } from '@lumino/widgets';

import { schedulerClient } from '../api/client';
import { actionButtons, el, link } from '../ui';
import { IRun, ISchedule, runNow } from './api';
import { ACTIVE_STATES, FINISHED_STATES, runNotebookPath, runOutputs } from './format';
import { ensureDirectory } from './notebooks';

type Guard = (run: () => Promise<unknown>) => Promise<void>;

/** What a run's Open needs from the lab: where to copy the notebook, and how to open it. */
export interface IRunOpener {
  contents: Contents.IManager;
  openPath: (path: string) => Promise<unknown>;
}

export interface IScheduleActionOptions {
  editSchedule: (schedule: ISchedule) => Promise<void>;
  /** After Run now started a run. */
  onRunStarted?: (run: IRun) => void;
}

/**
 * A schedule's buttons (test ids `${testIdPrefix}-run-now`, `-pause` or `-resume`, `-edit`, `-delete`),
 * each run through `guard` (which shows its error and refreshes after).
 */
export function scheduleActions(
  s: ISchedule,
  testIdPrefix: string,
  guard: Guard,
  options: IScheduleActionOptions
): HTMLButtonElement[] {
  const act = actionButtons(testIdPrefix, guard);
  return [
    act('Run now', 'Run the notebook now, with this schedule’s settings', async () => {
      options.onRunStarted?.(await runNow(s.id));
    }),
    s.active
      ? act('Pause', 'Stop starting runs on schedule (Run now still works)', () =>
          schedulerClient.post(`api/schedules/${s.id}/pause`)
        )
      : act('Resume', 'Start runs on schedule again', () => schedulerClient.post(`api/schedules/${s.id}/resume`)),
    act('Edit', 'Change the schedule, its parameters and settings', () => options.editSchedule(s)),
    act('Delete', 'Delete the schedule, its runs and their outputs', () => deleteSchedule(s))
  ];
}

/**
 * A run's buttons and links (test ids `${testIdPrefix}-open`, `-html`, `-log`, `-files`, `-stop`):
 * what its outputs and state allow.
 */
export function runActions(r: IRun, testIdPrefix: string, guard: Guard, opener: IRunOpener): HTMLElement[] {
  const act = actionButtons(testIdPrefix, guard);
  const nodes: HTMLElement[] = [];
  const outputs = runOutputs(r);
  if (outputs.includes('ipynb')) {
    nodes.push(act('Open', 'Open the executed notebook (a copy in stratolab-runs/)', () => openRunNotebook(r, opener)));
  }
  if (outputs.includes('html')) {
    const href = `${schedulerClient.url(`api/runs/${r.id}/output`)}?format=html&download=1`;
    nodes.push(link('HTML', href, `${testIdPrefix}-html`, 'Download the executed notebook as HTML', true));
  }
  nodes.push(
    act('Log', 'What papermill logged during the run', () => showRunLog(r)),
    act('Files', 'Files the notebook wrote', () => showRunFiles(r))
  );
  if (ACTIVE_STATES.includes(r.state)) {
    nodes.push(act('Stop', 'Stop this run', () => schedulerClient.post(`api/runs/${r.id}/stop`)));
  }
  return nodes;
}

/** Copy the run's executed notebook into the home (once) and open it. */
export async function openRunNotebook(r: IRun, { contents, openPath }: IRunOpener): Promise<void> {
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

export async function showRunLog(r: IRun): Promise<void> {
  const text = await schedulerClient.text(`api/runs/${r.id}/log`);
  const pre = el('pre', 'jp-Stratolab-logs', text || '(empty log)', 'stratolab-run-log');
  await showDialog({
    title: `Log of run #${r.id} (${r.schedule_name})`,
    body: new Widget({ node: pre }),
    buttons: [Dialog.okButton({ label: 'Close' })]
  });
}

export async function showRunFiles(r: IRun): Promise<void> {
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
  const body = data.files.length
    ? list
    : el('p', 'jp-Stratolab-note', 'The run wrote no files.', 'stratolab-run-files');
  await showDialog({
    title: `Files of run #${r.id} (${r.schedule_name})`,
    body: new Widget({ node: body }),
    buttons: [Dialog.okButton({ label: 'Close' })]
  });
}

export async function deleteSchedule(s: ISchedule): Promise<void> {
  const result = await showDialog({
    title: `Delete ${s.name}?`,
    body: 'Its running runs are stopped, and its runs and their outputs deleted.',
    buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Delete' })]
  });
  if (result.button.accept) {
    await schedulerClient.delete(`api/schedules/${s.id}`);
  }
}
