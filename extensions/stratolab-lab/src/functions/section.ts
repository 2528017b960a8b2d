/**
 * The Functions section of the panel: the user's functions, their numbers, and what can be done to
 * them (invoke, traffic, rollback, scale, logs, delete).
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { functionsClient, ServiceError } from '../api/client';
import { PanelSection } from '../environment/panel';
import { actionButtons, el, facts, FormBody, guarded, numberField, readNumber, readOnlyField } from '../ui';
import { IFunction } from './api';
import { formatMs, trafficText } from './format';
import { FunctionsModel } from './model';
import { createTryBox } from './widgets';

/**
 * The user's functions, with their numbers and what can be done to them.
 */
export class FunctionsSection extends PanelSection {
  constructor() {
    super({ title: 'Functions', testId: 'stratolab-functions', className: 'jp-Stratolab-functions' });
    this.body.append(el('p', 'jp-Stratolab-loading', 'Loading…'));
    this.model.changed.connect(() => this.render());
    this.model.failed.connect((_, message) => this.showError(message, 'stratolab-functions-error'));
  }

  /** The functions shown. */
  readonly model = new FunctionsModel();

  refresh(): Promise<void> {
    return this.model.refresh(true);
  }

  dispose(): void {
    this.model.dispose();
    super.dispose();
  }

  private render(): void {
    if (this.model.functions.length === 0) {
      this.body.replaceChildren(
        el(
          'p',
          'jp-Stratolab-note',
          'No functions yet. Right-click a code cell that defines a function and choose “Deploy as function”.',
          'stratolab-functions-empty'
        )
      );
      return;
    }
    this.body.replaceChildren(...this.model.functions.map(fn => this.renderFunction(fn)));
  }

  private renderFunction(fn: IFunction): HTMLElement {
    const card = el('div', 'jp-Stratolab-function', undefined, `stratolab-function-${fn.name}`);
    const title = el('div', 'jp-Stratolab-functionTitle');
    title.append(el('span', 'jp-Stratolab-functionName', fn.name));
    title.append(el('span', 'jp-Stratolab-badge', fn.public ? 'public' : 'token'));
    card.append(title);

    const { node: factList, add: fact } = facts(`stratolab-function-${fn.name}`);
    fact(
      'Versions',
      fn.versions.map(v => `v${v.version} ${v.state}`).join(', ') || 'none',
      'versions'
    );
    fact('Traffic', trafficText(fn), 'traffic');
    fact('Instances', `${fn.instances} (${fn.scaling.min_instances}–${fn.scaling.max_instances})`, 'instances');
    fact(
      'Invocations',
      `${fn.stats.invocations}${fn.stats.errors ? ` (${fn.stats.errors} errors)` : ''}`,
      'invocations'
    );
    fact('Latency', `p50 ${formatMs(fn.stats.p50_ms)} · p99 ${formatMs(fn.stats.p99_ms)}`, 'latency');
    fact('Cold starts', String(fn.cold_starts), 'cold-starts');
    card.append(factList);

    const url = readOnlyField(fn.url);
    url.title = 'Endpoint URL';
    card.append(url);

    const actions = el('div', 'jp-Stratolab-actions');
    const act = actionButtons(`stratolab-function-${fn.name}-action`, run => this.guard(run));
    actions.append(
      act('Invoke', 'Send a JSON request and see the answer', () => this.invoke(fn)),
      act('Traffic', 'Split traffic between ready versions', () => this.editTraffic(fn)),
      act('Rollback', 'Send all traffic to an earlier ready version', () => this.rollback(fn)),
      act('Scale', 'Instances, concurrency and scale to zero', () => this.scale(fn)),
      act('Logs', 'Recent output of its instances', () => this.logs(fn)),
      act('Delete', 'Delete the function and stop its instances', () => this.remove(fn))
    );
    card.append(actions);
    return card;
  }

  /** Run an action; show its error in a dialog; refresh after. */
  private guard(run: () => Promise<unknown>): Promise<void> {
    return guarded('Stratolab functions', run, () => this.refresh());
  }

  private async invoke(fn: IFunction): Promise<void> {
    await showDialog({
      title: `Invoke ${fn.name}`,
      body: new Widget({ node: createTryBox(fn.owner, fn.name) }),
      buttons: [Dialog.okButton({ label: 'Close' })]
    });
  }

  private async editTraffic(fn: IFunction): Promise<void> {
    const ready = fn.versions.filter(v => v.state === 'ready');
    if (ready.length === 0) {
      throw new ServiceError(`${fn.name} has no ready version.`, 400);
    }
    const form = el('div', 'jp-Stratolab-form');
    form.append(el('p', 'jp-Stratolab-note', 'Weights in percent; they must add up to 100.'));
    const inputs = ready.map(v => {
      const field = numberField(`Version ${v.version}`, fn.traffic[String(v.version)] ?? 0, { min: 0, testId: `stratolab-traffic-${v.version}` });
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

  private async rollback(fn: IFunction): Promise<void> {
    const current = Object.keys(fn.traffic).map(Number);
    const candidates = fn.versions.filter(v => v.state === 'ready' && !(current.length === 1 && current[0] === v.version));
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

  private async scale(fn: IFunction): Promise<void> {
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

  private async logs(fn: IFunction): Promise<void> {
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

  private async remove(fn: IFunction): Promise<void> {
    const result = await showDialog({
      title: `Delete ${fn.name}?`,
      body: `Its ${fn.versions.length} version(s) are removed and its instances stopped; ${fn.url} stops answering.`,
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Delete' })]
    });
    if (result.button.accept) {
      await functionsClient.delete(`api/functions/${fn.name}`);
    }
  }
}
