/**
 * The Triggers part of a function's detail (its sidebar card, its row in the Functions tab, the
 * Deploy dialog's outcome): the function's triggers with their source, state and event counts,
 * pause/resume/delete, "Add trigger…", and the function's dead letters.
 *
 * A collapsible block, loaded when opened and then polled while it is open and visible (faster while
 * events are pending or running). Hosts redraw their cards on every refresh; they keep one view per
 * function (`TriggersViews`) and put the same node back, so what is open and the buttons stay.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';

import { actionButtons, alertNode, copyable, el, facts, guarded, NodeCache, Poller, showList, ViewsByKey } from '../ui';
import { deleteTrigger, ITrigger, listTriggers, setPaused } from './api';
import { DeadLettersView } from './deadLetters';
import { countsText, deadCount, deliveryText, hasWork, inboxPath, sourceSummary, triggerState } from './format';
import { openTriggerDialog } from './form';
import { kindLabel } from './kinds';

export interface ITriggersViewOptions {
  /** The function's name (the triggers service lists the caller's own). */
  fn: string;
  /** The prefix of the test ids: `${testId}`, `-add`, `-empty`, `-ID`, `-ID-state`, `-dlq`, ... */
  testId: string;
  /** Open at first (it loads then). */
  open?: boolean;
  /** Show a folder in the file browser (an upload trigger's inbox); no "Open folder" button without it. */
  openFolder?: (path: string) => Promise<unknown>;
}

export class TriggersView {
  constructor(private readonly options: ITriggersViewOptions) {
    const { fn, testId } = options;
    this.node = el('details', 'jp-Stratolab-details jp-Stratolab-triggers', undefined, testId);
    this.summary = el('summary', 'jp-Stratolab-summary', 'Triggers', `${testId}-summary`);
    const body = el('div', 'jp-Stratolab-triggersBody');
    const act = actionButtons(testId, run => this.guard(run));
    const add = act('Add trigger', `Call ${fn} on uploads, messages, table changes or a timer`, () =>
      openTriggerDialog(fn, trigger => this.created(trigger))
    );
    add.textContent = 'Add trigger…';
    add.dataset.testid = `${testId}-add`;
    this.deadLetters = new DeadLettersView(fn, `${testId}-dlq`, () => this.refresh());
    const bar = el('div', 'jp-Stratolab-actions');
    bar.append(add);
    this.listNode.append(el('p', 'jp-Stratolab-loading', 'Loading…'));
    body.append(this.errorNode, this.listNode, bar, this.deadLetters.node);
    this.node.append(this.summary, body);
    this.node.addEventListener('toggle', () => {
      if (this.node.open) {
        this.start();
      }
    });
    if (options.open) {
      this.node.open = true;
      this.start();
    }
  }

  readonly node: HTMLDetailsElement;

  get isDisposed(): boolean {
    return this._isDisposed;
  }

  /** Open, in the page, and shown (not in a hidden tab or a collapsed panel). */
  get isVisible(): boolean {
    return this.node.open && this.node.isConnected && this.node.offsetParent !== null;
  }

  /** The triggers last loaded. */
  get triggers(): ReadonlyArray<ITrigger> {
    return this._triggers;
  }

  /** Reload (only while open: a closed view loads when opened). */
  async refresh(): Promise<void> {
    if (!this.node.open || this._isDisposed) {
      return;
    }
    const seq = ++this.seq;
    try {
      const triggers = await listTriggers(this.options.fn);
      if (seq !== this.seq || this._isDisposed) {
        return;
      }
      this._triggers = triggers;
      this.errorNode.replaceChildren();
      this.render();
    } catch (error) {
      if (seq === this.seq && !this._isDisposed) {
        this.errorNode.replaceChildren(
          alertNode((error as Error).message || String(error), `${this.options.testId}-error`)
        );
      }
    }
  }

  dispose(): void {
    this._isDisposed = true;
    this.poller.stop();
  }

  private start(): void {
    if (!this.started) {
      this.started = true;
      this.poller.start();
    }
    void this.refresh();
  }

  private render(): void {
    const triggers = this._triggers;
    this.summary.textContent = `Triggers (${triggers.length})`;
    showList(
      this.listNode,
      triggers.map(t => this.cards.reuse(t.id, { t, key: this.keys.get(t.id) ?? null }, () => this.renderTrigger(t))),
      [
        'No triggers: add one to call this function on uploads, messages, table changes or a timer.',
        `${this.options.testId}-empty`
      ]
    );
    this.deadLetters.setCount(deadCount(triggers));
  }

