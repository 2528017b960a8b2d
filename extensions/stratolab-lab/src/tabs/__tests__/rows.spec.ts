import {
  cellText,
  choicesOf,
  compareDates,
  compareNumbers,
  compareStrings,
  filterRows,
  IColumn,
  isEmptyCell,
  matchesText,
  nextSort,
  queryRows,
  sortRows
} from '../rows';

interface IRun {
  id: number;
  schedule: string;
  state: string;
  started: string | null;
  duration: number | null;
}

const columns: IColumn<IRun>[] = [
  { key: 'id', label: 'Run', kind: 'number', firstDirection: 'desc', value: r => r.id },
  { key: 'schedule', label: 'Schedule', choices: true, value: r => r.schedule },
  { key: 'state', label: 'State', choices: true, value: r => r.state },
  { key: 'started', label: 'Started', kind: 'date', value: r => r.started },
  {
    key: 'duration',
    label: 'Duration',
    kind: 'number',
    value: r => r.duration,
    text: r => (r.duration === null ? '–' : `${r.duration} s`)
  }
];

const runs: IRun[] = [
  { id: 9, schedule: 'report', state: 'succeeded', started: '2026-12-06T04:00:00Z', duration: 12 },
  { id: 10, schedule: 'Nightly', state: 'failed', started: '2026-12-05T23:00:00Z', duration: 3.5 },
  { id: 11, schedule: 'report', state: 'queued', started: null, duration: null },
  { id: 2, schedule: 'nightly', state: 'succeeded', started: '2026-12-06T04:00:00+01:00', duration: 100 }
];

const ids = (rows: IRun[]) => rows.map(r => r.id);

describe('comparators', () => {
  it('compares numbers by value, not as text', () => {
    expect(compareNumbers(9, 10)).toBeLessThan(0);
    expect(compareNumbers(10, 9)).toBeGreaterThan(0);
    expect(compareNumbers(3, 3)).toBe(0);
  });

  it('compares dates by instant, whatever the offset they are written with', () => {
    // 04:00+01:00 is 03:00Z: before 04:00Z
    expect(compareDates('2026-12-06T04:00:00+01:00', '2026-12-06T04:00:00Z')).toBeLessThan(0);
    expect(compareDates(new Date('2026-01-01T00:00:00Z'), '2026-01-01T00:00:00Z')).toBe(0);
  });

  it('compares text as people read it: case aside, digits by number', () => {
    expect(compareStrings('nightly', 'Report')).toBeLessThan(0);
    expect(compareStrings('Nightly', 'nightly')).toBe(0);
    expect(compareStrings('run 9', 'run 10')).toBeLessThan(0);
  });

  it('knows an empty cell of each kind', () => {
    expect(isEmptyCell(null)).toBe(true);
    expect(isEmptyCell('')).toBe(true);
    expect(isEmptyCell('x')).toBe(false);
    expect(isEmptyCell(0, 'number')).toBe(false);
    expect(isEmptyCell('abc', 'number')).toBe(true);
    expect(isEmptyCell('not a date', 'date')).toBe(true);
    expect(isEmptyCell('2026-12-06T04:00:00Z', 'date')).toBe(false);
  });
});

