/**
 * "Deploy as function": a code cell's function becomes an HTTP endpoint.
 *
 * The capture has to happen in the notebook's own kernel (the trained model lives in its memory), so
 * the dialog runs a few lines of Python there, calling `stratolab.functions.client.deploy` with the
 * cell's current source, and reads the service's answer back from the printed output.
 */
import { Dialog } from '@jupyterlab/apputils';
import { NotebookPanel } from '@jupyterlab/notebook';
import { KernelMessage } from '@jupyterlab/services';
import { UUID } from '@lumino/coreutils';
import { Widget } from '@lumino/widgets';

import { functionsClient, ServiceError } from '../api/client';
import { TriggersView } from '../triggers/view';
import {
  alertNode,
  button,
  copyable,
  details,
  el,
  enterInField,
  fieldRow,
  IField,
  numberField,
  readNumber,
  selectInput,
  setProgress
} from '../ui';
import { IFunction } from './api';
import {
  curlExample,
  definedFunctions,
  deployCode,
  DeployOutcome,
  functionName,
  IDeployRequest,
  parseDeployOutput
} from './deploy';
import { createTryBox, functionNameInput } from './widgets';

/**
 * Run the deploy in the notebook's kernel and return its outcome (errors included, as outcomes).
 */
export async function deployInKernel(panel: NotebookPanel, request: IDeployRequest): Promise<DeployOutcome> {
  const kernel = panel.sessionContext.session?.kernel;
  if (!kernel) {
    return { ok: false, error: 'This notebook has no running kernel: start it and run the cells first.' };
  }
  const marker = `__STRATOLAB_DEPLOY_${UUID.uuid4().replace(/-/g, '')}__`;
  let printed = '';
  let failure: string | null = null;
  const future = kernel.requestExecute({
    code: deployCode(request, marker),
    silent: false,
    store_history: false,
    allow_stdin: false,
    stop_on_error: false
  });
  future.onIOPub = (msg: KernelMessage.IIOPubMessage) => {
    if (KernelMessage.isStreamMsg(msg)) {
      printed += msg.content.text;
    } else if (KernelMessage.isErrorMsg(msg)) {
      failure = `${msg.content.ename}: ${msg.content.evalue}`;
    }
  };
  await future.done;
  const outcome = parseDeployOutput(printed, marker);
  if (outcome) {
    return outcome;
  }
  return { ok: false, error: failure || 'The kernel did not report the outcome of the deploy.' };
}

/**
 * The dialog's body: the form, the Deploy button, and the outcome.
 */
