/**
 * "Tune…": the dialog that starts an AutoML search over a notebook's parameters. The scheduler
 * proposes a starting space from the notebook's `parameters` cell (`POST api/automl/propose`); the
 * user picks what to search and how, names the objective the notebook records, sets the budget and
 * the environment every trial runs in (as the Schedule dialog does); "Start" sends it
 * (`POST api/automl`) and closes only once the service said yes.
 */
import { Dialog } from '@jupyterlab/apputils';
import { Contents } from '@jupyterlab/services';

import { ServiceError } from '../api/client';
import { INotebookParameter } from '../jobs/api';
import { defaultScheduleName, formatParameterValue } from '../jobs/scheduleForm';
import { askParameters, environmentSelect } from '../jobs/fields';
import { notebookContent, readNotebookContent } from '../jobs/notebooks';
import { FormDialog, SubmittingForm } from '../ui/dialogs';
import { alertNode, el } from '../ui/dom';
import {
  checkbox,
  details,
  fieldRow,
  IField,
  numberField,
  selectInput,
  setOptions,
  smallInput,
  textField
} from '../ui/fields';
import {
  IAutoMLJob,
  IAutoMLRequest,
  ISearchSpace,
  ISpaceItem,
  listAutoMLJobs,
  proposeSpace,
  startAutoMLJob
} from './api';
import { formatChoices, parseChoices, Problems, readBudget, readSpaceItem, startingItem, uniqueName } from './space';

export const inline = (label: string, input: HTMLElement) => fieldRow(label, input, 'jp-Stratolab-inline');

/**
 * A parameter of the notebook: whether it is searched, its type, range or choices, and the
 * categorical choice it depends on.
 */
class SpaceRow {
  constructor(
    readonly parameter: INotebookParameter,
    proposed: ISpaceItem | undefined,
    private readonly changed: () => void
  ) {
    const name = parameter.name;
    const item = startingItem(parameter, proposed);
    const id = (what: string) => `stratolab-tune-${what}-${name}`;
    this.node = el('div', 'jp-Stratolab-spaceRow', undefined, id('param'));
    this.node.dataset.param = name;
    this.node.dataset.field = `space.${name}`;

    const head = el('div', 'jp-Stratolab-spaceHead');
    this.search = checkbox('search', id('search'), proposed !== undefined);
    this.search.input.title = `Search ${name} (unticked, it keeps the notebook’s value)`;
    this.type = selectInput(
      id('type'),
      SPACE_TYPES.map(t => [t, t] as const),
      item.type
    );
    this.type.classList.add('jp-Stratolab-smallInput');
    this.type.setAttribute('aria-label', `Type of ${name}`);
    const defaultText = formatParameterValue(parameter.default, parameter.type) || '""';
    head.append(
      this.search.row,
      el('span', 'jp-Stratolab-spaceName', name),
      el(
        'span',
        'jp-Stratolab-note',
        `${parameter.type} · default ${defaultText}${parameter.help ? ` · ${parameter.help}` : ''}`
      ),
      this.type
    );

    const num = (v: number | undefined) => (v === undefined || v === null ? '' : String(v));
    this.low = smallInput(id('low'), 'number', num(item.low));
    this.high = smallInput(id('high'), 'number', num(item.high));
    this.step = smallInput(id('step'), 'number', num(item.step), 'none');
    this.log = checkbox('log', id('log'), !!item.log);
    this.numbers = el('div', 'jp-Stratolab-spaceLine');
    this.numbers.append(inline('low', this.low), inline('high', this.high), this.log.row, inline('step', this.step));

    this.choices = smallInput(id('choices'), 'text', formatChoices(item.choices ?? []), 'a, b, 3, true');
    this.choices.title = 'Comma-separated; each read as JSON where it parses (3, true, null, "x"), else as text';
    this.choicesLine = el('div', 'jp-Stratolab-spaceLine');
    this.choicesLine.append(inline('choices', this.choices));

    this.parent = selectInput(id('when-param'), [], '');
    this.parent.classList.add('jp-Stratolab-smallInput');
    this.parent.setAttribute('aria-label', `Condition of ${name}`);
    this.when = smallInput(id('when-values'), 'text', '', 'value(s), comma-separated');
    this.condition = el('div', 'jp-Stratolab-spaceLine');
    this.condition.append(inline('only when', this.parent), el('span', '', '='), this.when);
    this.pendingParent = item.when ? Object.keys(item.when)[0] : '';
    if (item.when) {
      this.when.value = formatChoices(Object.values(item.when)[0] ?? []);
    }

    this.error = alertNode('', `stratolab-tune-error-space-${name}`, 'jp-Stratolab-fieldError');
    const body = el('div', 'jp-Stratolab-spaceBody');
    body.append(this.numbers, this.choicesLine, this.condition);
    this.node.append(head, body, this.error);

    this.search.input.addEventListener('change', () => this.update());
    this.type.addEventListener('change', () => this.update());
    this.parent.addEventListener('change', () => this.update(false));
    this.choices.addEventListener('change', () => this.changed());
    this.update(false);
  }

