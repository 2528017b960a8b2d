/**
 * What can be done to an AutoML search (stop it, delete it, deploy its best trial's model): the
 * buttons and the Deploy best flow of the AutoML section and of the AutoML tab's detail view.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';

import { schedulerClient } from '../api/client';
import { deployBundle, IFunction } from '../functions/api';
import { functionNameInput } from '../functions/widgets';
import { ACTIVE_STATES } from '../jobs/format';
import { actionButtons, alertNode, el, fieldRow, FormBody, readOnlyField, setProgress } from '../ui';
import { fetchBestBundle, IAutoMLJob } from './api';
import { bestFunctionName, formatValue } from './trials';

/**
 * A search's buttons: Stop while it is queued or running, else Delete (test ids
 * `${testIdPrefix}-stop`, `-delete`); `onDeleted` after a confirmed delete.
 */
export function searchActions(
  j: IAutoMLJob,
  testIdPrefix: string,
  guard: (run: () => Promise<unknown>) => Promise<void>,
  onDeleted?: (j: IAutoMLJob) => void
): HTMLButtonElement[] {
  const act = actionButtons(testIdPrefix, guard);
  if (ACTIVE_STATES.includes(j.state)) {
    return [
      act('Stop', 'Stop the search: running trials are stopped, completed ones kept', () =>
        schedulerClient.post(`api/automl/${j.id}/stop`)
      )
    ];
  }
  return [
    act('Delete', 'Delete the search, its trials and their outputs', async () => {
      if (await deleteSearch(j)) {
        onDeleted?.(j);
      }
    })
  ];
}

/** Ask, then delete the search; true when it was deleted. */
export async function deleteSearch(j: IAutoMLJob): Promise<boolean> {
  const result = await showDialog({
    title: `Delete ${j.name}?`,
    body: 'Its trials, their executed notebooks and saved models are deleted (functions already deployed stay).',
    buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Delete' })]
  });
  if (!result.button.accept) {
    return false;
  }
  await schedulerClient.delete(`api/automl/${j.id}`);
  return true;
}

/** Where Deploy best reports, and what it tells its caller. */
export interface IDeployBestOptions {
  /** The node the progress, the outcome (endpoint, key shown once) or the error go into. */
  outcome: HTMLElement;
  /** Called with true once the name is accepted and the deploy starts, with false when it ended. */
  onBusy?: (busy: boolean) => void;
  onDeployed?: (fn: IFunction) => void;
}

/**
 * Deploy best: ask for the function's name, then fetch the best trial's bundle and deploy it as a
 * new version of that function. Errors are shown in `outcome`, not thrown.
 */
export async function deployBestTrial(job: IAutoMLJob, options: IDeployBestOptions): Promise<void> {
  const form = el('div', 'jp-Stratolab-form');
  const input = functionNameInput('stratolab-automl-deploy-name', bestFunctionName(job.name));
  const row = fieldRow('Function name', input);
  const best = job.best;
  form.append(
    el(
      'p',
      'jp-Stratolab-note',
      best
        ? `The model of trial #${best.number} (${job.config.metric} ${formatValue(best.value)}) becomes a new version of this function.`
        : 'No trial has completed yet.'
    ),
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
  const { outcome } = options;
  const fail = (message: string) => outcome.replaceChildren(alertNode(message, 'stratolab-automl-deploy-error'));
  if (!input.checkValidity()) {
    fail(`Invalid function name “${name}”: ${input.title}.`);
    return;
  }
  options.onBusy?.(true);
  const progress = el('div', 'jp-Stratolab-progress', undefined, 'stratolab-automl-deploy-progress');
  setProgress(progress, 'Deploying the best trial’s model…');
  outcome.replaceChildren(progress);
  try {
    const bundle = await fetchBestBundle(job.id);
    const fn = await deployBundle(name, bundle);
    const url = readOnlyField(fn.url, 'stratolab-automl-deploy-url');
    const nodes: HTMLElement[] = [
      el(
        'div',
        'jp-Stratolab-success',
        `Deployed ${fn.name}, version ${fn.version ?? '?'}${best ? `, from trial #${best.number}` : ''}.`,
        'stratolab-automl-deploy-success'
      ),
      el('div', 'jp-Stratolab-fieldLabel', 'Endpoint'),
      url
    ];
    if (fn.key) {
      const key = readOnlyField(fn.key, 'stratolab-automl-deploy-key');
      nodes.push(
        el('div', 'jp-Stratolab-fieldLabel', 'Function key'),
        key,
        el(
          'div',
          'jp-Stratolab-note jp-Stratolab-keyNote',
          'Shown once: store it now. Callers send it as the X-Function-Key header.'
        )
      );
    }
    outcome.replaceChildren(...nodes);
    options.onDeployed?.(fn);
  } catch (error) {
    fail((error as Error).message || String(error));
  } finally {
    options.onBusy?.(false);
  }
}
