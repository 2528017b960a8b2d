/**
 * The search space as the Tune dialog edits it: choices typed and read back, a parameter's starting
 * range, and a name no other search has.
 */
import { INotebookParameter } from '../jobs/api';
import { typedNumber } from '../ui/parse';
import { ISpaceItem } from './api';

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
    return d > 0
      ? { type: 'float', low: d / 10, high: d * 10, log: true }
      : { type: 'float', low: d - 1, high: d + 1, log: false };
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

/** What went wrong, by the field the service would name (`space.lr.low`, `trials`). */
export type Problems = [field: string, message: string][];

/** The fields of one parameter's row of the Tune dialog, as typed. */
export interface ISpaceFields {
  type: ISpaceItem['type'];
  low: string;
  high: string;
  step: string;
  log: boolean;
  choices: string;
  /** The categorical parameter this one applies under ('' for always), and its values. */
  parent: string;
  when: string;
}

/** The space item of parameter `name`, or what is wrong with it (by field). */
export function readSpaceItem(name: string, fields: ISpaceFields): { item: ISpaceItem | null; problems: Problems } {
  const f = `space.${name}`;
  const problems: Problems = [];
  const type = fields.type;
  const item: ISpaceItem = { type };
  if (type === 'categorical') {
    const choices = parseChoices(fields.choices);
    if (choices.length === 0) {
      problems.push([`${f}.choices`, 'Give at least one choice.']);
    }
    item.choices = choices;
  } else {
    for (const key of ['low', 'high'] as const) {
      const value = typedNumber(fields[key]);
      if (value === undefined || !Number.isFinite(value)) {
        problems.push([`${f}.${key}`, `Enter the ${key === 'low' ? 'lowest' : 'highest'} value to try.`]);
      } else if (type === 'int' && !Number.isInteger(value)) {
        problems.push([`${f}.${key}`, `${key} of an int must be a whole number.`]);
      } else {
        item[key] = value;
      }
    }
    item.log = fields.log;
    const step = typedNumber(fields.step);
    if (step !== undefined) {
      if (!Number.isFinite(step) || step <= 0) {
        problems.push([`${f}.step`, 'The step must be a positive number.']);
      } else {
        item.step = step;
      }
    }
  }
  if (fields.parent) {
    const values = parseChoices(fields.when);
    if (values.length === 0) {
      problems.push([`${f}.when`, `Give the value(s) of ${fields.parent} under which ${name} applies.`]);
    }
    item.when = { [fields.parent]: values };
  }
  return { item: problems.length ? null : item, problems };
}

/** The budget fields of the Tune dialog, as typed. */
export type BudgetFields = Record<(typeof BUDGET)[number][0], string>;

/** Each budget number: its least value, and whether it must be given. */
const BUDGET = [
  ['trials', 1, true],
  ['parallel', 1, true],
  ['timeout', 1, false],
  ['max_failed', 0, false],
  ['trial_timeout', 1, false],
  ['seed', 0, false]
] as const;

/** The budget's whole numbers (undefined: not given), or what is wrong with them. */
export function readBudget(fields: BudgetFields): {
  numbers: Partial<Record<keyof BudgetFields, number>>;
  problems: Problems;
} {
  const numbers: Partial<Record<keyof BudgetFields, number>> = {};
  const problems: Problems = [];
  for (const [field, low, required] of BUDGET) {
    const value = typedNumber(fields[field]);
    if (value === undefined) {
      if (required) {
        problems.push([field, 'Enter a number.']);
      }
    } else if (!Number.isInteger(value) || value < low) {
      problems.push([field, `Expected a whole number of at least ${low}.`]);
    }
    numbers[field] = value;
  }
  return { numbers, problems };
}
