/**
 * "Tune…": the dialog that starts an AutoML search over a notebook's parameters. The scheduler
 * proposes a starting space from the notebook's `parameters` cell (`POST api/automl/propose`); the
 * user picks what to search and how, names the objective the notebook records, sets the budget and
 * the environment every trial runs in (as the Schedule dialog does); "Start" sends it
 * (`POST api/automl`) and closes only once the service said yes.
 */
import { Dialog } from '@jupyterlab/apputils';
import { Contents } from '@jupyterlab/services';
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import {
  IAutoMLJob,
  IAutoMLRequest,
  ISearchSpace,
  ISpaceItem,
  listAutoMLJobs,
  proposeSpace,
  startAutoMLJob
} from './automl';
import { ServiceError } from './api/client';
import { INotebookParameter, listProfiles, profileOptions } from './jobs';
import { defaultScheduleName, formatParameterValue, readNotebookContent } from './schedule';
import {
  alertNode,
  checkbox,
  details,
  el,
  fieldRow,
  FieldErrors,
  FormDialog,
  IField,
  ISubmittingForm,
  numberField,
  readNumber,
  selectInput,
  setOptions,
  setProgress,
  smallInput,
  textField
} from './ui';

export const tuneIcon = new LabIcon({
  name: 'stratolab:tune',
  svgstr: `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <rect x="3" y="5" width="18" height="2" rx="1"/>
    <rect x="3" y="11" width="18" height="2" rx="1"/>
    <rect x="3" y="17" width="18" height="2" rx="1"/>
    <circle cx="8" cy="6" r="2.6"/>
    <circle cx="16" cy="12" r="2.6"/>
    <circle cx="11" cy="18" r="2.6"/>
  </g>
</svg>`
});

// --- pure parts --------------------------------------------------------------------------------------

/**
 * Choices typed with commas between them, each a JSON value where it parses (`1`, `true`, `null`,
 * `"a b"`), else the text itself (quotes '…' around it dropped): `mlp, 'logreg', 3` → ["mlp", "logreg", 3].
 */
export function parseChoices(text: string): unknown[] {
  return text
    .split(',')
    .map(part => part.trim())
    .filter(Boolean)
    .map(part => {
      if (/^'.*'$/.test(part)) {
        return part.slice(1, -1);
      }
      try {
        return JSON.parse(part);
      } catch {
        return part;
      }
    });
}

/** Choices as they are typed back: strings bare unless they would read as something else. */
export function formatChoices(choices: ReadonlyArray<unknown>): string {
  return choices
    .map(c => {
      if (typeof c !== 'string') {
        return JSON.stringify(c);
      }
      const reread = parseChoices(c);
      return c.includes(',') || reread.length !== 1 || reread[0] !== c ? JSON.stringify(c) : c;
    })
    .join(', ');
}

/**
 * Where a parameter's row starts: the proposed range when there is one, else one from its default
 * (numbers around it, the default as the only choice otherwise).
 */
export function startingItem(p: INotebookParameter, proposed?: ISpaceItem): ISpaceItem {
  if (proposed) {
    return { ...proposed };
  }
  const d = p.default;
  if (p.type === 'float' && typeof d === 'number') {
    return d > 0 ? { type: 'float', low: d / 10, high: d * 10, log: true } : { type: 'float', low: d - 1, high: d + 1, log: false };
  }
  if (p.type === 'int' && typeof d === 'number') {
    return d > 0
      ? { type: 'int', low: Math.max(1, Math.floor(d / 2)), high: Math.max(2, d * 2), log: d >= 16 }
      : { type: 'int', low: d, high: d + 10, log: false };
  }
  if (p.type === 'bool') {
    return { type: 'categorical', choices: [d, !d] };
  }
  return { type: 'categorical', choices: d === undefined ? [] : [d] };
}

/** `base`, or `base-2`, `base-3`… when a search has that name already (names are unique per user). */
export function uniqueName(base: string, taken: ReadonlyArray<string>): string {
  if (!taken.includes(base)) {
    return base;
  }
  let i = 2;
  while (taken.includes(`${base}-${i}`)) {
    i += 1;
  }
  return `${base}-${i}`;
}

// --- one parameter's row -----------------------------------------------------------------------------

type Problems = [field: string, message: string][];

