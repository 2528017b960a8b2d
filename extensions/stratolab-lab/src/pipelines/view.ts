/**
 * A `.pipeline` file opened as a graph: the toolbar (Run with the pipeline's parameters, Stop, Resume
 * from the failed step, Validate, the runs of this file newest first), the graph (graphView.ts) with
 * the selected run's step states, and the selected step's details (state, duration, branch, records,
 * error, and its executed notebook).
 *
 * The file is read from the document's model (so an edit made in "Open With > Editor" is redrawn); the
 * run's steps are polled every 1.5 s while the run is queued or running, the runs list every 10 s,
 * and only while the view is shown.
 */
import { Dialog, showDialog, showErrorMessage } from '@jupyterlab/apputils';
import { DocumentRegistry } from '@jupyterlab/docregistry';
import { Contents } from '@jupyterlab/services';
import { Widget } from '@lumino/widgets';

import { ensureDirectory } from '../jobs/notebooks';
import { formatTime } from '../jobs/format';
import { alertNode, button, el, FormBody, Poller, selectInput, setOptions, textField } from '../ui';
import {
  getRun,
  IPipelineRun,
  IPipelineStep,
  IValidationError,
  listRuns,
  resumeRun,
  startRun,
  stepOutput,
  stopRun,
  validatePipeline
} from './api';
import {
  errorsByNode,
  errorText,
  FINISHED_RUN_STATES,
  isActive,
  opInfo,
  parameterText,
  parseParameter,
  resumeFrom,
  shortDuration,
  shortValue,
  stepDuration,
  stepStyle
} from './format';
import { GraphView } from './graphView';
import { IPipelineGraph, PipelineFormatError, readPipeline } from './graph';

/** What the view needs from the lab: the contents manager and how to open a file. */
export interface IPipelineViewOptions {
  contents: Contents.IManager;
  openPath: (path: string) => Promise<unknown>;
}

const TEST_ID = 'stratolab-pipeline';

export class PipelineView extends Widget {
  constructor(
    private readonly context: DocumentRegistry.Context,
    private readonly options: IPipelineViewOptions
  ) {
    super();
    this.addClass('jp-Stratolab-pipeline');
    this.node.dataset.testid = TEST_ID;
    this.graphView = new GraphView({
      testId: TEST_ID,
      onSelect: id => this.selectStep(id),
      onOpen: id => void this.openStep(id)
    });

    const bar = el('div', 'jp-Stratolab-pipelineToolbar');
    this.runButton = button('▶ Run', () => void this.startRun(), `${TEST_ID}-run`, 'Run this pipeline (saved first)');
    this.stopButton = button('■ Stop', () => void this.stop(), `${TEST_ID}-stop`, 'Stop the selected run');
    this.resumeButton = button(
      '↻ Resume',
      () => void this.resume(),
      `${TEST_ID}-resume`,
      'Run again from the failed step, keeping what succeeded'
    );
    this.validateButton = button(
      '✓ Validate',
      () => void this.validate(true),
      `${TEST_ID}-validate`,
      'Check the pipeline'
    );
    this.runsSelect = selectInput(`${TEST_ID}-runs`, [], '');
    this.runsSelect.title = 'Runs of this pipeline, newest first';
    this.runsSelect.addEventListener('change', () => this.selectRun(this.runsSelect.value || null));
    this.stateNode = el('span', 'jp-Stratolab-pipelineRunState', '', `${TEST_ID}-run-state`);
    bar.append(
      this.runButton,
      this.stopButton,
      this.resumeButton,
      this.validateButton,
      el('span', 'jp-Stratolab-pipelineSpacer'),
      el('span', 'jp-Stratolab-fieldLabel', 'Run'),
      this.runsSelect,
      this.stateNode
    );
    this.errorNode = el('div', 'jp-Stratolab-pipelineErrors', undefined, `${TEST_ID}-errors`);
    this.validationNode = el('div', 'jp-Stratolab-pipelineValidation', undefined, `${TEST_ID}-validation`);
    const canvas = el('div', 'jp-Stratolab-pipelineCanvas');
    canvas.append(this.graphView.node);
    this.detailNode = el('div', 'jp-Stratolab-pipelineDetail', undefined, `${TEST_ID}-detail`);
    this.node.append(bar, this.errorNode, this.validationNode, canvas, this.detailNode);
    this.updateButtons();

    void context.ready.then(() => {
      this.readModel();
      context.model.contentChanged.connect(() => this.scheduleRead());
      void this.refreshRuns(true);
      void this.validate(false);
      this.poller.start();
    });
  }