  /** The inputs of the fields the service names (`space.NAME.low`...), to mark the one refused. */
  get inputs(): Record<string, HTMLElement> {
    const f = `space.${this.parameter.name}`;
    return {
      [`${f}.type`]: this.type,
      [`${f}.low`]: this.low,
      [`${f}.high`]: this.high,
      [`${f}.log`]: this.log.input,
      [`${f}.step`]: this.step,
      [`${f}.choices`]: this.choices,
      [`${f}.when`]: this.when
    };
  }

  get searched(): boolean {
    return this.search.input.checked;
  }

  get isCategorical(): boolean {
    return this.type.value === 'categorical';
  }

  /** The choices typed (for the condition of another row). */
  get choiceValues(): unknown[] {
    return parseChoices(this.choices.value);
  }

  /** The categorical parameters this one may depend on (searched, without a condition themselves). */
  setParents(names: string[]): void {
    const wanted = this.parent.value || this.pendingParent;
    const options = ['', ...names.filter(n => n !== this.parameter.name)];
    setOptions(
      this.parent,
      options.map(n => [n, n || 'always'] as const)
    );
    this.parent.value = options.includes(wanted) ? wanted : '';
    // Without a searched categorical parameter to depend on, there is no condition to set.
    this.condition.hidden = options.length === 1;
    if (this.parent.value === wanted) {
      this.pendingParent = '';
    }
    this.when.disabled = !this.searched || !this.parent.value;
  }

  /** The space item, or what is wrong with it (by field). */
  read(): { item: ISpaceItem | null; problems: Problems } {
    return readSpaceItem(this.parameter.name, {
      type: this.type.value as ISpaceItem['type'],
      low: this.low.value,
      high: this.high.value,
      step: this.step.value,
      log: this.log.input.checked,
      choices: this.choices.value,
      parent: this.parent.value,
      when: this.when.value
    });
  }

  /** Show the fields of the type; a row that is not searched is dimmed. */
  private update(notify = true): void {
    const on = this.searched;
    const categorical = this.isCategorical;
    this.node.classList.toggle('jp-mod-off', !on);
    this.numbers.hidden = categorical;
    this.choicesLine.hidden = !categorical;
    for (const input of [this.type, this.low, this.high, this.step, this.log.input, this.choices, this.parent]) {
      input.disabled = !on;
    }
    this.when.disabled = !on || !this.parent.value;
    if (notify) {
      this.changed();
    }
  }

  readonly node: HTMLElement;
  readonly error: HTMLElement;
  private readonly search: IField;
  private readonly type: HTMLSelectElement;
  private readonly low: HTMLInputElement;
  private readonly high: HTMLInputElement;
  private readonly step: HTMLInputElement;
  private readonly log: IField;
  private readonly numbers: HTMLElement;
  private readonly choices: HTMLInputElement;
  private readonly choicesLine: HTMLElement;
  private readonly parent: HTMLSelectElement;
  private readonly when: HTMLInputElement;
  private readonly condition: HTMLElement;
  /** The condition's parameter before the options list it (it comes with the proposal). */
  private pendingParent: string;
}