describe('sortRows', () => {
  it('sorts a number column numerically, both ways', () => {
    expect(ids(sortRows(runs, columns, { key: 'id', direction: 'asc' }))).toEqual([2, 9, 10, 11]);
    expect(ids(sortRows(runs, columns, { key: 'id', direction: 'desc' }))).toEqual([11, 10, 9, 2]);
  });

  it('puts empty cells last in either direction', () => {
    expect(ids(sortRows(runs, columns, { key: 'duration', direction: 'asc' }))).toEqual([10, 9, 2, 11]);
    expect(ids(sortRows(runs, columns, { key: 'duration', direction: 'desc' }))).toEqual([2, 9, 10, 11]);
    expect(ids(sortRows(runs, columns, { key: 'started', direction: 'desc' }))).toEqual([9, 2, 10, 11]);
    expect(ids(sortRows(runs, columns, { key: 'started', direction: 'asc' }))).toEqual([10, 2, 9, 11]);
  });

  it('is stable: equal cells keep the order the service gave', () => {
    expect(ids(sortRows(runs, columns, { key: 'schedule', direction: 'asc' }))).toEqual([10, 2, 9, 11]);
    expect(ids(sortRows(runs, columns, { key: 'schedule', direction: 'desc' }))).toEqual([9, 11, 10, 2]);
  });

  it('leaves the rows as they came without a sort or for an unknown column', () => {
    expect(ids(sortRows(runs, columns, null))).toEqual([9, 10, 11, 2]);
    expect(ids(sortRows(runs, columns, { key: 'nope', direction: 'asc' }))).toEqual([9, 10, 11, 2]);
  });

  it('does not change the rows it was given', () => {
    const copy = [...runs];
    sortRows(runs, columns, { key: 'id', direction: 'asc' });
    expect(runs).toEqual(copy);
  });
});

describe('nextSort', () => {
  it('starts a column in its first direction, then turns it around', () => {
    const id = columns[0];
    const state = columns[2];
    expect(nextSort(null, id)).toEqual({ key: 'id', direction: 'desc' });
    expect(nextSort(null, state)).toEqual({ key: 'state', direction: 'asc' });
    expect(nextSort({ key: 'state', direction: 'asc' }, state)).toEqual({ key: 'state', direction: 'desc' });
    expect(nextSort({ key: 'state', direction: 'desc' }, state)).toEqual({ key: 'state', direction: 'asc' });
    expect(nextSort({ key: 'state', direction: 'desc' }, id)).toEqual({ key: 'id', direction: 'desc' });
  });
});

describe('filtering', () => {
  it('matches every typed word in some cell, case aside, by how cells read', () => {
    expect(matchesText(runs[0], columns, '')).toBe(true);
    expect(matchesText(runs[0], columns, 'REPORT succ')).toBe(true);
    expect(matchesText(runs[0], columns, 'report failed')).toBe(false);
    expect(matchesText(runs[1], columns, '3.5 s')).toBe(true);
    expect(ids(filterRows(runs, columns, { text: 'nightly', choices: {} }))).toEqual([10, 2]);
  });

  it('keeps the rows whose column reads the chosen value; an empty choice is no filter', () => {
    expect(ids(filterRows(runs, columns, { text: '', choices: { state: 'succeeded' } }))).toEqual([9, 2]);
    expect(ids(filterRows(runs, columns, { text: '', choices: { state: 'succeeded', schedule: 'report' } }))).toEqual([
      9
    ]);
    expect(ids(filterRows(runs, columns, { text: '', choices: { state: '' } }))).toEqual([9, 10, 11, 2]);
    expect(ids(filterRows(runs, columns, { text: '', choices: { unknown: 'x' } }))).toEqual([9, 10, 11, 2]);
  });

  it('filters, then sorts', () => {
    const shown = queryRows(runs, columns, { sort: { key: 'id', direction: 'asc' }, text: 'report', choices: {} });
    expect(ids(shown)).toEqual([9, 11]);
  });

  it('offers the texts of a column as choices, and keeps a chosen one no row has any more', () => {
    expect(choicesOf(runs, columns[2])).toEqual(['failed', 'queued', 'succeeded']);
    expect(choicesOf(runs, columns[2], 'stopped')).toEqual(['failed', 'queued', 'stopped', 'succeeded']);
  });

  it('reads a cell by its text, else its value', () => {
    expect(cellText(columns[4], runs[2])).toBe('–');
    expect(cellText(columns[0], runs[2])).toBe('11');
    expect(cellText(columns[3], runs[2])).toBe('');
  });
});