  /** The run shown (null: none). */
  get run(): IPipelineRun | null {
    return this._run;
  }

  /** Show the run `id` (a run of this file: from the Pipelines section's Open). */
  selectRun(id: string | number | null): void {
    this.selectedRunId = id === null ? null : String(id);
    this.runsSelect.value = this.selectedRunId ?? '';
    this._run = this.runs.find(r => String(r.id) === this.selectedRunId) ?? null;
    this.render();
    if (this.selectedRunId !== null) {
      void this.refreshRun();
    }
  }

  dispose(): void {
    this.poller.stop();
    window.clearTimeout(this.readTimer);
    super.dispose();
  }

  // --- the file ----------------------------------------------------------------------------------------

  private scheduleRead(): void {
    window.clearTimeout(this.readTimer);
    this.readTimer = window.setTimeout(() => this.readModel(), 300);
  }

  private readModel(): void {
    try {
      this.graph = readPipeline(this.context.model.toString());
      this.fileError = '';
    } catch (error) {
      // the last good graph stays drawn under the message
      this.fileError = error instanceof PipelineFormatError ? error.message : String(error);
    }
    this.render();
  }

  private async saveIfDirty(): Promise<void> {
    if (this.context.model.dirty) {
      await this.context.save();
    }
  }

  // --- runs --------------------------------------------------------------------------------------------

  private async refreshAll(): Promise<void> {
    await this.refreshRuns(false);
    if (isActive(this._run)) {
      await this.refreshRun();
    }
  }

  /** Reload the runs list; `selectLatest`: show the newest run (on open). */
  private async refreshRuns(selectLatest: boolean): Promise<void> {
    try {
      const runs = await listRuns(this.context.path);
      this.serviceError = '';
      this.runs = runs;
      if (selectLatest && this.selectedRunId === null && runs.length) {
        this.selectedRunId = String(runs[0].id);
      }
      const listed = runs.find(r => String(r.id) === this.selectedRunId);
      if (listed && !isActive(this._run)) {
        this._run = listed;
      } else if (this._run === null && listed) {
        this._run = listed;
      }
      if (this._run && (listed === undefined || isActive(listed) !== isActive(this._run))) {
        await this.refreshRun();
        return;
      }
    } catch (error) {
      this.serviceError = (error as Error).message || String(error);
    }
    this.render();
  }

  private async refreshRun(): Promise<void> {
    const id = this.selectedRunId;
    if (id === null) {
      return;
    }
    try {
      const run = await getRun(id);
      if (this.selectedRunId !== id || this.isDisposed) {
        return;
      }
      this._run = run;
      this.runs = this.runs.some(r => String(r.id) === id)
        ? this.runs.map(r => (String(r.id) === id ? run : r))
        : [run, ...this.runs];
      this.serviceError = '';
    } catch (error) {
      this.serviceError = (error as Error).message || String(error);
    }
    this.render();
  }

  private async startRun(): Promise<void> {
    if (!this.graph) {
      await showErrorMessage('Run pipeline', this.fileError || 'The file is not loaded yet.');
      return;
    }
    const parameters = await this.askParameters(this.graph);
    if (parameters === null) {
      return;
    }
    await this.act('Run pipeline', async () => {
      await this.saveIfDirty();
      const run = await startRun(this.context.path, parameters);
      this.runs = [run, ...this.runs.filter(r => String(r.id) !== String(run.id))];
      this.selectedStep = null;
      this.selectRun(run.id);
    });
  }

