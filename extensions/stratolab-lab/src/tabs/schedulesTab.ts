/**
 * The Schedules tab: every schedule with its notebook, cron, next run, last run's state and whether
 * it is active; the detail shows its settings, with the sidebar's actions and its runs.
 */
import { IRun, ISchedule, listSchedules } from '../jobs/api';
import { scheduleActions } from '../jobs/actions';
import { formatTime } from '../jobs/format';
import { button } from '../ui';
import { ITabContext } from './context';
import { IListTabOptions } from './listTab';

export function schedulesTab(context: ITabContext): IListTabOptions<ISchedule> {
  return {
    id: 'schedules',
    label: 'Schedules',
    actionTitle: 'Stratolab jobs',
    emptyText: 'No scheduled jobs yet. Right-click a notebook in the file browser and choose “Schedule…”.',
    rowKey: s => String(s.id),
    load: listSchedules,
    sort: { key: 'name', direction: 'asc' },
    columns: [
      { key: 'name', label: 'Name', value: s => s.name },
      { key: 'notebook', label: 'Notebook', value: s => s.notebook },
      {
        key: 'cron',
        label: 'Cron',
        value: s => s.cron ?? '',
        text: s => (s.cron ? `${s.cron} (${s.timezone})` : 'on demand')
      },
      {
        key: 'next',
        label: 'Next run',
        kind: 'date',
        value: s => (s.active ? s.next_run_at : null),
        text: s => (s.cron && s.active ? formatTime(s.next_run_at) : '')
      },
      { key: 'last', label: 'Last state', choices: true, value: s => s.last_run?.state ?? 'never' },
      { key: 'active', label: 'Active', choices: true, value: s => (s.active ? 'active' : 'paused') }
    ],
    detail: (s, guard, prefix) => ({
      title: s.name,
      fields: [
        ['Notebook', s.notebook, 'notebook'],
        ['When', s.cron ? s.description || `${s.cron} (${s.timezone})` : 'on demand', 'when'],
        ['Next run', s.cron ? (s.active ? formatTime(s.next_run_at) : 'paused') : '–', 'next'],
        ['Last run', lastRunText(s.last_run), 'last'],
        ['Parameters', JSON.stringify(s.parameters), 'parameters'],
        ['Environment', s.profile || 'default', 'profile'],
        ['Timeout', s.timeout ? `${s.timeout} s` : 'none', 'timeout'],
        ['Retries', String(s.retries), 'retries'],
        ['Outputs', s.output_formats.join(', '), 'outputs'],
        ['Updated', formatTime(s.updated_at), 'updated']
      ],
      actions: [
        ...scheduleActions(s, `${prefix}-action`, guard, { editSchedule: context.editSchedule }),
        button(
          'Runs',
          () => void context.showRunsOf(s.name),
          `${prefix}-action-runs`,
          'Show this schedule’s runs in the Runs tab'
        )
      ]
    })
  };
}

function lastRunText(run: IRun | null): string {
  return run ? `#${run.id} ${run.state} · ${formatTime(run.started_at || run.created_at)}` : 'never';
}
