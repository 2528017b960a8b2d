/**
 * What the main-area tables do to their rows, apart from any DOM: columns described once (what a
 * cell sorts and filters by, and how it reads), comparators for numbers, dates and text, sorting
 * that is stable and puts empty cells last in either direction, and filtering by a typed text and
 * by per-column choices (a run's state, its schedule). Pure: no requests, no DOM.
 */

/** What a cell holds: what it sorts by (dates as ISO strings or `Date`s). */
export type CellValue = string | number | boolean | Date | null | undefined;

/** How a column compares its values. */
export type ColumnKind = 'string' | 'number' | 'date';

export type SortDirection = 'asc' | 'desc';

export interface ISortState {
  key: string;
  direction: SortDirection;
}

/** One column of a table over rows of type `T`. */
export interface IColumn<T> {
  /** Names the column in the sort state, the filters and the test ids. */
  key: string;
  label: string;
  /** How values compare; text by default. */
  kind?: ColumnKind;
  /** What the cell sorts by. */
  value: (row: T) => CellValue;
  /** How the cell reads (and what the text filter and the column's choices match); else the value as text. */
  text?: (row: T) => string;
  /** The direction of the first click on the header (dates and counts read best newest or largest first). */
  firstDirection?: SortDirection;
  /** Offer a choice of this column's values above the table (state, schedule). */
  choices?: boolean;
}

/** What a table shows of its rows: its sort, the typed text and the chosen value per column. */
export interface IRowQuery {
  sort: ISortState | null;
  text: string;
  /** Column key -> the cell text rows must have; an empty text is no filter. */
  choices: Record<string, string>;
}

/** True for a value that sorts last: nothing, an empty text, a number or date that is not one. */
export function isEmptyCell(value: CellValue, kind: ColumnKind = 'string'): boolean {
  if (value === null || value === undefined || value === '') {
    return true;
  }
  if (kind === 'number') {
    return typeof value !== 'boolean' && isNaN(Number(value));
  }
  if (kind === 'date') {
    return isNaN(timeOf(value));
  }
  return false;
}

/** Milliseconds since the epoch of a date cell; NaN when it is no date. */
export function timeOf(value: CellValue): number {
  if (value instanceof Date) {
    return value.getTime();
  }
  if (typeof value === 'number') {
    return value;
  }
  if (typeof value === 'string' && value) {
    return Date.parse(value);
  }
  return NaN;
}

export function compareNumbers(a: number, b: number): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

export function compareDates(a: CellValue, b: CellValue): number {
  return compareNumbers(timeOf(a), timeOf(b));
}

/** Text as people read it: case and accents aside, digits by their number ("run 9" before "run 10"). */
export function compareStrings(a: string, b: string): number {
  return a.localeCompare(b, undefined, { numeric: true, sensitivity: 'base' });
}

/** Compare two non-empty cells of a column of `kind`, ascending. */
export function compareCells(kind: ColumnKind, a: CellValue, b: CellValue): number {
  switch (kind) {
    case 'number':
      return compareNumbers(Number(a), Number(b));
    case 'date':
      return compareDates(a, b);
    default:
      return compareStrings(String(a), String(b));
  }
}

/** How a cell reads: the column's own text, else its value as text ('' for nothing). */
export function cellText<T>(column: IColumn<T>, row: T): string {
  if (column.text) {
    return column.text(row);
  }
  const value = column.value(row);
  if (value === null || value === undefined) {
    return '';
  }
  return value instanceof Date ? value.toISOString() : String(value);
}

/**
 * The rows in the order `sort` asks: stable (equal cells keep the order the service gave), empty
 * cells last whichever the direction. No sort, or an unknown column: the rows as they came.
 */
export function sortRows<T>(rows: ReadonlyArray<T>, columns: ReadonlyArray<IColumn<T>>, sort: ISortState | null): T[] {
  const column = sort ? columns.find(c => c.key === sort.key) : undefined;
  if (!sort || !column) {
    return [...rows];
  }
  const kind = column.kind ?? 'string';
  const sign = sort.direction === 'asc' ? 1 : -1;
  const keyed = rows.map((row, index) => ({ row, index, value: column.value(row) }));
  keyed.sort((a, b) => {
    const emptyA = isEmptyCell(a.value, kind);
    const emptyB = isEmptyCell(b.value, kind);
    if (emptyA || emptyB) {
      return emptyA === emptyB ? a.index - b.index : emptyA ? 1 : -1;
    }
    return sign * compareCells(kind, a.value, b.value) || a.index - b.index;
  });
  return keyed.map(k => k.row);
}

/** The sort after a click on `column`'s header: the other direction on the sorted column, else its first. */
export function nextSort<T>(current: ISortState | null, column: IColumn<T>): ISortState {
  if (current && current.key === column.key) {
    return { key: column.key, direction: current.direction === 'asc' ? 'desc' : 'asc' };
  }
  return { key: column.key, direction: column.firstDirection ?? 'asc' };
}

/**
 * Whether `row` matches a typed text: every word of it (case aside) appears in some cell. An empty
 * text matches every row.
 */
export function matchesText<T>(row: T, columns: ReadonlyArray<IColumn<T>>, text: string): boolean {
  const words = text.toLowerCase().split(/\s+/).filter(Boolean);
  if (words.length === 0) {
    return true;
  }
  const cells = columns.map(c => cellText(c, row).toLowerCase());
  return words.every(word => cells.some(cell => cell.includes(word)));
}

/** Whether `row`'s cells have the text chosen for their column (columns with no choice aside). */
export function matchesChoices<T>(
  row: T,
  columns: ReadonlyArray<IColumn<T>>,
  choices: Record<string, string>
): boolean {
  return Object.entries(choices).every(([key, wanted]) => {
    const column = columns.find(c => c.key === key);
    return !wanted || !column || cellText(column, row) === wanted;
  });
}

export function filterRows<T>(
  rows: ReadonlyArray<T>,
  columns: ReadonlyArray<IColumn<T>>,
  query: Omit<IRowQuery, 'sort'>
): T[] {
  return rows.filter(row => matchesChoices(row, columns, query.choices) && matchesText(row, columns, query.text));
}

/** The rows a table shows: filtered, then sorted. */
export function queryRows<T>(rows: ReadonlyArray<T>, columns: ReadonlyArray<IColumn<T>>, query: IRowQuery): T[] {
  return sortRows(filterRows(rows, columns, query), columns, query.sort);
}

/**
 * The choices of a column's filter: the texts its cells have, in reading order, and `chosen` kept
 * when no row has it any more (a filter set before a refresh stays as it was).
 */
export function choicesOf<T>(rows: ReadonlyArray<T>, column: IColumn<T>, chosen = ''): string[] {
  const texts = new Set(rows.map(row => cellText(column, row)).filter(Boolean));
  if (chosen) {
    texts.add(chosen);
  }
  return [...texts].sort(compareStrings);
}
