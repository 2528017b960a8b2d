/**
 * The Stratolab sidebar panel: a header with a Refresh button above a list of sections.
 *
 * Each feature of the platform adds its own `PanelSection`; the panel only knows how to lay them out
 * and refresh them together.
 */
import { Panel, Widget } from '@lumino/widgets';

import { alertNode, button, el, mostRecent, NodeCache, SectionModel, showList } from '../ui';
import { stratolabIcon } from '../ui/icons';

/**
 * One titled block of the panel, which knows how to reload its own content.
 */
export abstract class PanelSection extends Widget {
  constructor(options: { title: string; testId: string; className?: string }) {
    super({ node: document.createElement('section') });
    this.addClass('jp-Stratolab-section');
    if (options.className) {
      this.addClass(options.className);
    }
    this.node.dataset.testid = options.testId;
    const heading = document.createElement('h3');
    heading.className = 'jp-Stratolab-sectionTitle';
    heading.textContent = options.title;
    this.body = document.createElement('div');
    this.body.className = 'jp-Stratolab-sectionBody';
    this.node.append(heading, this.body);
  }

  /**
   * Reload the section's content; must not throw (show the error in the section instead).
   */
  abstract refresh(): Promise<void>;

  /** A button beside the section's title (one opening the section's list as a main-area table). */
  addTitleButton(button: HTMLElement): void {
    this.node.querySelector('.jp-Stratolab-sectionTitle')?.append(button);
  }

  /** What "Show all" under a summarized list does: the tabs module opens the list as a table. */
  moreAction: (() => void) | null = null;

  /**
   * The line under a list the sidebar summarizes: how many `noun` it leaves out, and a button that
   * shows them all (when `moreAction` is set); nothing when none is left out.
   */
  protected moreNote(hidden: number, noun: string, testId: string): HTMLElement[] {
    if (!hidden) {
      return [];
    }
    const note = el('p', 'jp-Stratolab-note jp-Stratolab-more', `${hidden} more ${noun} `, testId);
    if (this.moreAction) {
      note.append(button('Show all…', this.moreAction, `${testId}-open`, `Open every one of your ${noun} in a table`));
    }
    return [note];
  }

  /** Show an error above the last good content: it is still the best we know. */
  protected showError(message: string, testId: string): void {
    const stale = this.body.querySelectorAll(':scope > :not(.jp-Stratolab-error, .jp-Stratolab-loading)');
    this.body.replaceChildren(alertNode(message, testId), ...Array.from(stale));
  }

  protected readonly body: HTMLDivElement;
}

/**
 * A section that shows a `SectionModel`: it renders when the model has loaded new data, and shows a
 * failed load's error (in `errorNode`, which the section puts first) above the last good content.
 * The selection and refreshes are the model's.
 */
export abstract class ModelSection<S, M extends SectionModel<S, unknown>> extends PanelSection {
  constructor(
    options: { title: string; testId: string; className?: string; errorTestId: string },
    readonly model: M
  ) {
    super(options);
    model.changed.connect(() => {
      this.errorNode.replaceChildren();
      this.render();
    }, this);
    model.failed.connect((_, message) => this.errorNode.replaceChildren(alertNode(message, options.errorTestId)), this);
  }

  get selected(): S {
    return this.model.selected;
  }

  set selected(value: S) {
    this.model.selected = value;
  }

  /** Reload (`fresh`: after a change, not joining a load under way, which would not show it). */
  refresh(fresh = false): Promise<void> {
    return this.model.refresh(fresh);
  }

  dispose(): void {
    this.model.dispose();
    super.dispose();
  }

  /** Show the model's data. */
  protected abstract render(): void;

  /**
   * A card's title: its name as a button that selects the item (or, selected, unselects it; `hints`
   * say so), then `badges`.
   */
  protected selectableTitle(
    id: number,
    name: string,
    testId: string,
    hints: { select: string; unselect: string },
    ...badges: HTMLElement[]
  ): HTMLElement {
    const title = el('div', 'jp-Stratolab-functionTitle');
    const button = el('button', 'jp-Stratolab-scheduleName', name, testId);
    button.type = 'button';
    button.title = id === this.model.selected ? hints.unselect : hints.select;
    button.addEventListener('click', () => (this.selected = (this.model.selected === id ? null : id) as S));
    title.append(button, ...badges);
    return title;
  }

  /**
   * Show a card per item in `container` (the selected one marked by `render`), each node kept while
   * its item and selection are unchanged; or the note `empty` (text, test id) when there are none.
   * With `more`, only a summary (`mostRecent`) and a line saying how many more there are.
   */
  protected showCards<T extends { id: number }>(
    container: HTMLElement,
    cache: NodeCache<number>,
    items: ReadonlyArray<T>,
    render: (item: T) => HTMLElement,
    empty: [text: string, testId: string],
    more?: { noun: string; testId: string }
  ): void {
    // a summary: the newest items (ids grow) and the selected one; the table holds them all
    const { shown, hidden } = more
      ? mostRecent(items, item => (item.id === this.model.selected ? Infinity : item.id))
      : { shown: items, hidden: 0 };
    const cards = shown.map(item =>
      cache.reuse(item.id, { item, selected: item.id === this.model.selected }, () => render(item))
    );
    showList(container, [...cards, ...(more ? this.moreNote(hidden, more.noun, more.testId) : [])], empty);
  }

  protected readonly errorNode = el('div', 'jp-Stratolab-jobsError');
}

/**
 * The sidebar panel.
 */
export class StratolabPanel extends Panel {
  constructor(sections: PanelSection[]) {
    super();
    this.id = 'stratolab-panel';
    this.addClass('jp-Stratolab-panel');
    this.title.icon = stratolabIcon;
    this.title.caption = 'Stratolab';
    this.node.dataset.testid = 'stratolab-panel';

    const header = new Widget({ node: el('header', 'jp-Stratolab-header') });
    header.node.append(el('h2', 'jp-Stratolab-title', 'Stratolab'));
    this._refreshButton = el('button', 'jp-Button jp-Stratolab-refresh', 'Refresh', 'stratolab-refresh');
    this._refreshButton.type = 'button';
    this._refreshButton.title = 'Reload the information in this panel';
    this._refreshButton.addEventListener('click', () => void this.refresh());
    header.node.append(this._refreshButton);
    this.addWidget(header);

    for (const section of sections) {
      this.addSection(section);
    }
  }

  /** The sections, in display order. */
  get sections(): ReadonlyArray<PanelSection> {
    return this._sections;
  }

  addSection(section: PanelSection): void {
    this._sections.push(section);
    this.addWidget(section);
  }

  /** Reload every section; concurrent calls share one round of requests. */
  refresh(): Promise<void> {
    if (!this._pending) {
      this._refreshButton.disabled = true;
      this._pending = Promise.all(this._sections.map(s => s.refresh())).then(() => {
        this._pending = null;
        this._refreshButton.disabled = false;
      });
    }
    return this._pending;
  }

  /** Seconds between automatic refreshes while the panel is visible; 0 turns them off. */
  set refreshInterval(seconds: number) {
    window.clearInterval(this._timer);
    this._timer = undefined;
    if (seconds > 0) {
      this._timer = window.setInterval(() => {
        if (this.isVisible) {
          void this.refresh();
        }
      }, seconds * 1000);
    }
  }

  dispose(): void {
    window.clearInterval(this._timer);
    super.dispose();
  }

  protected onAfterShow(): void {
    void this.refresh();
  }

  private _sections: PanelSection[] = [];
  private _refreshButton: HTMLButtonElement;
  private _pending: Promise<void> | null = null;
  private _timer: number | undefined;
}
