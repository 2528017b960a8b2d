/**
 * Form fields of the dialogs: labelled text, number and select fields, checkboxes, collapsible
 * sections, and reading numbers back.
 */
import { el } from './dom';
import { typedNumber } from './parse';

/** A field: its labelled row, and the input in it. */
export interface IField {
  row: HTMLElement;
  input: HTMLInputElement;
}

/** A labelled row (`<label>`) around any input. */
export function fieldRow(label: string, input: HTMLElement, className = 'jp-Stratolab-field'): HTMLLabelElement {
  const row = el('label', className);
  row.append(el('span', 'jp-Stratolab-fieldLabel', label), input);
  return row;
}

export function textField(label: string, testId: string, value = '', placeholder = ''): IField {
  const input = el('input', 'jp-Stratolab-input', undefined, testId);
  input.type = 'text';
  input.value = value;
  input.placeholder = placeholder;
  input.spellcheck = false;
  return { row: fieldRow(label, input), input };
}

export interface INumberOptions {
  min?: number;
  step?: number | 'any';
  testId?: string;
  placeholder?: string;
}

/** A labelled number input; an empty value means "leave as it is". */
export function numberField(label: string, value: number | null | undefined, opts: INumberOptions = {}): IField {
  const input = el('input', 'jp-Stratolab-input', undefined, opts.testId);
  input.type = 'number';
  if (opts.min !== undefined) {
    input.min = String(opts.min);
  }
  input.step = String(opts.step ?? 1);
  input.value = value === null || value === undefined ? '' : String(value);
  if (opts.placeholder) {
    input.placeholder = opts.placeholder;
  }
  return { row: fieldRow(label, input), input };
}

/** A small unlabelled input (a bound of a range, a step); numbers accept any decimal. */
export function smallInput(testId: string, type: 'number' | 'text', value: string, placeholder = ''): HTMLInputElement {
  const input = el('input', 'jp-Stratolab-input jp-Stratolab-smallInput', undefined, testId);
  input.type = type;
  if (type === 'number') {
    input.step = 'any';
  }
  input.value = value;
  input.placeholder = placeholder;
  input.spellcheck = false;
  return input;
}

/** The number typed, or undefined when the field was left empty. */
export function readNumber(input: HTMLInputElement): number | undefined {
  return typedNumber(input.value);
}

/** A select of `[value, label]` options, showing `value`. */
export function selectInput(
  testId: string,
  options: ReadonlyArray<readonly [string, string]>,
  value: string
): HTMLSelectElement {
  const node = el('select', 'jp-Stratolab-input', undefined, testId);
  setOptions(node, options);
  node.value = value;
  return node;
}

/** Replace a select's options with `[value, label]` pairs. */
export function setOptions(node: HTMLSelectElement, options: ReadonlyArray<readonly [string, string]>): void {
  node.replaceChildren(
    ...options.map(([value, label]) => {
      const option = el('option', '', label);
      option.value = value;
      return option;
    })
  );
}

export function checkbox(label: string, testId: string, checked: boolean): IField {
  const row = el('label', 'jp-Stratolab-check');
  const input = el('input', '', undefined, testId);
  input.type = 'checkbox';
  input.checked = checked;
  row.append(input, document.createTextNode(` ${label}`));
  return { row, input };
}

/** A row of checkboxes under one label. */
export function checkboxes(label: string, boxes: IField[]): HTMLElement {
  const row = el('div', 'jp-Stratolab-field');
  const group = el('div', 'jp-Stratolab-checks');
  group.append(...boxes.map(b => b.row));
  row.append(el('span', 'jp-Stratolab-fieldLabel', label), group);
  return row;
}

/** A collapsible section (`<details>`) with a form body. */
export function details(
  title: string,
  testId?: string,
  open = false
): { details: HTMLDetailsElement; body: HTMLElement } {
  const node = el('details', 'jp-Stratolab-details', undefined, testId);
  node.open = open;
  node.append(el('summary', 'jp-Stratolab-summary', title));
  const body = el('div', 'jp-Stratolab-form');
  node.append(body);
  return { details: node, body };
}