  private renderTrigger(trigger: ITrigger): HTMLElement {
    const id = `${this.options.testId}-${trigger.id}`;
    const card = el('div', 'jp-Stratolab-trigger', undefined, id);
    const { state, text } = triggerState(trigger);
    const title = el('div', 'jp-Stratolab-functionTitle');
    title.append(
      el('span', 'jp-Stratolab-functionName', trigger.name),
      el('span', 'jp-Stratolab-badge', kindLabel(trigger.kind), `${id}-kind`),
      el('span', `jp-Stratolab-badge jp-Stratolab-triggerState jp-mod-${state}`, text, `${id}-state`)
    );
    card.append(title);

    const { node: list, add: fact } = facts(id);
    fact('Source', sourceSummary(trigger), 'source');
    const inbox = inboxPath(trigger);
    if (inbox) {
      fact('Inbox', `~/${inbox}`, 'inbox');
    }
    fact('Events', countsText(trigger.counts), 'counts');
    fact('Delivery', deliveryText(trigger), 'delivery');
    card.append(list);
    if (state === 'error') {
      card.append(alertNode(trigger.status.error ?? '', `${id}-error`));
    }
    if (trigger.kind === 'cloudevents' && trigger.ingress_url) {
      card.append(el('div', 'jp-Stratolab-fieldLabel', 'Ingress URL'), copyable(trigger.ingress_url, `${id}-ingress`));
    }
    const key = this.keys.get(trigger.id);
    if (key) {
      card.append(this.keyNote(trigger, key, id));
    }

    const act = actionButtons(`${id}-action`, run => this.guard(run));
    const actions = el('div', 'jp-Stratolab-actions');
    actions.append(
      trigger.paused
        ? act('Resume', 'Start taking events again', () => setPaused(trigger.id, false))
        : act('Pause', 'Stop taking events; the source keeps them where it can', () => setPaused(trigger.id, true))
    );
    const opener = this.options.openFolder;
    if (inbox && opener) {
      actions.append(
        act('Open folder', `Show ~/${inbox} in the file browser`, () => opener(inbox.replace(/\/+$/, '')))
      );
    }
    actions.append(act('Delete', 'Delete the trigger; events not yet handled are dropped', () => this.remove(trigger)));
    card.append(actions);
    return card;
  }

  /** The trigger's key, shown once after its creation: senders put it in the X-Trigger-Key header. */
  private keyNote(trigger: ITrigger, key: string, id: string): HTMLElement {
    const note = el('div', 'jp-Stratolab-triggerKey');
    const url = trigger.kind === 'upload' ? trigger.upload_url : trigger.ingress_url;
    const hide = actionButtons(`${id}-key`, run => this.guard(run))('Hide', 'Hide the key', async () => {
      this.keys.delete(trigger.id);
    });
    note.append(
      el('div', 'jp-Stratolab-fieldLabel', 'Trigger key'),
      copyable(key, `${id}-key`),
      el(
        'div',
        'jp-Stratolab-note jp-Stratolab-keyNote',
        `Shown once: store it now. Senders put it in the X-Trigger-Key header${url ? ` of their requests to ${url}` : ''}.`
      ),
      hide
    );
    return note;
  }

  private async remove(trigger: ITrigger): Promise<void> {
    const result = await showDialog({
      title: `Delete trigger ${trigger.name}?`,
      body: `${this.options.fn} is no longer called for its events; ${countsText(trigger.counts)}.`,
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Delete' })]
    });
    if (result.button.accept) {
      await deleteTrigger(trigger.id);
      this.keys.delete(trigger.id);
    }
  }

  private created(trigger: ITrigger): void {
    if (trigger.key) {
      this.keys.set(trigger.id, trigger.key);
    }
    this.node.open = true;
    void this.refresh();
  }

  /** Run an action; show its error in a dialog; reload after. */
  private guard(run: () => Promise<unknown>): Promise<void> {
    return guarded('Stratolab triggers', run, () => this.refresh());
  }

  private readonly summary: HTMLElement;
  private readonly errorNode = el('div', '');
  private readonly listNode = el('div', 'jp-Stratolab-triggerList');
  private readonly deadLetters: DeadLettersView;
  private readonly cards = new NodeCache<number>();
  /** Keys of the triggers created here, until hidden: the service shows each only once. */
  private readonly keys = new Map<number, string>();
  private _triggers: ITrigger[] = [];
  private _isDisposed = false;
  private started = false;
  private seq = 0;
  private readonly poller = new Poller(
    this,
    () => this.refresh(),
    () => hasWork(this._triggers),
    2000,
    10000
  );
}

/**
 * One `TriggersView` per function of a host that redraws its cards: the same view (and node) for a
 * function across redraws, and the views of functions gone disposed.
 */
export class TriggersViews extends ViewsByKey<TriggersView> {}
