/**
 * The Usage section of the panel: this month's usage and cost, the budgets as gauges (ok, warning,
 * used up; when each frees up), cost per day as a chart, and the breakdown by thing (servers, runs,
 * functions) as a table sorted by a click on its headings.
 */
import { ModelSection } from '../environment/panel';
import { el, facts } from '../ui';
import { IBreakdownLine, IBudget } from './api';
import { chartNode } from './chart';
import {
  budgetFraction,
  budgetState,
  budgetText,
  formatAmount,
  formatCost,
  freesText,
  gaugeWidth,
  gbSeconds,
  kindLabel,
  SortOrder,
  sortRows,
  thingLabel,
  totalsFacts
} from './format';
import { UsageModel } from './model';

/** The breakdown table's columns: heading, what it sorts by, the cell's text. */
type Column = [heading: string, key: keyof IBreakdownLine, text: (line: IBreakdownLine, currency: string) => string];

const COLUMNS: Column[] = [
  ['Thing', 'key', line => thingLabel(line)],
  ['CPU h', 'cpu_core_hours', line => formatAmount(line.cpu_core_hours)],
  ['GPU h', 'gpu_hours', line => formatAmount(line.gpu_hours)],
  // the currency is in the heading: the sidebar is narrow
  ['Cost', 'cost', line => formatCost(line.cost, '')]
];

/** The most things the sidebar's table lists (in its order). */
const MAX_ROWS = 12;

export class UsageSection extends ModelSection<null, UsageModel> {
  constructor(model: UsageModel = new UsageModel()) {
    super(
      {
        title: 'Usage',
        testId: 'stratolab-usage',
        className: 'jp-Stratolab-usage',
        errorTestId: 'stratolab-usage-error'
      },
      model
    );
    this.body.append(this.errorNode, this.content);
    this.content.append(el('p', 'jp-Stratolab-loading', 'Loading…'));
  }

  protected render(): void {
    const data = this.model.data;
    if (!data) {
      return;
    }
    const { usage, budgets, days } = data;
    const currency = usage.currency;
    const month = el('p', 'jp-Stratolab-usageCost');
    month.append(
      el('span', 'jp-Stratolab-usageCostValue', formatCost(usage.totals.cost, currency), 'stratolab-usage-cost'),
      el('span', 'jp-Stratolab-note', ` this month, since ${usage.from.slice(0, 10)}`, 'stratolab-usage-period')
    );

    const { node: totals, add } = facts('stratolab-usage-total');
    for (const [label, key, text] of totalsFacts(usage.totals)) {
      add(label, text, key);
    }

    this.content.replaceChildren(
      month,
      totals,
      this.renderBudgets(budgets, currency),
      el('h4', 'jp-Stratolab-usageHeading', 'Cost per day'),
      chartNode(days, currency, 'stratolab-usage-chart'),
      el('h4', 'jp-Stratolab-usageHeading', 'By thing'),
      this.renderBreakdown(usage.breakdown, currency)
    );
  }