export class DeployForm extends Widget {
  constructor(
    private readonly panel: NotebookPanel,
    source: string
  ) {
    super({ node: el('div', 'jp-Stratolab-deploy') });
    this.source = source;
    const handlers = definedFunctions(source);
    const form = el('div', 'jp-Stratolab-form');

    this.handler = selectInput(
      'stratolab-deploy-handler',
      handlers.map(h => [h, `${h}()`] as const),
      handlers[0] ?? ''
    );
    const handlerRow = fieldRow('Handler', this.handler);

    this.name = functionNameInput('stratolab-deploy-name', handlers.length ? functionName(handlers[0]) : '');
    this.name.placeholder = 'my-function';
    const nameRow = fieldRow('Name', this.name);
    this.existing = el('div', 'jp-Stratolab-note', '', 'stratolab-deploy-existing');
    this.handler.addEventListener('change', () => {
      this.name.value = functionName(this.handler.value);
      void this.lookUpExisting();
    });
    this.name.addEventListener('change', () => void this.lookUpExisting());
    form.append(handlerRow, nameRow, this.existing);

    const scaling = details('Scaling');
    this.fields = {
      min_instances: numberField('Min instances', null, { min: 0, placeholder: '0', testId: 'stratolab-deploy-min' }),
      max_instances: numberField('Max instances', null, { min: 1, placeholder: '4', testId: 'stratolab-deploy-max' }),
      concurrency: numberField('Concurrency per instance', null, {
        min: 1,
        placeholder: '1',
        testId: 'stratolab-deploy-concurrency'
      }),
      idle_timeout_s: numberField('Idle seconds before scale to zero', null, {
        min: 0,
        step: 'any',
        placeholder: '300',
        testId: 'stratolab-deploy-idle'
      }),
      timeout_s: numberField('Timeout (s)', null, {
        min: 0,
        step: 'any',
        placeholder: '30',
        testId: 'stratolab-deploy-timeout'
      }),
      memory_mb: numberField('Memory (MB)', null, {
        min: 1,
        placeholder: 'no limit',
        testId: 'stratolab-deploy-memory'
      }),
      gpus: numberField('GPUs per instance', null, { min: 0, placeholder: '0', testId: 'stratolab-deploy-gpus' })
    };
    scaling.body.append(
      this.fields.min_instances.row,
      this.fields.max_instances.row,
      this.fields.concurrency.row,
      this.fields.idle_timeout_s.row
    );
    const limits = details('Limits');
    limits.body.append(this.fields.timeout_s.row, this.fields.memory_mb.row, this.fields.gpus.row);

    const access = details('Access');
    const group = `stratolab-access-${UUID.uuid4()}`;
    const radio = (value: string, label: string, testId: string) => {
      const row = el('label', 'jp-Stratolab-radio');
      const input = el('input', '', undefined, testId);
      input.type = 'radio';
      input.name = group;
      input.value = value;
      row.append(input, document.createTextNode(` ${label}`));
      access.body.append(row);
      return input;
    };
    this.tokenAccess = radio('token', 'Token-protected: your token or the function key', 'stratolab-deploy-token');
    this.publicAccess = radio('public', 'Public: anyone with the URL', 'stratolab-deploy-public');
    this.tokenAccess.checked = true;
    form.append(scaling.details, limits.details, access.details);

    this.submit = button(
      'Deploy',
      () => void this.deploy(),
      'stratolab-deploy-submit',
      'Capture the function and its model from the kernel and deploy it'
    );
    this.submit.classList.add('jp-mod-accept', 'jp-Stratolab-deployButton');
    this.progress = el('span', 'jp-Stratolab-progress', '', 'stratolab-deploy-progress');
    const bar = el('div', 'jp-Stratolab-submitRow');
    bar.append(this.submit, this.progress);

    this.outcome = el('div', 'jp-Stratolab-outcome', undefined, 'stratolab-deploy-outcome');
    this.node.append(form, bar, this.outcome);

    if (handlers.length === 0) {
      this.submit.disabled = true;
      this.showError('This cell defines no function: write `def handler(inputs): ...` in it first.');
    } else {
      void this.lookUpExisting();
    }
  }

  /** Enter in a field deploys (instead of closing the dialog). */
  submitOnEnter(): void {
    if (!this.submit.disabled) {
      void this.deploy();
    }
  }

  private request(): IDeployRequest {
    const scaling: Record<string, number> = {};
    for (const [key, field] of Object.entries(this.fields)) {
      const value = readNumber(field.input);
      if (value !== undefined) {
        scaling[key] = value;
      }
    }
    return {
      handler: this.handler.value,
      name: this.name.value.trim(),
      scaling,
      public: this.publicAccess.checked,
      source: this.source
    };
  }

  /** On a redeploy, show the current settings (as placeholders) and access of the function. */
  private async lookUpExisting(): Promise<void> {
    const name = this.name.value.trim();
    this.existing.textContent = '';
    if (!name || !this.name.checkValidity()) {
      return;
    }
    try {
      const fn = await functionsClient.get<IFunction>(`api/functions/${encodeURIComponent(name)}`);
      if (this.name.value.trim() !== name) {
        return;
      }
      const latest = Math.max(0, ...fn.versions.map(v => v.version));
      this.existing.textContent = `${name} exists: this deploys version ${latest + 1} and sends it all traffic.`;
      for (const [key, field] of Object.entries(this.fields)) {
        const current = fn.scaling[key];
        field.input.placeholder = current === null || current === undefined ? 'no limit' : String(current);
      }
      this.publicAccess.checked = fn.public;
      this.tokenAccess.checked = !fn.public;
    } catch (error) {
      if (!(error instanceof ServiceError && error.status === 404)) {
        this.existing.textContent = `Could not look up ${name}: ${(error as Error).message}`;
      }
    }
  }