export interface ITuneDialogOptions {
  contents: Contents.IManager;
  /** The notebook's contents path. */
  path: string;
  /** Called before the notebook is read (saves it when it is open with unsaved changes). */
  beforeRead?: (path: string) => Promise<void>;
  /** Called once the search was created. */
  onStarted?: (job: IAutoMLJob) => void;
}

type Action = 'start';

const SPACE_TYPES = ['float', 'int', 'categorical'] as const;

/**
 * The dialog's body: the space, the objective and the budget, the errors next to their fields.
 */
export class TuneForm extends SubmittingForm<Action> {
  constructor(private readonly options: ITuneDialogOptions) {
    super({
      className: 'jp-Stratolab-scheduleForm jp-Stratolab-tuneForm',
      testId: 'stratolab-tune-form',
      errorTestId: 'stratolab-tune-error',
      errorSeparators: /[._]/g,
      progressTestId: 'stratolab-tune-progress'
    });

    const form = el('div', 'jp-Stratolab-form');
    form.append(el('div', 'jp-Stratolab-note', `Notebook: ${options.path}`, 'stratolab-tune-notebook'));
    this.baseName = defaultScheduleName(options.path);
    this.name = textField('Name', 'stratolab-tune-name', this.baseName);
    this.name.input.addEventListener('input', () => (this.nameEdited = true));
    form.append(this.errors.group(this.name.row, 'name'));

    const space = details('Search space', 'stratolab-tune-space', true);
    this.spaceBody = space.body;
    this.spaceBody.append(el('p', 'jp-Stratolab-loading', 'Reading the notebook’s parameters…'));
    space.body.before(this.errors.group(el('span', ''), 'space'));
    form.append(space.details);

    this.metric = textField('Objective metric', 'stratolab-tune-metric', '', 'val_accuracy');
    this.direction = selectInput(
      'stratolab-tune-direction',
      [
        ['maximize', 'maximize'],
        ['minimize', 'minimize']
      ],
      'maximize'
    );
    form.append(
      this.errors.group(
        this.metric.row,
        'metric',
        el(
          'div',
          'jp-Stratolab-note jp-Stratolab-paramDefault',
          'What the notebook records with stratolab.record("name", value), e.g. val_accuracy.'
        )
      ),
      this.errors.group(fieldRow('Direction', this.direction), 'direction')
    );

    this.trials = numberField('Trials', 20, { min: 1, testId: 'stratolab-tune-trials' });
    this.parallel = numberField('Parallel trials', 2, { min: 1, testId: 'stratolab-tune-parallel' });
    form.append(this.errors.group(this.trials.row, 'trials'), this.errors.group(this.parallel.row, 'parallel'));
    this.profile = environmentSelect('stratolab-tune-profile', '', this.errors, 'per trial');
    form.append(
      this.errors.group(
        fieldRow('Environment', this.profile),
        'profile',
        el(
          'div',
          'jp-Stratolab-note jp-Stratolab-paramDefault',
          'Every trial runs in it. On a GPU environment each trial gets its own GPUs: no more run at once than there are.'
        )
      )
    );

    const limits = details('Limits', 'stratolab-tune-limits');
    this.timeout = numberField('Time limit (s)', null, {
      min: 1,
      placeholder: 'none',
      testId: 'stratolab-tune-timeout'
    });
    this.maxFailed = numberField('Failed trials tolerated', null, {
      min: 0,
      placeholder: 'max(3, trials ÷ 4)',
      testId: 'stratolab-tune-max-failed'
    });
    this.trialTimeout = numberField('Trial timeout (s)', null, {
      min: 1,
      placeholder: 'none',
      testId: 'stratolab-tune-trial-timeout'
    });
    limits.body.append(
      this.errors.group(this.timeout.row, 'timeout'),
      this.errors.group(this.maxFailed.row, 'max_failed'),
      this.errors.group(this.trialTimeout.row, 'trial_timeout')
    );
    form.append(limits.details);

    const algorithm = details('Algorithm', 'stratolab-tune-algorithm-settings');
    this.algorithm = selectInput(
      'stratolab-tune-algorithm',
      [
        ['tpe', 'TPE (Bayesian, default)'],
        ['random', 'Random'],
        ['cmaes', 'CMA-ES'],
        ['grid', 'Grid (choices and int ranges; steps for floats)']
      ],
      'tpe'
    );
    this.pruner = selectInput(
      'stratolab-tune-pruner',
      [
        ['none', 'None'],
        ['median', 'Median'],
        ['successive_halving', 'Successive halving'],
        ['hyperband', 'Hyperband']
      ],
      'none'
    );
    this.seed = numberField('Seed', null, { min: 0, placeholder: 'random', testId: 'stratolab-tune-seed' });
    algorithm.body.append(
      this.errors.group(fieldRow('Sampler', this.algorithm), 'algorithm'),
      this.errors.group(
        fieldRow('Pruner', this.pruner),
        'pruner',
        el(
          'div',
          'jp-Stratolab-note jp-Stratolab-paramDefault',
          'Stops unpromising trials early: needs stratolab.report(step, value) in the notebook.'
        )
      ),
      this.errors.group(this.seed.row, 'seed')
    );
    form.append(algorithm.details);

    this.setForm(form);

    // Editing a field takes back what was said about it.
    const clear = (event: Event) => {
      const target = event.target as HTMLElement;
      const group = target.closest?.('[data-field]') as HTMLElement | null;
      const field = group?.dataset.field;
      if (field) {
        this.errors.clear(field);
        if (field.startsWith('space.')) {
          this.errors.clear(field.split('.').slice(0, 2).join('.'));
        }
      }
      target.classList?.remove('jp-mod-invalid');
    };
    this.node.addEventListener('input', clear);
    this.node.addEventListener('change', clear);

    void this.load();
  }