  private renderBudgets(budgets: ReadonlyArray<IBudget>, currency: string): HTMLElement {
    const node = el('div', 'jp-Stratolab-budgets', undefined, 'stratolab-usage-budgets');
    if (!budgets.length) {
      node.append(el('p', 'jp-Stratolab-note', 'No budgets apply to you.', 'stratolab-usage-budgets-empty'));
      return node;
    }
    budgets.forEach((budget, i) => {
      const state = budgetState(budget);
      const id = `stratolab-usage-budget-${i}`;
      const gauge = el('div', `jp-Stratolab-budget jp-mod-${state}`, undefined, id);
      gauge.dataset.budget = budget.name;
      gauge.dataset.state = state;
      const title = el('div', 'jp-Stratolab-budgetTitle');
      title.append(
        el('span', 'jp-Stratolab-budgetName', budget.name, `${id}-name`),
        el('span', `jp-Stratolab-badge jp-mod-${state}`, state === 'exceeded' ? 'used up' : state, `${id}-state`)
      );
      const track = el('div', 'jp-Stratolab-gauge');
      track.setAttribute('role', 'meter');
      track.setAttribute('aria-valuemin', '0');
      track.setAttribute('aria-valuemax', String(budget.limit));
      track.setAttribute('aria-valuenow', String(budget.used));
      track.setAttribute('aria-label', `Budget ${budget.name}`);
      const bar = el('div', 'jp-Stratolab-gaugeBar');
      bar.style.width = `${gaugeWidth(budgetFraction(budget))}%`;
      track.append(bar);
      gauge.append(title, track, el('div', 'jp-Stratolab-budgetLine', budgetText(budget, currency), `${id}-used`));
      const frees = freesText(budget);
      if (frees) {
        gauge.append(el('div', 'jp-Stratolab-note', frees, `${id}-frees`));
      }
      if (state === 'exceeded') {
        const what = budget.action === 'stop' ? 'New servers, runs and deploys are refused' : 'Flagged to the admins';
        gauge.append(el('div', 'jp-Stratolab-note', `${what} until it frees up.`, `${id}-action`));
      }
      node.append(gauge);
    });
    return node;
  }

  private renderBreakdown(lines: ReadonlyArray<IBreakdownLine>, currency: string): HTMLElement {
    if (!lines.length) {
      return el('p', 'jp-Stratolab-note', 'Nothing used this month yet.', 'stratolab-usage-breakdown-empty');
    }
    const table = el('table', 'jp-Stratolab-usageTable', undefined, 'stratolab-usage-breakdown');
    const head = el('tr', '');
    for (const [name, key] of COLUMNS) {
      const heading = key === 'cost' && currency ? `${name} ${currency}` : name;
      const th = el('th', 'jp-Stratolab-sortable', heading, `stratolab-usage-sort-${String(key)}`);
      th.setAttribute('role', 'columnheader');
      th.title = `Sort by ${heading}`;
      if (key === this.sortKey) {
        th.setAttribute('aria-sort', this.sortOrder === 'asc' ? 'ascending' : 'descending');
        th.textContent = `${heading} ${this.sortOrder === 'asc' ? '▲' : '▼'}`;
      }
      th.addEventListener('click', () => {
        this.sortOrder = key === this.sortKey && this.sortOrder === 'desc' ? 'asc' : 'desc';
        this.sortKey = key;
        this.render();
      });
      head.append(th);
    }
    table.createTHead().append(head);
    const body = table.createTBody();
    const sorted = sortRows(lines, this.sortKey, this.sortOrder);
    sorted.slice(0, MAX_ROWS).forEach((line, i) => {
      const row = el('tr', '', undefined, `stratolab-usage-row-${i}`);
      row.dataset.key = line.key;
      const title = [
        `${formatAmount(line.memory_gb_hours)} GB-hours`,
        `${line.requests ?? 0} requests`,
        `${formatAmount(gbSeconds(line.function_gb_seconds))} function GB-seconds`
      ].join(' · ');
      row.title = title;
      for (const [, key, text] of COLUMNS) {
        const cell = el('td', `jp-Stratolab-usageCell-${String(key)}`);
        if (key === 'key') {
          // the thing's name, and under it what kind of thing it is (the sidebar is narrow)
          cell.append(
            el('span', 'jp-Stratolab-usageThing', text(line, currency)),
            el('span', 'jp-Stratolab-usageKind', kindLabel(line.kind))
          );
        } else {
          cell.textContent = text(line, currency);
        }
        row.append(cell);
      }
      body.append(row);
    });
    if (sorted.length <= MAX_ROWS) {
      return table;
    }
    const node = el('div', '');
    const more = sorted.length - MAX_ROWS;
    node.append(
      table,
      el('p', 'jp-Stratolab-note', `${more} more (the CLI lists them all: stratolab usage)`, 'stratolab-usage-more')
    );
    return node;
  }

  private sortKey: keyof IBreakdownLine = 'cost';
  private sortOrder: SortOrder = 'desc';
  private readonly content = el('div', 'jp-Stratolab-usageContent');
}
