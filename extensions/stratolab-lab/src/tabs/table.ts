/**
 * A table of a service's list (functions, schedules, runs, searches, and next triggers, pipelines,
 * usage): a header click sorts by a column (again: the other way, shown by an arrow and
 * `aria-sort`), a filter box keeps the rows that have every typed word, a select per column with
 * `choices` keeps one value of it, and a row click selects it (for the detail view beside).
 *
 * It reloads while visible, every `activeMs` while `busy` says something is under way, else every
 * `idleMs`; a reload keeps the sort, the filters and the selection (by the row's key), and a failed
 * one shows the service's message above the rows it had. Sorting and filtering are `rows.ts`.
 */
import { ISignal, Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

import { alertNode, el, Poller, selectInput, setOptions } from '../ui';
import { cellText, choicesOf, IColumn, IRowQuery, ISortState, nextSort, queryRows } from './rows';

export interface ITableOptions<T> {
  /** Prefix of the test ids: `${testId}-table`, `-filter`, `-sort-KEY`, `-row-KEY`, `-choice-KEY`, `-empty`, ... */
  testId: string;
  columns: IColumn<T>[];
  /** What identifies a row across reloads (the selection is kept by it). */
  rowKey: (row: T) => string;
  load: () => Promise<T[]>;
  /** Whether something in the rows is queued or running (reloaded faster then). */
  busy?: (rows: ReadonlyArray<T>) => boolean;
  /** Shown when the service has no rows at all. */
  emptyText: string;
  sort?: ISortState | null;
  activeMs?: number;
  idleMs?: number;
}

export class DataTable<T> extends Widget {
  constructor(private readonly options: ITableOptions<T>) {
    super();
    this.addClass('jp-Stratolab-dataTable');
    this.node.dataset.testid = `${options.testId}-table`;
    this._query = { sort: options.sort ?? null, text: '', choices: {} };

    const toolbar = el('div', 'jp-Stratolab-tableToolbar');
    this.filterInput = el(
      'input',
      'jp-Stratolab-input jp-Stratolab-tableFilter',
      undefined,
      `${options.testId}-filter`
    );
    this.filterInput.type = 'search';
    this.filterInput.placeholder = 'Filter';
    this.filterInput.setAttribute('aria-label', 'Show only the rows that contain this text');
    this.filterInput.addEventListener('input', () => this.setText(this.filterInput.value));
    toolbar.append(this.filterInput);
    for (const column of options.columns.filter(c => c.choices)) {
      const select = selectInput(
        `${options.testId}-choice-${column.key}`,
        [['', `Any ${column.label.toLowerCase()}`]],
        ''
      );
      select.setAttribute('aria-label', `Show only one ${column.label.toLowerCase()}`);
      select.addEventListener('change', () => this.setChoice(column.key, select.value));
      this.choiceSelects.set(column.key, select);
      toolbar.append(el('label', 'jp-Stratolab-tableChoice', `${column.label} `), select);
    }
    this.countNode = el('span', 'jp-Stratolab-tableCount', '', `${options.testId}-count`);
    toolbar.append(this.countNode);

    this.errorNode = el('div', 'jp-Stratolab-tableError');
    const table = el('table', 'jp-Stratolab-table');
    const head = el('tr', '');
    for (const column of options.columns) {
      const th = el('th', `jp-Stratolab-col-${column.kind ?? 'string'}`);
      th.scope = 'col';
      const sort = el('button', 'jp-Stratolab-sortButton', column.label, `${options.testId}-sort-${column.key}`);
      sort.type = 'button';
      sort.title = `Sort by ${column.label.toLowerCase()}`;
      sort.addEventListener('click', () => this.setSort(nextSort(this._query.sort, column)));
      th.append(sort);
      this.headers.set(column.key, th);
      head.append(th);
    }
    const thead = el('thead', '');
    thead.append(head);
    this.tbody = el('tbody', '');
    table.append(thead, this.tbody);
    this.noteNode = el('p', 'jp-Stratolab-note jp-Stratolab-loading', 'Loading…');
    const scroller = el('div', 'jp-Stratolab-tableScroll');
    scroller.append(table, this.noteNode);
    this.node.append(toolbar, this.errorNode, scroller);
    this.renderHeaders();
  }

  /** The selected row changed (null: none, or it is gone). */
  get selectionChanged(): ISignal<this, T | null> {
    return this._selectionChanged;
  }

  /** A reload brought new rows (the selected one may have changed). */
  get loaded(): ISignal<this, void> {
    return this._loaded;
  }

  /** Every row last loaded, as the service listed them. */
  get rows(): ReadonlyArray<T> {
    return this._rows;
  }

  /** The rows shown, filtered and sorted. */
  get shown(): ReadonlyArray<T> {
    return queryRows(this._rows, this.options.columns, this._query);
  }

  get query(): Readonly<IRowQuery> {
    return this._query;
  }

  /** The selected row as last loaded; null when none is selected or it is gone. */
  get selected(): T | null {
    return this._rows.find(r => this.options.rowKey(r) === this._selectedKey) ?? null;
  }

  select(key: string | null): void {
    if (key === this._selectedKey) {
      return;
    }
    this._selectedKey = key;
    this.renderRows();
    this._selectionChanged.emit(this.selected);
  }

  setSort(sort: ISortState | null): void {
    this._query = { ...this._query, sort };
    this.renderHeaders();
    this.renderRows();
  }

  setText(text: string): void {
    this._query = { ...this._query, text };
    if (this.filterInput.value !== text) {
      this.filterInput.value = text;
    }
    this.renderRows();
  }

  /** Keep only the rows whose `key` column reads `value` ('' : all). */
  setChoice(key: string, value: string): void {
    this._query = { ...this._query, choices: { ...this._query.choices, [key]: value } };
    this.renderChoices();
    this.renderRows();
  }

  /** Reload; a call while one is under way joins it. */
  refresh(): Promise<void> {
    if (!this._pending) {
      this._pending = this.load().finally(() => (this._pending = null));
    }
    return this._pending;
  }

  dispose(): void {
    this._poller.stop();
    super.dispose();
  }

  protected onAfterAttach(): void {
    if (!this._started) {
      this._started = true;
      this._poller.start();
    }
    void this.refresh();
  }

  protected onAfterShow(): void {
    void this.refresh();
  }

  private async load(): Promise<void> {
    try {
      const rows = await this.options.load();
      if (this.isDisposed) {
        return;
      }
      const before = this.selected;
      this._rows = rows;
      this._loadedOnce = true;
      this.errorNode.replaceChildren();
      this.renderChoices();
      this.renderRows();
      this._loaded.emit();
      if (before !== null && this.selected === null) {
        this._selectionChanged.emit(null); // the selected row is gone
      }
    } catch (error) {
      if (this.isDisposed) {
        return;
      }
      const message = (error as Error).message || String(error);
      this.errorNode.replaceChildren(alertNode(message, `${this.options.testId}-error`));
      if (!this._loadedOnce) {
        this.noteNode.textContent = '';
      }
    }
  }

  private renderHeaders(): void {
    const sort = this._query.sort;
    for (const [key, th] of this.headers) {
      const sorted = sort?.key === key ? sort.direction : null;
      th.setAttribute('aria-sort', sorted === 'asc' ? 'ascending' : sorted === 'desc' ? 'descending' : 'none');
      th.classList.toggle('jp-mod-sorted', sorted !== null);
      th.dataset.sort = sorted ?? '';
    }
  }

  private renderChoices(): void {
    for (const column of this.options.columns) {
      const select = this.choiceSelects.get(column.key);
      if (!select) {
        continue;
      }
      const chosen = this._query.choices[column.key] ?? '';
      const options: [string, string][] = [['', `Any ${column.label.toLowerCase()}`]];
      for (const text of choicesOf(this._rows, column, chosen)) {
        options.push([text, text]);
      }
      setOptions(select, options);
      select.value = chosen;
    }
  }

  private renderRows(): void {
    const { columns, rowKey, testId } = this.options;
    const shown = this.shown;
    // A reload that changed nothing leaves the rows (and the one about to be clicked) in place.
    const drawn = JSON.stringify([
      shown.map(r => columns.map(c => cellText(c, r))),
      shown.map(rowKey),
      this._selectedKey,
      this._loadedOnce
    ]);
    if (drawn === this._drawn) {
      return;
    }
    this._drawn = drawn;
    this.tbody.replaceChildren(
      ...shown.map(row => {
        const key = rowKey(row);
        const tr = el('tr', 'jp-Stratolab-tableRow', undefined, `${testId}-row-${key}`);
        tr.dataset.rowKey = key;
        tr.tabIndex = 0;
        const selected = key === this._selectedKey;
        tr.classList.toggle('jp-mod-selected', selected);
        tr.setAttribute('aria-selected', String(selected));
        for (const column of columns) {
          const td = el('td', `jp-Stratolab-col-${column.kind ?? 'string'}`, cellText(column, row));
          td.dataset.column = column.key;
          tr.append(td);
        }
        tr.addEventListener('click', () => this.select(key));
        tr.addEventListener('keydown', event => {
          if (event.key === 'Enter' || event.key === ' ') {
            event.preventDefault();
            this.select(key);
          }
        });
        return tr;
      })
    );
    const filtered = this._rows.length - shown.length;
    this.countNode.textContent = this._loadedOnce
      ? `${shown.length} shown${filtered ? ` of ${this._rows.length}` : ''}`
      : '';
    if (!this._loadedOnce) {
      return;
    }
    this.noteNode.classList.remove('jp-Stratolab-loading');
    if (this._rows.length === 0) {
      this.noteNode.textContent = this.options.emptyText;
      this.noteNode.dataset.testid = `${testId}-empty`;
    } else if (shown.length === 0) {
      this.noteNode.textContent = 'No rows match the filter.';
      this.noteNode.dataset.testid = `${testId}-no-match`;
    } else {
      this.noteNode.textContent = '';
      delete this.noteNode.dataset.testid;
    }
  }

  private readonly filterInput: HTMLInputElement;
  private readonly countNode: HTMLElement;
  private readonly errorNode: HTMLElement;
  private readonly noteNode: HTMLElement;
  private readonly tbody: HTMLTableSectionElement;
  private readonly headers = new Map<string, HTMLTableCellElement>();
  private readonly choiceSelects = new Map<string, HTMLSelectElement>();
  private _query: IRowQuery;
  private _rows: T[] = [];
  private _selectedKey: string | null = null;
  private _loadedOnce = false;
  private _drawn = '';
  private _started = false;
  private _pending: Promise<void> | null = null;
  private readonly _selectionChanged = new Signal<this, T | null>(this);
  private readonly _loaded = new Signal<this, void>(this);
  private readonly _poller = new Poller(
    this,
    () => this.refresh(),
    () => this.options.busy?.(this._rows) ?? false,
    this.options.activeMs ?? 3000,
    this.options.idleMs ?? 10000
  );
}