  /** The Run dialog when the pipeline has parameters (null: cancelled); `{}` without asking otherwise. */
  private async askParameters(graph: IPipelineGraph): Promise<Record<string, unknown> | null> {
    if (!graph.parameters.length) {
      return {};
    }
    const form = el('div', 'jp-Stratolab-form', undefined, `${TEST_ID}-run-form`);
    form.append(el('p', 'jp-Stratolab-note', 'Pipeline parameters (each step gets them as papermill parameters):'));
    const fields = graph.parameters.map(p => {
      const field = textField(
        p.required ? `${p.name} *` : p.name,
        `${TEST_ID}-param-${p.name}`,
        parameterText(p.value),
        p.description
      );
      if (p.description) {
        field.row.title = p.description;
      }
      form.append(field.row);
      return { p, input: field.input };
    });
    for (;;) {
      const result = await showDialog({
        title: `Run ${graph.name}`,
        body: new FormBody(form, () => fields.map(f => [f.p, f.input.value] as const)),
        buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Run' })]
      });
      if (!result.button.accept || !result.value) {
        return null;
      }
      try {
        const out: Record<string, unknown> = {};
        for (const [p, value] of result.value) {
          if (p.required && !value.trim()) {
            throw new Error(`${p.name}: a value is required`);
          }
          out[p.name] = parseParameter(p.name, value, p.type, p.value);
        }
        return out;
      } catch (error) {
        await showErrorMessage('Run pipeline', (error as Error).message);
      }
    }
  }

  private async stop(): Promise<void> {
    const run = this._run;
    if (run) {
      await this.act('Stop pipeline run', async () => {
        this._run = await stopRun(run.id);
      });
    }
  }

  private async resume(fromStep?: string): Promise<void> {
    const run = this._run;
    if (run) {
      await this.act('Resume pipeline run', async () => {
        await this.saveIfDirty();
        const next = await resumeRun(run.id, fromStep ?? resumeFrom(run) ?? undefined);
        this.runs = [next, ...this.runs];
        this.selectRun(next.id);
      });
    }
  }

  /** Check the file with the service; `explicit`: the button (says "valid" too, and shows any failure). */
  private async validate(explicit: boolean): Promise<void> {
    try {
      if (explicit) {
        await this.saveIfDirty();
      }
      const answer = await validatePipeline(this.context.path);
      this.validationErrors = answer.valid ? [] : answer.errors;
      this.validated = explicit ? (answer.valid ? 'valid' : 'invalid') : answer.valid ? '' : 'invalid';
    } catch (error) {
      if (explicit) {
        this.validationErrors = [];
        this.validated = '';
        await showErrorMessage('Validate pipeline', (error as Error).message || String(error));
      }
    }
    this.render();
  }

  /** Run an action; its error in a dialog; then redraw. */
  private async act(title: string, work: () => Promise<void>): Promise<void> {
    this.busy = true;
    this.updateButtons();
    try {
      await work();
    } catch (error) {
      await showErrorMessage(title, (error as Error).message || String(error));
    } finally {
      this.busy = false;
      this.render();
    }
  }

  // --- steps -------------------------------------------------------------------------------------------

  private selectStep(nodeId: string): void {
    this.selectedStep = nodeId;
    this.render();
  }

  private stepOf(nodeId: string): IPipelineStep | undefined {
    return this._run?.steps.find(s => s.id === nodeId);
  }

