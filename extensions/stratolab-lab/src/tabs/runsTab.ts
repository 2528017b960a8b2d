/**
 * The Runs tab: the runs of every schedule and the ad-hoc ones (a notebook run once, a pipeline's step,
 * named by `runSource`) (the newest 500), filtered by state and schedule; the
 * detail shows a run's times, parameters and error, with the sidebar's actions (open its output).
 */
import { IRun, listRuns } from '../jobs/api';
import { runActions } from '../jobs/actions';
import { ACTIVE_STATES, formatDuration, formatTime, runSource } from '../jobs/format';
import { alertNode } from '../ui';
import { ITabContext } from './context';
import { IListTabOptions } from './listTab';

/** The most runs the scheduler lists at once (MAX_RUNS_LISTED of stratolab/jobs/service/state.py). */
const RUNS_LISTED = 500;

export function runsTab(context: ITabContext): IListTabOptions<IRun> {
  return {
    id: 'runs',
    label: 'Runs',
    actionTitle: 'Stratolab jobs',
    emptyText: 'No runs yet.',
    rowKey: r => String(r.id),
    load: () => listRuns(null, RUNS_LISTED),
    busy: runs => runs.some(r => ACTIVE_STATES.includes(r.state)),
    sort: { key: 'id', direction: 'desc' },
    columns: [
      { key: 'id', label: 'Run', kind: 'number', firstDirection: 'desc', value: r => r.id },
      { key: 'schedule', label: 'Schedule', choices: true, value: r => runSource(r) },
      { key: 'state', label: 'State', choices: true, value: r => r.state },
      {
        key: 'started',
        label: 'Started',
        kind: 'date',
        firstDirection: 'desc',
        value: r => r.started_at,
        text: r => formatTime(r.started_at)
      },
      {
        key: 'duration',
        label: 'Duration',
        kind: 'number',
        firstDirection: 'desc',
        value: r => r.duration,
        text: r => formatDuration(r.duration)
      },
      { key: 'attempt', label: 'Attempt', kind: 'number', value: r => r.attempt }
    ],
    detail: (r, guard, prefix) => ({
      title: `Run #${r.id} of ${runSource(r)}`,
      fields: [
        ['State', r.state, 'state'],
        ['Trigger', r.trigger, 'trigger'],
        ['Attempt', String(r.attempt), 'attempt'],
        ['Scheduled for', formatTime(r.scheduled_for), 'scheduled'],
        ['Started', formatTime(r.started_at), 'started'],
        ['Finished', formatTime(r.finished_at), 'finished'],
        ['Duration', formatDuration(r.duration), 'duration'],
        ['Parameters', JSON.stringify(r.parameters), 'parameters']
      ],
      actions: runActions(r, `${prefix}-action`, guard, context),
      extra: r.error ? [alertNode(r.error, `${prefix}-error`, 'jp-Stratolab-runError')] : []
    })
  };
}
