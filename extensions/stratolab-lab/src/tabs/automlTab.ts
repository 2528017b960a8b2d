/**
 * The AutoML tab: every search with its state, trials done out of planned, best value and start;
 * the detail shows its objective and best trial, with the sidebar's Stop or Delete and Deploy best.
 */
import { deployBestTrial, searchActions } from '../automl/actions';
import { IAutoMLJob, listAutoMLJobs } from '../automl/api';
import { countsText, formatValue } from '../automl/trials';
import { ACTIVE_STATES, formatTime } from '../jobs/format';
import { alertNode, button, el } from '../ui';
import { ITabContext } from './context';
import { IListTabOptions } from './listTab';

/** Trials that ended (complete, pruned or failed); lost ones are run again. */
export function trialsDone(job: IAutoMLJob): number {
  const c = job.counts ?? {};
  return (c.complete ?? 0) + (c.pruned ?? 0) + (c.fail ?? 0) + (c.failed ?? 0);
}

export function automlTab(context: ITabContext): IListTabOptions<IAutoMLJob> {
  // Deploy best reports into a node per search, kept while the detail is redrawn.
  const outcomes = new Map<number, HTMLElement>();
  const deploying = new Set<number>();
  const outcomeOf = (id: number) => {
    let node = outcomes.get(id);
    if (!node) {
      node = el('div', 'jp-Stratolab-outcome', undefined, 'stratolab-tab-automl-deploy-outcome');
      outcomes.set(id, node);
    }
    return node;
  };
  return {
    id: 'automl',
    label: 'AutoML searches',
    actionTitle: 'Stratolab AutoML',
    emptyText: 'No AutoML searches yet. Right-click a notebook with a “parameters” cell and choose “Tune…”.',
    rowKey: j => String(j.id),
    load: listAutoMLJobs,
    busy: jobs => jobs.some(j => ACTIVE_STATES.includes(j.state)),
    activeMs: 2000,
    sort: { key: 'started', direction: 'desc' },
    columns: [
      { key: 'name', label: 'Name', value: j => j.name },
      { key: 'state', label: 'State', choices: true, value: j => j.state },
      {
        key: 'trials',
        label: 'Trials',
        kind: 'number',
        value: j => trialsDone(j),
        text: j => `${trialsDone(j)}/${j.config.trials}`
      },
      {
        key: 'best',
        label: 'Best value',
        kind: 'number',
        value: j => j.best?.value,
        text: j => (j.best ? formatValue(j.best.value) : '')
      },
      {
        key: 'started',
        label: 'Started',
        kind: 'date',
        firstDirection: 'desc',
        value: j => j.started_at ?? j.created_at,
        text: j => formatTime(j.started_at ?? j.created_at)
      }
    ],
    detail: (j, guard, prefix) => {
      const deploy = button(
        'Deploy best',
        () => void deployBest(),
        `${prefix}-action-deploy-best`,
        j.best ? `Deploy the model of trial #${j.best.number} as a function` : 'No trial has completed yet'
      );
      deploy.classList.add('jp-mod-accept');
      deploy.disabled = !j.best || deploying.has(j.id);
      const deployBest = () =>
        deployBestTrial(j, {
          outcome: outcomeOf(j.id),
          onDeployed: context.onDeployed,
          onBusy: busy => {
            deploy.disabled = busy || !j.best;
            if (busy) {
              deploying.add(j.id);
            } else {
              deploying.delete(j.id);
            }
          }
        });
      const best = j.best;
      return {
        title: j.name,
        fields: [
          ['Notebook', j.notebook, 'notebook'],
          ['State', j.state, 'state'],
          ['Objective', `${j.config.direction} ${j.config.metric}`, 'objective'],
          ['Algorithm', `${j.config.algorithm}, pruner ${j.config.pruner}`, 'algorithm'],
          ['Trials', `${countsText(j.counts ?? {})} (of ${j.config.trials}, ${j.config.parallel} at a time)`, 'counts'],
          ['Best', best ? `${formatValue(best.value)} (trial #${best.number})` : '–', 'best'],
          ['Best parameters', best ? JSON.stringify(best.params) : '–', 'best-params'],
          ['Started', formatTime(j.started_at), 'started'],
          ['Finished', formatTime(j.finished_at), 'finished']
        ],
        actions: [...searchActions(j, `${prefix}-action`, guard, () => outcomes.delete(j.id)), deploy],
        extra: [...(j.error ? [alertNode(j.error, `${prefix}-error`, 'jp-Stratolab-runError')] : []), outcomeOf(j.id)]
      };
    }
  };
}