  /** The search this dialog started. */
  job: IAutoMLJob | null = null;

  async submit(_action: Action): Promise<boolean> {
    this.errors.clearAll();
    const request = await this.read();
    if (!request) {
      return false;
    }
    this.setProgress('Starting the search…');
    try {
      this.job = await startAutoMLJob(request);
      this.options.onStarted?.(this.job);
      return true;
    } catch (error) {
      const field = error instanceof ServiceError ? error.field : null;
      this.errors.show(field ?? '', (error as Error).message || String(error));
      return false;
    } finally {
      this.setProgress('');
    }
  }

  /** The request for the form's values; null (and the errors shown) when something is wrong. */
  private async read(): Promise<IAutoMLRequest | null> {
    let valid = true;
    const fail = (field: string, message: string) => {
      this.errors.show(field, message);
      valid = false;
    };
    const name = this.name.input.value.trim();
    if (!name) {
      fail('name', 'Give the search a name.');
    }
    const space: ISearchSpace = {};
    for (const r of this.rows.filter(r => r.searched)) {
      const { item, problems } = r.read();
      for (const [field, message] of problems) {
        fail(field, message);
      }
      if (item) {
        space[r.parameter.name] = item;
      }
    }
    if (this.rows.length && !this.rows.some(r => r.searched)) {
      fail('space', 'Tick “search” for at least one parameter.');
    }
    const metric = this.metric.input.value.trim();
    if (!metric) {
      fail('metric', 'Name the metric to optimize: what the notebook records with stratolab.record(name, value).');
    }
    const { numbers, problems } = readBudget({
      trials: this.trials.input.value,
      parallel: this.parallel.input.value,
      timeout: this.timeout.input.value,
      max_failed: this.maxFailed.input.value,
      trial_timeout: this.trialTimeout.input.value,
      seed: this.seed.input.value
    });
    for (const [field, message] of problems) {
      fail(field, message);
    }
    if (!valid) {
      return null;
    }
    // `profile` is left out for the default environment
    const request: IAutoMLRequest = {
      notebook: this.options.path,
      name,
      metric,
      direction: this.direction.value as IAutoMLRequest['direction'],
      trials: numbers.trials!,
      parallel: numbers.parallel!,
      algorithm: this.algorithm.value as IAutoMLRequest['algorithm'],
      pruner: this.pruner.value as IAutoMLRequest['pruner']
    };
    if (this.rows.length) {
      request.space = space;
    }
    if (this.profile.value) {
      request.profile = this.profile.value;
    }
    // Left out rather than null: the service then applies its defaults.
    for (const key of ['timeout', 'max_failed', 'trial_timeout', 'seed'] as const) {
      if (numbers[key] !== undefined) {
        request[key] = numbers[key];
      }
    }
    return { ...request, ...(await notebookContent(this.options)) };
  }

