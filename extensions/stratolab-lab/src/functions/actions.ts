/**
 * What can be done to a function (invoke, traffic, rollback, scale, logs, delete): the dialogs and
 * calls behind the buttons of its sidebar card and of its detail view in the Functions tab.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { functionsClient, ServiceError } from '../api/client';
import { actionButtons, el, FormBody, numberField, readNumber } from '../ui';
import { IFunction } from './api';
import { createTryBox } from './widgets';

/**
 * A function's action buttons, with the test ids `${testIdPrefix}-invoke`, `-traffic`, ...; each
 * runs through `guard` (which shows its error and refreshes after).
 */
export function functionActions(
  fn: IFunction,
  testIdPrefix: string,
  guard: (run: () => Promise<unknown>) => Promise<void>
): HTMLButtonElement[] {
  const act = actionButtons(testIdPrefix, guard);
  return [
    act('Invoke', 'Send a JSON request and see the answer', () => invokeFunctionDialog(fn)),
    act('Traffic', 'Split traffic between ready versions', () => editTraffic(fn)),
    act('Rollback', 'Send all traffic to an earlier ready version', () => rollbackFunction(fn)),
    act('Scale', 'Instances, concurrency and scale to zero', () => scaleFunction(fn)),
    act('Logs', 'Recent output of its instances', () => showFunctionLogs(fn)),
    act('Delete', 'Delete the function and stop its instances', () => deleteFunction(fn))
  ];
}

export async function invokeFunctionDialog(fn: IFunction): Promise<void> {
  await showDialog({
    title: `Invoke ${fn.name}`,
    body: new Widget({ node: createTryBox(fn.owner, fn.name) }),
    buttons: [Dialog.okButton({ label: 'Close' })]
  });
}

export async function editTraffic(fn: IFunction): Promise<void> {
  const ready = fn.versions.filter(v => v.state === 'ready');
  if (ready.length === 0) {
    throw new ServiceError(`${fn.name} has no ready version.`, 400);
  }
  const form = el('div', 'jp-Stratolab-form');
  form.append(el('p', 'jp-Stratolab-note', 'Weights in percent; they must add up to 100.'));
  const inputs = ready.map(v => {
    const field = numberField(`Version ${v.version}`, fn.traffic[String(v.version)] ?? 0, {
      min: 0,
      testId: `stratolab-traffic-${v.version}`
    });
    form.append(field.row);
    return [String(v.version), field.input] as const;
  });
  const result = await showDialog({
    title: `Traffic of ${fn.name}`,
    body: new FormBody(form, () => {
      const weights: Record<string, number> = {};
      for (const [version, input] of inputs) {
        const w = readNumber(input) ?? 0;
        if (w > 0) {
          weights[version] = w;
        }
      }
      return weights;
    }),
    buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Apply' })]
  });
  if (result.button.accept && result.value) {
    await functionsClient.put(`api/functions/${fn.name}/traffic`, { traffic: result.value });
  }
}

export async function rollbackFunction(fn: IFunction): Promise<void> {
  const current = Object.keys(fn.traffic).map(Number);
  const candidates = fn.versions.filter(
    v => v.state === 'ready' && !(current.length === 1 && current[0] === v.version)
  );
  if (candidates.length === 0) {
    throw new ServiceError(`${fn.name} has no other ready version to roll back to.`, 400);
  }
  const form = el('div', 'jp-Stratolab-form');
  const select = el('select', 'jp-Stratolab-input', undefined, 'stratolab-rollback-version');
  for (const v of [...candidates].reverse()) {
    const option = el('option', '', `Version ${v.version} (${new Date(v.created_at).toLocaleString()})`);
    option.value = String(v.version);
    select.append(option);
  }
  const row = el('label', 'jp-Stratolab-field');
  row.append(el('span', 'jp-Stratolab-fieldLabel', 'Send all traffic to'), select);
  form.append(row);
  const result = await showDialog({
    title: `Roll back ${fn.name}`,
    body: new FormBody(form, () => Number(select.value)),
    buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Roll back' })]
  });
  if (result.button.accept) {
    await functionsClient.post(`api/functions/${fn.name}/rollback`, { version: result.value });
  }
}

export async function scaleFunction(fn: IFunction): Promise<void> {
  const form = el('div', 'jp-Stratolab-form');
  const s = fn.scaling;
  const fields = {
    min_instances: numberField('Min instances', s.min_instances, { min: 0 }),
    max_instances: numberField('Max instances', s.max_instances, { min: 1 }),
    concurrency: numberField('Concurrency per instance', s.concurrency, { min: 1 }),
    idle_timeout_s: numberField('Idle seconds before scale to zero', s.idle_timeout_s, { min: 0, step: 'any' })
  };
  for (const f of Object.values(fields)) {
    form.append(f.row);
  }
  const result = await showDialog({
    title: `Scale ${fn.name}`,
    body: new FormBody(form, () => {
      const scaling: Record<string, number> = {};
      for (const [key, f] of Object.entries(fields)) {
        const value = readNumber(f.input);
        if (value !== undefined) {
          scaling[key] = value;
        }
      }
      return scaling;
    }),
    buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Apply' })]
  });
  if (result.button.accept && result.value) {
    await functionsClient.patch(`api/functions/${fn.name}`, { scaling: result.value });
  }
}

export async function showFunctionLogs(fn: IFunction): Promise<void> {
  const data = await functionsClient.get<{ logs: Record<string, string> }>(`api/functions/${fn.name}/logs`);
  const text = Object.entries(data.logs)
    .map(([version, log]) => `── version ${version} ──\n${log || '(no output)'}`)
    .join('\n\n');
  const pre = el('pre', 'jp-Stratolab-logs', text || '(no output)', 'stratolab-function-logs');
  await showDialog({
    title: `Logs of ${fn.name}`,
    body: new Widget({ node: pre }),
    buttons: [Dialog.okButton({ label: 'Close' })]
  });
}

export async function deleteFunction(fn: IFunction): Promise<void> {
  const result = await showDialog({
    title: `Delete ${fn.name}?`,
    body: `Its ${fn.versions.length} version(s) are removed and its instances stopped; ${fn.url} stops answering.`,
    buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Delete' })]
  });
  if (result.button.accept) {
    await functionsClient.delete(`api/functions/${fn.name}`);
  }
}
