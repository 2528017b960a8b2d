/**
 * "Add trigger": the dialog that ties a source of events to a function. The kind select shows that
 * kind's source settings (`kinds.ts`); the advanced part holds filters, batching, ordering, retries,
 * the maximum event age and a destination. The dialog stays open after a refusal, with the
 * service's message next to the field it names, and closes once the trigger exists.
 */
import { Dialog } from '@jupyterlab/apputils';

import { ServiceError } from '../api/client';
import { browserTimeZone } from '../jobs/scheduleForm';
import {
  checkbox,
  checkboxes,
  details,
  el,
  fieldRow,
  FormDialog,
  IField,
  numberField,
  selectInput,
  SubmittingForm,
  textField
} from '../ui';
import { createTrigger, ITrigger, TriggerKind } from './api';
import { IKindSpec, ISourceField, KIND_SPECS, kindSpec } from './kinds';
import { ITriggerFields, triggerRequest } from './request';

type Action = 'create';

const WHEN_OPTIONS = [
  ['success', 'on success'],
  ['failure', 'on failure'],
  ['always', 'always']
] as const;

/** The inputs of one kind's source settings, by key. */
interface IKindInputs {
  box: HTMLElement;
  text: Map<string, HTMLInputElement | HTMLSelectElement>;
  several: Map<string, HTMLInputElement[]>;
}

export class TriggerForm extends SubmittingForm<Action> {
  constructor(
    private readonly fn: string,
    private readonly onCreated: (trigger: ITrigger) => void,
    kind: TriggerKind = 'upload'
  ) {
    super({
      className: 'jp-Stratolab-triggerForm',
      testId: 'stratolab-trigger-form',
      errorTestId: 'stratolab-trigger-error',
      errorSeparators: /[._]/g,
      progressTestId: 'stratolab-trigger-progress'
    });
    const form = el('div', 'jp-Stratolab-form');

    this.kind = selectInput(
      'stratolab-trigger-kind',
      KIND_SPECS.map(s => [s.kind, s.label] as const),
      kind
    );
    this.note = el('div', 'jp-Stratolab-note', '', 'stratolab-trigger-kind-note');
    form.append(this.errors.group(fieldRow('Kind', this.kind), 'kind', this.note));
    for (const spec of KIND_SPECS) {
      const inputs = this.kindInputs(spec);
      this.inputs.set(spec.kind, inputs);
      form.append(inputs.box);
    }

    this.name = textField('Name (optional)', 'stratolab-trigger-name');
    form.append(this.errors.group(this.name.row, 'name'));

    const advanced = details('Advanced', 'stratolab-trigger-advanced');
    this.filters = textField(
      'Only events with',
      'stratolab-trigger-filters',
      '',
      'type=com.example.created, subject^=sensors/'
    );
    this.filters.input.title = 'attribute=value (exact), attribute^=prefix, attribute$=suffix; separated by commas';
    this.batch = numberField('Batch (events per call)', null, {
      min: 1,
      placeholder: '1',
      testId: 'stratolab-trigger-batch'
    });
    this.concurrency = numberField('Events in flight', null, {
      min: 1,
      placeholder: '8',
      testId: 'stratolab-trigger-concurrency'
    });
    this.ordered = checkbox('In order per key (MQTT topic, message key)', 'stratolab-trigger-ordered', false);
    this.retries = numberField('Retries', null, { min: 0, placeholder: '3', testId: 'stratolab-trigger-retries' });
    this.maxAge = numberField('Max event age (s)', null, {
      min: 1,
      placeholder: '86400',
      testId: 'stratolab-trigger-max-age'
    });
    this.backoff = numberField('First retry after (s, doubled each time)', null, {
      min: 0.01,
      step: 'any',
      placeholder: '1',
      testId: 'stratolab-trigger-backoff'
    });
    this.destination = textField(
      'Send results to',
      'stratolab-trigger-destination',
      '',
      'function:NAME, webhook:URL or mqtt:TOPIC'
    );
    this.when = selectInput('stratolab-trigger-when', WHEN_OPTIONS, 'success');
    advanced.body.append(
      this.errors.group(this.filters.row, 'filters'),
      this.errors.group(this.batch.row, 'batch'),
      this.errors.group(this.concurrency.row, 'concurrency'),
      this.errors.group(this.ordered.row, 'ordered'),
      this.errors.group(this.retries.row, 'retries'),
      this.errors.group(this.maxAge.row, 'max_age_s'),
      this.errors.group(this.backoff.row, 'backoff_s'),
      this.errors.group(this.destination.row, 'destination'),
      this.errors.group(fieldRow('When', this.when), 'destination.when')
    );
    form.append(advanced.details);
    this.setForm(form);

    this.errors.listen(this.node);
    this.kind.addEventListener('change', () => this.showKind());
    this.showKind();
  }