  /** Open a notebook step's executed notebook: copied to `stratolab-runs/pipelines/<pipeline>/run-<id>-<step>.ipynb`. */
  private async openStep(nodeId: string): Promise<void> {
    this.selectStep(nodeId);
    const run = this._run;
    const step = this.stepOf(nodeId);
    if (!run || !step || !step.run_id) {
      return;
    }
    await this.act('Open step notebook', async () => {
      const folder = `stratolab-runs/pipelines/${safeSegment(run.pipeline || this.graph?.name || 'pipeline')}`;
      const path = `${folder}/run-${safeSegment(String(run.id))}-${safeSegment(step.name)}.ipynb`;
      let exists = false;
      try {
        await this.options.contents.get(path, { content: false });
        exists = true;
      } catch {
        // not copied yet
      }
      // a finished step's notebook changes no more: a copy made earlier (maybe edited) stays
      if (!exists || !FINISHED_STEP_STATES.includes(step.state)) {
        const nb = await stepOutput(run.id, step.name);
        await ensureDirectory(this.options.contents, folder);
        await this.options.contents.save(path, { type: 'notebook', format: 'json', content: nb });
      }
      await this.options.openPath(path);
    });
  }

  // --- drawing -----------------------------------------------------------------------------------------

  private render(): void {
    if (this.isDisposed) {
      return;
    }
    const run = this._run;
    // the runs dropdown
    const options: [string, string][] = [['', this.runs.length ? 'No run shown' : 'No runs yet']];
    for (const r of this.runs) {
      options.push([String(r.id), `#${r.id} ${r.state} · ${formatTime(r.started_at ?? r.created_at)}`]);
    }
    setOptions(this.runsSelect, options);
    this.runsSelect.value = this.selectedRunId ?? '';
    this.stateNode.textContent = run
      ? `${run.state}${run.duration !== null && run.duration !== undefined ? ` · ${shortDuration(run.duration)}` : ''}`
      : '';
    this.stateNode.className = `jp-Stratolab-pipelineRunState ${stepStyle(run?.state).className}`;
    this.stateNode.dataset.state = run?.state ?? '';

    // errors: the file's, the service's, the run's
    const alerts: HTMLElement[] = [];
    if (this.fileError) {
      alerts.push(alertNode(this.fileError, `${TEST_ID}-file-error`));
    }
    if (this.serviceError) {
      alerts.push(alertNode(this.serviceError, `${TEST_ID}-service-error`));
    }
    if (run?.error) {
      alerts.push(alertNode(`Run #${run.id}: ${run.error}`, `${TEST_ID}-run-error`));
    }
    this.errorNode.replaceChildren(...alerts);

    // validation
    const graph = this.graph;
    const errors = graph ? errorsByNode(this.validationErrors, graph.nodes) : new Map<string, IValidationError[]>();
    if (this.validated === 'valid') {
      this.validationNode.replaceChildren(el('p', 'jp-Stratolab-note jp-Stratolab-ok', 'The pipeline is valid.'));
    } else if (this.validationErrors.length) {
      const items = el('ul', 'jp-Stratolab-pipelineErrorList');
      for (const e of this.validationErrors) {
        const where = e.node ? `${e.node}: ` : '';
        items.append(el('li', '', `${where}${errorText(e)}`));
      }
      this.validationNode.replaceChildren(
        alertNode(
          `The pipeline has ${this.validationErrors.length === 1 ? 'an error' : `${this.validationErrors.length} errors`}:`,
          `${TEST_ID}-invalid`
        ),
        items
      );
    } else {
      this.validationNode.replaceChildren();
    }

    if (graph) {
      const steps = new Map((run?.steps ?? []).map(s => [s.id, s]));
      this.graphView.render(graph, { steps, errors, selected: this.selectedStep });
    }
    this.renderDetail(errors);
    this.updateButtons();
  }