const inline = (label: string, input: HTMLElement) => fieldRow(label, input, 'jp-Stratolab-inline');

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
    this.type = selectInput(id('type'), SPACE_TYPES.map(t => [t, t] as const), item.type);
    this.type.classList.add('jp-Stratolab-smallInput');
    this.type.setAttribute('aria-label', `Type of ${name}`);
    const defaultText = formatParameterValue(parameter.default, parameter.type) || '""';
    head.append(
      this.search.row,
      el('span', 'jp-Stratolab-spaceName', name),
      el('span', 'jp-Stratolab-note', `${parameter.type} · default ${defaultText}${parameter.help ? ` · ${parameter.help}` : ''}`),
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
    setOptions(this.parent, options.map(n => [n, n || 'always'] as const));
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
    const f = `space.${this.parameter.name}`;
    const problems: Problems = [];
    const type = this.type.value as ISpaceItem['type'];
    const item: ISpaceItem = { type };
    if (type === 'categorical') {
      const choices = parseChoices(this.choices.value);
      if (choices.length === 0) {
        problems.push([`${f}.choices`, 'Give at least one choice.']);
      }
      item.choices = choices;
    } else {
      for (const [key, input] of [['low', this.low], ['high', this.high]] as const) {
        const value = readNumber(input);
        if (value === undefined || !Number.isFinite(value)) {
          problems.push([`${f}.${key}`, `Enter the ${key === 'low' ? 'lowest' : 'highest'} value to try.`]);
        } else if (type === 'int' && !Number.isInteger(value)) {
          problems.push([`${f}.${key}`, `${key} of an int must be a whole number.`]);
        } else {
          item[key] = value;
        }
      }
      item.log = this.log.input.checked;
      const step = readNumber(this.step);
      if (step !== undefined) {
        if (!Number.isFinite(step) || step <= 0) {
          problems.push([`${f}.step`, 'The step must be a positive number.']);
        } else {
          item.step = step;
        }
      }
    }
    if (this.parent.value) {
      const values = parseChoices(this.when.value);
      if (values.length === 0) {
        problems.push([`${f}.when`, `Give the value(s) of ${this.parent.value} under which ${this.parameter.name} applies.`]);
      }
      item.when = { [this.parent.value]: values };
    }
    return { item: problems.length ? null : item, problems };
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

// --- the dialog --------------------------------------------------------------------------------------

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
export class TuneForm extends Widget implements ISubmittingForm<Action> {
  constructor(private readonly options: ITuneDialogOptions) {
    super({ node: el('div', 'jp-Stratolab-scheduleForm jp-Stratolab-tuneForm', undefined, 'stratolab-tune-form') });
    this.node.append(this.errors.top);

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
    this.direction = selectInput('stratolab-tune-direction', [['maximize', 'maximize'], ['minimize', 'minimize']], 'maximize');
    form.append(
      this.errors.group(this.metric.row, 'metric', el('div', 'jp-Stratolab-note jp-Stratolab-paramDefault',
        'What the notebook records with stratolab.record("name", value), e.g. val_accuracy.')),
      this.errors.group(fieldRow('Direction', this.direction), 'direction')
    );

    this.trials = numberField('Trials', 20, { min: 1, testId: 'stratolab-tune-trials' });
    this.parallel = numberField('Parallel trials', 2, { min: 1, testId: 'stratolab-tune-parallel' });
    form.append(this.errors.group(this.trials.row, 'trials'), this.errors.group(this.parallel.row, 'parallel'));
    this.profile = selectInput('stratolab-tune-profile', [['', 'Default environment']], '');
    form.append(this.errors.group(fieldRow('Environment', this.profile), 'profile', el('div', 'jp-Stratolab-note jp-Stratolab-paramDefault',
      'Every trial runs in it. On a GPU environment each trial gets its own GPUs: no more run at once than there are.')));

    const limits = details('Limits', 'stratolab-tune-limits');
    this.timeout = numberField('Time limit (s)', null, { min: 1, placeholder: 'none', testId: 'stratolab-tune-timeout' });
    this.maxFailed = numberField('Failed trials tolerated', null, { min: 0, placeholder: 'max(3, trials ÷ 4)', testId: 'stratolab-tune-max-failed' });
    this.trialTimeout = numberField('Trial timeout (s)', null, { min: 1, placeholder: 'none', testId: 'stratolab-tune-trial-timeout' });
    limits.body.append(
      this.errors.group(this.timeout.row, 'timeout'),
      this.errors.group(this.maxFailed.row, 'max_failed'),
      this.errors.group(this.trialTimeout.row, 'trial_timeout')
    );
    form.append(limits.details);

    const algorithm = details('Algorithm', 'stratolab-tune-algorithm-settings');
    this.algorithm = selectInput('stratolab-tune-algorithm', [
      ['tpe', 'TPE (Bayesian, default)'],
      ['random', 'Random'],
      ['cmaes', 'CMA-ES'],
      ['grid', 'Grid (choices and int ranges; steps for floats)']
    ], 'tpe');
    this.pruner = selectInput('stratolab-tune-pruner', [
      ['none', 'None'],
      ['median', 'Median'],
      ['successive_halving', 'Successive halving'],
      ['hyperband', 'Hyperband']
    ], 'none');
    this.seed = numberField('Seed', null, { min: 0, placeholder: 'random', testId: 'stratolab-tune-seed' });
    algorithm.body.append(
      this.errors.group(fieldRow('Sampler', this.algorithm), 'algorithm'),
      this.errors.group(fieldRow('Pruner', this.pruner), 'pruner', el('div', 'jp-Stratolab-note jp-Stratolab-paramDefault',
        'Stops unpromising trials early: needs stratolab.report(step, value) in the notebook.')),
      this.errors.group(this.seed.row, 'seed')
    );
    form.append(algorithm.details);

    this.progress = el('div', 'jp-Stratolab-progress', '', 'stratolab-tune-progress');
    this.node.append(form, this.progress);

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
    setProgress(this.progress, 'Starting the search…');
    try {
      this.job = await startAutoMLJob(request);
      this.options.onStarted?.(this.job);
      return true;
    } catch (error) {
      const field = error instanceof ServiceError ? error.field : null;
      this.errors.show(field ?? '', (error as Error).message || String(error));
      return false;
    } finally {
      setProgress(this.progress, '');
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
    const numbers: Record<string, number | undefined> = {};
    for (const [field, f, low, required] of [
      ['trials', this.trials, 1, true],
      ['parallel', this.parallel, 1, true],
      ['timeout', this.timeout, 1, false],
      ['max_failed', this.maxFailed, 0, false],
      ['trial_timeout', this.trialTimeout, 1, false],
      ['seed', this.seed, 0, false]
    ] as const) {
      const value = readNumber(f.input);
      if (value === undefined) {
        if (required) {
          fail(field, 'Enter a number.');
        }
      } else if (!Number.isInteger(value) || value < low) {
        fail(field, `Expected a whole number of at least ${low}.`);
      }
      numbers[field] = value;
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
    const content = await this.readNotebook();
    if (content !== undefined) {
      request.content = content;
    }
    return request;
  }

  private readNotebook(): Promise<unknown> {
    return readNotebookContent(this.options);
  }

  /** The proposed space, one row per parameter; and a name no other search has. */
  private async load(): Promise<void> {
    void listAutoMLJobs()
      .then(jobs => {
        if (!this.nameEdited) {
          this.name.input.value = uniqueName(this.baseName, jobs.map(j => j.name));
        }
      })
      .catch(() => undefined);
    void this.loadProfiles();
    let proposal;
    try {
      proposal = await proposeSpace(this.options.path, await this.readNotebook());
    } catch (error) {
      this.spaceBody.replaceChildren(
        el('p', 'jp-Stratolab-error', `Cannot read the notebook’s parameters: ${(error as Error).message}`, 'stratolab-tune-space-error')
      );
      return;
    }
    if (proposal.parameters.length === 0) {
      this.spaceBody.replaceChildren(
        el('p', 'jp-Stratolab-error',
          'This notebook has no cell tagged “parameters”: AutoML searches over its values. Add one (with assignments like lr = 0.01) first.',
          'stratolab-tune-no-parameters')
      );
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
      el('p', 'jp-Stratolab-note', 'Proposed from the parameters cell: tick what to search and adjust the ranges. The others keep the notebook’s values.'),
      ...this.rows.map(r => r.node)
    );
    this.updateConditions();
  }

  /** The scheduler's environments, GPU ones with their GPU count (the Schedule dialog's list). */
  private async loadProfiles(): Promise<void> {
    try {
      const wanted = this.profile.value;
      setOptions(this.profile, profileOptions(await listProfiles(), wanted, 'per trial'));
      this.profile.value = wanted;
    } catch (error) {
      this.errors.show('profile', `Cannot list the environments: ${(error as Error).message}`);
    }
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
  private readonly progress: HTMLElement;
  private readonly errors = new FieldErrors('stratolab-tune-error', /[._]/g);
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