  /** Check the form, then create the trigger; true when the service said yes. */
  async submit(): Promise<boolean> {
    this.errors.clearAll();
    const { request, problems } = triggerRequest(this.fn, this.fields());
    for (const [field, message] of problems) {
      this.errors.show(field, message);
    }
    if (!request) {
      return false;
    }
    this.setProgress('Adding the trigger…');
    try {
      this.onCreated(await createTrigger(request));
      return true;
    } catch (error) {
      const message = (error as Error).message || String(error);
      this.errors.show((error instanceof ServiceError && error.field) || '', message);
      return false;
    } finally {
      this.setProgress('');
    }
  }

  /** The form's values, as typed. */
  fields(): ITriggerFields {
    const kind = this.kind.value as TriggerKind;
    const inputs = this.inputs.get(kind)!;
    const source: Record<string, string> = {};
    for (const [key, input] of inputs.text) {
      source[key] = input.value;
    }
    const several: Record<string, string[]> = {};
    for (const [key, boxes] of inputs.several) {
      several[key] = boxes.filter(b => b.checked).map(b => b.value);
    }
    return {
      kind,
      name: this.name.input.value,
      source,
      several,
      filters: this.filters.input.value,
      batch: this.batch.input.value,
      concurrency: this.concurrency.input.value,
      ordered: this.ordered.input.checked,
      retries: this.retries.input.value,
      maxAge: this.maxAge.input.value,
      backoff: this.backoff.input.value,
      destination: this.destination.input.value,
      when: this.when.value
    };
  }

  /** The settings of `spec`'s kind, each with the place for its error (`source.KEY`). */
  private kindInputs(spec: IKindSpec): IKindInputs {
    const box = el('div', 'jp-Stratolab-triggerSource', undefined, `stratolab-trigger-source-${spec.kind}`);
    const inputs: IKindInputs = { box, text: new Map(), several: new Map() };
    for (const field of spec.fields) {
      const testId = `stratolab-trigger-${spec.kind}-${field.key}`;
      const hint = field.hint ? el('div', 'jp-Stratolab-note', field.hint) : undefined;
      box.append(this.errors.group(this.sourceRow(spec, field, testId, inputs), `source.${field.key}`, hint));
    }
    return inputs;
  }

  private sourceRow(spec: IKindSpec, field: ISourceField, testId: string, inputs: IKindInputs): HTMLElement {
    if (field.several) {
      const boxes = field.several.map(value => {
        const box = checkbox(value, `${testId}-${value.toLowerCase()}`, true);
        box.input.value = value;
        return box;
      });
      inputs.several.set(
        field.key,
        boxes.map(b => b.input)
      );
      return checkboxes(field.label, boxes);
    }
    const initial = field.key === 'timezone' ? browserTimeZone() : (field.initial?.(this.fn) ?? '');
    if (field.choices) {
      const select = selectInput(testId, field.choices, initial);
      inputs.text.set(field.key, select);
      return fieldRow(field.label, select);
    }
    const text: IField = textField(field.label, testId, initial, field.placeholder ?? '');
    inputs.text.set(field.key, text.input);
    return text.row;
  }

  /** Show the chosen kind's settings only. */
  private showKind(): void {
    const spec = kindSpec(this.kind.value);
    this.note.textContent = spec.note;
    for (const [kind, inputs] of this.inputs) {
      inputs.box.hidden = kind !== spec.kind;
    }
    this.name.input.placeholder = `${this.fn}-${spec.kind}`;
    this.errors.clearAll();
  }

  private readonly kind: HTMLSelectElement;
  private readonly note: HTMLElement;
  private readonly inputs = new Map<TriggerKind, IKindInputs>();
  private readonly name: IField;
  private readonly filters: IField;
  private readonly batch: IField;
  private readonly concurrency: IField;
  private readonly ordered: IField;
  private readonly retries: IField;
  private readonly maxAge: IField;
  private readonly backoff: IField;
  private readonly destination: IField;
  private readonly when: HTMLSelectElement;
}

/** Open "Add trigger" for the function `fn`; `onCreated` gets the new trigger (with its key, shown once). */
export async function openTriggerDialog(fn: string, onCreated: (trigger: ITrigger) => void): Promise<void> {
  const form = new TriggerForm(fn, onCreated);
  const dialog = new FormDialog<Action>(
    form,
    `Add a trigger to ${fn}`,
    [null, 'create'],
    [
      Dialog.cancelButton(),
      Dialog.okButton({ label: 'Add trigger', caption: 'Create the trigger; it starts at once' })
    ],
    'jp-Stratolab-triggerDialog'
  );
  await dialog.launch();
}
