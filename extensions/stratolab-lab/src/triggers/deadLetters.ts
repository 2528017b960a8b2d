/**
 * A function's dead letters: the events whose last delivery failed (after every retry, or past
 * their maximum age), each with its error, and "Redrive" (deliver it again, with fresh retries) per
 * event and for all of them. Loaded when opened, and again when the dead count changes.
 */
import { actionButtons, alertNode, el, guarded, showList } from '../ui';
import { deadLetters, ITriggerEvent, redrive } from './api';
import { deadLetterLine } from './format';

export class DeadLettersView {
  /** `testId`: the prefix of the test ids (`${testId}`, `-redrive-all`, `-ID`, `-ID-redrive`, ...). */
  constructor(
    private readonly fn: string,
    private readonly testId: string,
    /** After a redrive: the triggers' counts changed. */
    private readonly onRedriven: () => Promise<void>
  ) {
    this.node = el('details', 'jp-Stratolab-details jp-Stratolab-deadLetters', undefined, testId);
    this.summary = el('summary', 'jp-Stratolab-summary', 'Dead letters');
    const body = el('div', 'jp-Stratolab-form');
    const act = actionButtons(testId, run => this.guard(run));
    this.redriveAll = act('Redrive all', `Deliver every dead event of ${fn} again`, () => redrive({ function: fn }));
    const bar = el('div', 'jp-Stratolab-actions');
    bar.append(this.redriveAll);
    body.append(this.errorNode, bar, this.listNode);
    this.node.append(this.summary, body);
    this.node.addEventListener('toggle', () => {
      if (this.node.open) {
        void this.refresh();
      }
    });
  }

  readonly node: HTMLDetailsElement;

  /** The number of dead events, as the triggers count them: reloads the list when it changed. */
  setCount(count: number): void {
    this.summary.textContent = `Dead letters (${count})`;
    this.summary.dataset.testid = `${this.testId}-summary`;
    this.redriveAll.disabled = count === 0;
    if (count !== this.count) {
      this.count = count;
      if (this.node.open) {
        void this.refresh();
      }
    }
  }

  async refresh(): Promise<void> {
    const seq = ++this.seq;
    try {
      const events = await deadLetters(this.fn);
      if (seq === this.seq) {
        this.errorNode.replaceChildren();
        this.render(events);
      }
    } catch (error) {
      if (seq === this.seq) {
        this.errorNode.replaceChildren(alertNode((error as Error).message || String(error), `${this.testId}-error`));
      }
    }
  }

  private render(events: ITriggerEvent[]): void {
    showList(
      this.listNode,
      events.map(event => this.renderEvent(event)),
      ['No dead letters: every event was handled or is still being tried.', `${this.testId}-empty`]
    );
  }

  private renderEvent(event: ITriggerEvent): HTMLElement {
    const id = `${this.testId}-${event.id}`;
    const row = el('div', 'jp-Stratolab-deadLetter', undefined, id);
    row.append(el('div', 'jp-Stratolab-deadLetterLine', deadLetterLine(event), `${id}-line`));
    if (event.error) {
      row.append(el('pre', 'jp-Stratolab-deadLetterError', event.error, `${id}-error`));
    }
    const act = actionButtons(id, run => this.guard(run));
    const actions = el('div', 'jp-Stratolab-actions');
    actions.append(
      act('Redrive', 'Deliver this event again, with fresh retries', () => redrive({ events: [event.id] }))
    );
    row.append(actions);
    return row;
  }

  /** Run an action; show its error in a dialog; reload the list and the triggers after. */
  private guard(run: () => Promise<unknown>): Promise<void> {
    return guarded('Stratolab triggers', run, async () => {
      await Promise.all([this.refresh(), this.onRedriven()]);
    });
  }

  private readonly summary: HTMLElement;
  private readonly redriveAll: HTMLButtonElement;
  private readonly errorNode = el('div', '');
  private readonly listNode = el('div', 'jp-Stratolab-deadLetterList');
  private count = -1;
  private seq = 0;
}