  private renderDetail(errors: Map<string, IValidationError[]>): void {
    const node = this.graph?.nodes.find(n => n.id === this.selectedStep);
    if (!node) {
      this.detailNode.replaceChildren(
        el(
          'p',
          'jp-Stratolab-note',
          this.graph
            ? 'Click a step to see its details; double-click a notebook step to open its executed notebook.'
            : ''
        )
      );
      return;
    }
    const step = this.stepOf(node.id);
    const info = opInfo(node.op);
    const title = el('div', 'jp-Stratolab-subTitle', `${node.label} · ${info.kind}`, `${TEST_ID}-detail-title`);
    const list = el('dl', 'jp-Stratolab-facts');
    const fact = (label: string, value: string, key: string) =>
      list.append(
        el('dt', 'jp-Stratolab-factLabel', label),
        el('dd', 'jp-Stratolab-fact', value, `${TEST_ID}-detail-${key}`)
      );
    fact('Step', node.name, 'name');
    if (node.filename) {
      fact('File', node.filename, 'file');
    }
    if (step) {
      fact('State', step.state, 'state');
      fact('Duration', shortDuration(stepDuration(step)) || '–', 'duration');
      if (step.branch === true || step.branch === false) {
        fact('Branch', step.branch ? 'true' : 'false', 'branch');
      }
      if (step.function_version !== null && step.function_version !== undefined) {
        fact('Version', `v${step.function_version}`, 'version');
      }
      if (step.rollout_id !== null && step.rollout_id !== undefined) {
        fact('Rollout', String(step.rollout_id), 'rollout');
      }
      for (const key of Object.keys(step.records ?? {}).sort()) {
        fact(key, shortValue((step.records ?? {})[key], 80), `record-${key}`);
      }
    }
    const parts: HTMLElement[] = [title, list];
    if (step?.error) {
      parts.push(alertNode(step.error, `${TEST_ID}-detail-error`));
    }
    for (const e of errors.get(node.id) ?? []) {
      parts.push(alertNode(errorText(e), `${TEST_ID}-detail-invalid`));
    }
    const actions = el('div', 'jp-Stratolab-actions');
    if (step?.run_id) {
      actions.append(
        button(
          'Open notebook',
          () => void this.openStep(node.id),
          `${TEST_ID}-detail-open`,
          'Open the executed notebook of this step'
        )
      );
    }
    if (this._run && FINISHED_RUN_STATES.includes(this._run.state) && this._run.state !== 'succeeded' && step) {
      actions.append(
        button(
          'Resume from here',
          () => void this.resume(step.name),
          `${TEST_ID}-detail-resume`,
          'Run again from this step'
        )
      );
    }
    if (actions.childElementCount) {
      parts.push(actions);
    }
    if (!step && this._run) {
      parts.push(el('p', 'jp-Stratolab-note', 'This step is not in the run shown (the file changed since).'));
    }
    this.detailNode.replaceChildren(...parts);
  }

  private updateButtons(): void {
    const run = this._run;
    this.runButton.disabled = this.busy || !this.graph;
    this.stopButton.disabled = this.busy || !isActive(run);
    this.resumeButton.disabled = this.busy || !run || !['failed', 'stopped'].includes(run.state);
    this.validateButton.disabled = this.busy;
  }

  private graph: IPipelineGraph | null = null;
  private fileError = '';
  private serviceError = '';
  private runs: IPipelineRun[] = [];
  private _run: IPipelineRun | null = null;
  private selectedRunId: string | null = null;
  private selectedStep: string | null = null;
  private validationErrors: IValidationError[] = [];
  private validated: '' | 'valid' | 'invalid' = '';
  private busy = false;
  private readTimer: number | undefined;
  private readonly graphView: GraphView;
  private readonly runButton: HTMLButtonElement;
  private readonly stopButton: HTMLButtonElement;
  private readonly resumeButton: HTMLButtonElement;
  private readonly validateButton: HTMLButtonElement;
  private readonly runsSelect: HTMLSelectElement;
  private readonly stateNode: HTMLElement;
  private readonly errorNode: HTMLElement;
  private readonly validationNode: HTMLElement;
  private readonly detailNode: HTMLElement;
  private readonly poller = new Poller(
    this,
    () => this.refreshAll(),
    () => isActive(this._run),
    1500,
    10000
  );
}

const FINISHED_STEP_STATES = ['succeeded', 'failed', 'cached', 'stopped', 'skipped'];

/** A name made safe as one path segment. */
function safeSegment(name: string): string {
  return name.replace(/[/\\]/g, '-').replace(/^\.+/, '').trim() || 'pipeline';
}