  private async deploy(): Promise<void> {
    const request = this.request();
    if (!this.name.checkValidity() || !request.name) {
      this.showError(`Invalid name: ${this.name.title}.`);
      return;
    }
    this.submit.disabled = true;
    setProgress(this.progress, 'Capturing and deploying…');
    this.outcome.replaceChildren();
    try {
      const outcome = await deployInKernel(this.panel, request);
      if (outcome.ok) {
        this.showDeployed(outcome.data);
      } else {
        this.showError(outcome.error);
      }
    } catch (error) {
      this.showError((error as Error).message || String(error));
    } finally {
      this.submit.disabled = false;
      this.progress.replaceChildren();
    }
  }

  private showError(message: string): void {
    this.outcome.replaceChildren(alertNode(message, 'stratolab-deploy-error'));
  }

  private showDeployed(fn: IFunction): void {
    const nodes: HTMLElement[] = [
      el('div', 'jp-Stratolab-success', `Deployed ${fn.name}, version ${fn.version}.`, 'stratolab-deploy-success'),
      el('div', 'jp-Stratolab-fieldLabel', 'Endpoint'),
      copyable(fn.url, 'stratolab-deploy-url')
    ];
    if (fn.key) {
      nodes.push(
        el('div', 'jp-Stratolab-fieldLabel', 'Function key'),
        copyable(fn.key, 'stratolab-deploy-key'),
        el(
          'div',
          'jp-Stratolab-note jp-Stratolab-keyNote',
          'Shown once: store it now. Callers send it as the X-Function-Key header; it stays the same for later versions.'
        )
      );
    }
    nodes.push(
      el('div', 'jp-Stratolab-fieldLabel', 'Call it'),
      copyable(curlExample(fn, '[...]'), 'stratolab-deploy-curl', true),
      el('div', 'jp-Stratolab-fieldLabel', 'Try it'),
      createTryBox(fn.owner, fn.name)
    );
    this.triggers?.dispose();
    this.triggers = new TriggersView({ fn: fn.name, testId: 'stratolab-deploy-triggers' });
    nodes.push(this.triggers.node);
    this.outcome.replaceChildren(...nodes);
  }

  dispose(): void {
    this.triggers?.dispose();
    super.dispose();
  }

  private readonly source: string;
  private readonly handler: HTMLSelectElement;
  private readonly name: HTMLInputElement;
  private readonly existing: HTMLElement;
  private readonly fields: Record<string, IField>;
  private readonly tokenAccess: HTMLInputElement;
  private readonly publicAccess: HTMLInputElement;
  private readonly submit: HTMLButtonElement;
  private readonly progress: HTMLElement;
  private readonly outcome: HTMLElement;
  /** The deployed function's triggers (added from here, as from its panel). */
  private triggers: TriggersView | null = null;
}

/**
 * A dialog that stays open after Deploy: its only dialog button is Close, and Enter in a field of
 * the form deploys instead of closing it.
 */
class DeployDialog extends Dialog<void> {
  constructor(
    private readonly form: DeployForm,
    title: string
  ) {
    super({ title, body: form, buttons: [Dialog.cancelButton({ label: 'Close' })], hasClose: true });
    this.addClass('jp-Stratolab-deployDialog');
  }

  handleEvent(event: Event): void {
    const input = enterInField(event, this.form.node);
    if (!input) {
      super.handleEvent(event);
    } else if (input.dataset.testid === 'stratolab-deploy-name' || input.type === 'number') {
      this.form.submitOnEnter();
    }
  }
}

/**
 * Open the deploy dialog for the active cell of `panel`.
 */
export async function openDeployDialog(panel: NotebookPanel, onDeployed?: () => void): Promise<void> {
  const cell = panel.content.activeCell;
  if (!cell || cell.model.type !== 'code') {
    return;
  }
  const form = new DeployForm(panel, cell.model.sharedModel.getSource());
  const dialog = new DeployDialog(form, 'Deploy as function');
  await dialog.launch();
  onDeployed?.();
}
