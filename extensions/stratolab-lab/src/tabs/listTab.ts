/**
 * A main-area tab over one of the services' lists: the table on the left, the selected row's detail
 * on the right (its fields and the actions the sidebar offers for it). The detail follows the
 * table's reloads, and is redrawn only when the row changed, so a button about to be clicked stays.
 */
import { SplitPanel, Widget } from '@lumino/widgets';

import { el, facts, guarded } from '../ui';
import { DataTable, ITableOptions } from './table';

/** What a row's detail view shows. */
export interface IDetail {
  title: string;
  /** `[label, value, key]`: the value has the test id `${detail test id}-KEY`. */
  fields: ReadonlyArray<readonly [string, string, string]>;
  actions: HTMLElement[];
  /** Below the actions: an error, a deploy's outcome. */
  extra?: HTMLElement[];
}

/** Runs an action; shows its error in a dialog; reloads the table after. */
export type Guard = (run: () => Promise<unknown>) => Promise<void>;

export interface IListTabOptions<T> extends Omit<ITableOptions<T>, 'testId'> {
  /** Names the tab's widget id (`stratolab-tab-ID`) and test ids (`stratolab-tab-ID-...`). */
  id: string;
  label: string;
  /** The title of the error dialogs of its actions. */
  actionTitle: string;
  detail: (row: T, guard: Guard, testIdPrefix: string) => IDetail;
}

export class ListTab<T> extends SplitPanel {
  constructor(private readonly spec: IListTabOptions<T>) {
    super({ orientation: 'horizontal', spacing: 4 });
    this.addClass('jp-Stratolab-listTab');
    this.testId = `stratolab-tab-${spec.id}`;
    this.node.dataset.testid = this.testId;
    this.table = new DataTable<T>({ ...spec, testId: this.testId });
    this.detailWidget = new Widget({ node: el('aside', 'jp-Stratolab-tabDetail', undefined, `${this.testId}-detail`) });
    this.detailWidget.node.append(
      el('p', 'jp-Stratolab-note', 'Select a row to see its details and actions.', `${this.testId}-detail-none`)
    );
    this.addWidget(this.table);
    this.addWidget(this.detailWidget);
    this.setRelativeSizes([3, 2]);
    this.table.selectionChanged.connect(() => this.renderDetail());
    this.table.loaded.connect(() => this.renderDetail());
  }

  readonly table: DataTable<T>;

  /** Reload the table (and the detail with it). */
  refresh(): Promise<void> {
    return this.table.refresh();
  }

  private renderDetail(): void {
    const row = this.table.selected;
    const drawn = JSON.stringify(row);
    if (drawn === this._drawn) {
      return;
    }
    this._drawn = drawn;
    const node = this.detailWidget.node;
    if (row === null) {
      node.replaceChildren(
        el('p', 'jp-Stratolab-note', 'Select a row to see its details and actions.', `${this.testId}-detail-none`)
      );
      return;
    }
    const prefix = `${this.testId}-detail`;
    const guard: Guard = run => guarded(this.spec.actionTitle, run, () => this.refresh());
    const detail = this.spec.detail(row, guard, prefix);
    const { node: list, add } = facts(prefix);
    for (const [label, value, key] of detail.fields) {
      add(label, value, key);
    }
    const actions = el('div', 'jp-Stratolab-actions', undefined, `${prefix}-actions`);
    actions.append(...detail.actions);
    node.replaceChildren(
      el('h3', 'jp-Stratolab-tabDetailTitle', detail.title, `${prefix}-title`),
      list,
      actions,
      ...(detail.extra ?? [])
    );
  }

  private readonly testId: string;
  private readonly detailWidget: Widget;
  private _drawn = 'null';
}
