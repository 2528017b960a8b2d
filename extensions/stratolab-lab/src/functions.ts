/**
 * Serverless functions in the lab: the client of the functions service (reached through this
 * server's `stratolab/functions/` proxy), the "Try it" box, and the Functions section of the panel.
 *
 * The shapes mirror `stratolab/functions/service/state.py` (`ServiceState.describe`).
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { functionsClient, ServiceError } from './api/client';
import { actionButtons, button, el, facts, FormBody, guarded, numberField, readNumber, readOnlyField } from './ui';
import { PanelSection } from './panel';

export interface IScaling {
  min_instances: number;
  max_instances: number;
  concurrency: number;
  idle_timeout_s: number;
  timeout_s: number;
  memory_mb: number | null;
  [key: string]: number | null;
}

export interface IFunctionVersion {
  version: number;
  state: string;
  error: string | null;
  created_at: string;
  instances?: number;
  cold_starts?: number;
}

export interface IFunction {
  owner: string;
  name: string;
  public: boolean;
  url: string;
  scaling: IScaling;
  traffic: Record<string, number>;
  versions: IFunctionVersion[];
  instances: number;
  cold_starts: number;
  stats: {
    invocations: number;
    errors: number;
    p50_ms: number | null;
    p99_ms: number | null;
  };
  /** Only in the answer to a deploy. */
  version?: number;
  /** Only in the answer to the first deploy of a function: shown once. */
  key?: string;
}

/** What an invocation answered, as text (the function decides the content type). */
export interface IInvocation {
  status: number;
  contentType: string;
  text: string;
  version: string | null;
}

export function listFunctions(): Promise<IFunction[]> {
  return functionsClient.get<{ functions: IFunction[] }>('api/functions').then(d => d.functions);
}

/**
 * Invoke `owner/name` with a JSON body; the answer is returned whatever its status.
 */
export async function invokeFunction(owner: string, name: string, json: string): Promise<IInvocation> {
  const response = await functionsClient.fetch(
    `fn/${encodeURIComponent(owner)}/${encodeURIComponent(name)}`,
    { method: 'POST', body: json, headers: { 'Content-Type': 'application/json' } }
  );
  return {
    status: response.status,
    contentType: response.headers.get('Content-Type') || '',
    text: await response.text(),
    version: response.headers.get('X-Function-Version')
  };
}

/**
 * Pretty-print a JSON answer; other answers are shown as they came.
 */
function formatAnswer(result: IInvocation): string {
  if (result.contentType.startsWith('application/json')) {
    try {
      return JSON.stringify(JSON.parse(result.text), null, 2);
    } catch {
      // fall through: show the raw text
    }
  }
  return result.text;
}

/**
 * The "Try it" box: a JSON textarea, an Invoke button, and the status and answer below.
 */
export function createTryBox(owner: string, name: string, example = '[]'): HTMLElement {
  const box = el('div', 'jp-Stratolab-try');
  const input = el('textarea', 'jp-Stratolab-tryInput', undefined, 'stratolab-try-input');
  input.value = example;
  input.rows = 3;
  input.spellcheck = false;
  input.setAttribute('aria-label', 'Request body (JSON)');
  const output = el('pre', 'jp-Stratolab-tryOutput', '', 'stratolab-try-output');
  output.setAttribute('aria-live', 'polite');
  const status = el('div', 'jp-Stratolab-tryStatus', '', 'stratolab-try-status');
  const submit = button('Invoke', () => void run(), 'stratolab-try-submit', `POST to ${name}`);
  submit.classList.add('jp-mod-accept');

  async function run(): Promise<void> {
    const body = input.value.trim() || 'null';
    try {
      JSON.parse(body);
    } catch (error) {
      status.textContent = 'Not valid JSON';
      status.className = 'jp-Stratolab-tryStatus jp-mod-error';
      output.textContent = (error as Error).message;
      return;
    }
    submit.disabled = true;
    status.textContent = 'Invoking…';
    status.className = 'jp-Stratolab-tryStatus';
    output.textContent = '';
    const started = performance.now();
    try {
      const result = await invokeFunction(owner, name, body);
      const ms = Math.round(performance.now() - started);
      const version = result.version ? ` · version ${result.version}` : '';
      status.textContent = `${result.status} · ${ms} ms${version}`;
      status.className = `jp-Stratolab-tryStatus ${result.status < 400 ? 'jp-mod-ok' : 'jp-mod-error'}`;
      output.textContent = formatAnswer(result);
    } catch (error) {
      status.textContent = 'Failed';
      status.className = 'jp-Stratolab-tryStatus jp-mod-error';
      output.textContent = (error as Error).message;
    } finally {
      submit.disabled = false;
    }
  }

  box.append(
    el('label', 'jp-Stratolab-fieldLabel', 'Request body (JSON)'),
    input,
    submit,
    status,
    output
  );
  return box;
}

/** The input of a function's name: what the service accepts (a DNS label) is checked as typed. */
export function functionNameInput(testId: string, value: string): HTMLInputElement {
  const input = el('input', 'jp-Stratolab-input', undefined, testId);
  input.type = 'text';
  input.value = value;
  // Escaped dash: browsers compile `pattern` with the `v` flag, where a bare `-` is an error.
  input.pattern = '[a-z]([a-z0-9\\-]{0,61}[a-z0-9])?';
  input.title = '1-63 lower-case letters, digits and dashes, starting with a letter';
  input.spellcheck = false;
  return input;
}

function formatMs(ms: number | null): string {
  return ms === null ? '–' : ms < 10 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`;
}

function trafficText(fn: IFunction): string {
  const entries = Object.entries(fn.traffic);
  if (entries.length === 0) {
    return 'no traffic';
  }
  return entries.map(([v, w]) => `v${v} ${w}%`).join(' · ');
}

/**
 * The user's functions, with their numbers and what can be done to them.
 */
export class FunctionsSection extends PanelSection {
  constructor() {
    super({ title: 'Functions', testId: 'stratolab-functions', className: 'jp-Stratolab-functions' });
    this.body.append(el('p', 'jp-Stratolab-loading', 'Loading…'));
  }

  /** The functions last shown. */
  get functions(): ReadonlyArray<IFunction> {
    return this._functions;
  }

  async refresh(): Promise<void> {
    try {
      this._functions = await listFunctions();
      this.render();
    } catch (error) {
      this.showError((error as Error).message || String(error), 'stratolab-functions-error');
    }
  }

  private render(): void {
    if (this._functions.length === 0) {
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
    this.body.replaceChildren(...this._functions.map(fn => this.renderFunction(fn)));
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

  private _functions: IFunction[] = [];
}