  /** The proposed space, one row per parameter; and a name no other search has. */
  private async load(): Promise<void> {
    void listAutoMLJobs()
      .then(jobs => {
        if (!this.nameEdited) {
          this.name.input.value = uniqueName(
            this.baseName,
            jobs.map(j => j.name)
          );
        }
      })
      .catch(() => undefined);
    const proposal = await askParameters(
      this.spaceBody,
      async () => proposeSpace(this.options.path, await readNotebookContent(this.options)),
      {
        className: 'jp-Stratolab-error',
        errorTestId: 'stratolab-tune-space-error',
        none: 'This notebook has no cell tagged “parameters”: AutoML searches over its values. Add one (with assignments like lr = 0.01) first.',
        noneTestId: 'stratolab-tune-no-parameters'
      }
    );
    if (!proposal) {
      return;
    }
    this.rows = proposal.parameters.map(p => new SpaceRow(p, proposal.space[p.name], () => this.updateConditions()));
    for (const r of this.rows) {
      this.errors.register(`space.${r.parameter.name}`, r.error);
      for (const [field, input] of Object.entries(r.inputs)) {
        this.errors.markInput(field, input);
      }
    }
    this.spaceBody.replaceChildren(
      el(
        'p',
        'jp-Stratolab-note',
        'Proposed from the parameters cell: tick what to search and adjust the ranges. The others keep the notebook’s values.'
      ),
      ...this.rows.map(r => r.node)
    );
    this.updateConditions();
  }

  /** A parameter may depend on a searched categorical one that has no condition itself. */
  private updateConditions(): void {
    const parents = this.rows.filter(r => r.searched && r.isCategorical).map(r => r.parameter.name);
    for (const r of this.rows) {
      r.setParents(parents);
    }
  }

  private readonly baseName: string;
  private nameEdited = false;
  private readonly name: IField;
  private readonly spaceBody: HTMLElement;
  private readonly metric: IField;
  private readonly direction: HTMLSelectElement;
  private readonly trials: IField;
  private readonly parallel: IField;
  private readonly profile: HTMLSelectElement;
  private readonly timeout: IField;
  private readonly maxFailed: IField;
  private readonly trialTimeout: IField;
  private readonly algorithm: HTMLSelectElement;
  private readonly pruner: HTMLSelectElement;
  private readonly seed: IField;
  private rows: SpaceRow[] = [];
}

/**
 * Open the "Tune…" dialog for the notebook at `options.path`.
 */
export async function openTuneDialog(options: ITuneDialogOptions): Promise<void> {
  await options.beforeRead?.(options.path);
  const form = new TuneForm(options);
  const dialog = new FormDialog<Action>(
    form,
    `Tune ${defaultScheduleName(options.path)}`,
    [null, 'start'],
    [
      Dialog.cancelButton(),
      Dialog.okButton({ label: 'Start', caption: 'Start the search: one papermill run of the notebook per trial' })
    ],
    'jp-Stratolab-tuneDialog'
  );
  await dialog.launch();
}
