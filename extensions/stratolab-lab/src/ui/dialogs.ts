/**
 * Dialog bodies and dialogs with forms: a plain DOM form read on accept (`FormBody`), a dialog that
 * stays open while its form is submitted (`FormDialog`), and errors shown next to their fields.
 */
import { Dialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { alertNode, el, setProgress } from './dom';

/** A dialog body that is a plain DOM form; `getValue` reads it when the dialog is accepted. */
export class FormBody<T> extends Widget implements Dialog.IBodyWidget<T> {
  constructor(
    node: HTMLElement,
    private readonly read: () => T
  ) {
    super({ node });
  }

  getValue(): T {
    return this.read();
  }
}

/**
 * Whether `event` is Enter in an input of `form`: then it is stopped (a dialog would otherwise take
 * it as its default button) and the input is returned.
 */
export function enterInField(event: Event, form: HTMLElement): HTMLInputElement | null {
  const target = event.target;
  if (
    event.type !== 'keydown' ||
    (event as KeyboardEvent).key !== 'Enter' ||
    !(target instanceof HTMLInputElement) ||
    !form.contains(target)
  ) {
    return null;
  }
  event.preventDefault();
  event.stopPropagation();
  return target;
}

/** A dialog's form that submits itself: true when the service said yes (the dialog then closes). */
export interface ISubmittingForm<A extends string> extends Widget {
  submit(action: A): Promise<boolean>;
}

/**
 * The body of a dialog that submits itself (`FormDialog`): the errors on top (by the field they are
 * about, `errors`), the form, and a progress line under it.
 */
export abstract class SubmittingForm<A extends string> extends Widget implements ISubmittingForm<A> {
  constructor(options: {
    className: string;
    testId: string;
    /** The test id of the errors on top, and the prefix of those of the fields. */
    errorTestId: string;
    /** The characters of a field's name written as dashes in its error's test id. */
    errorSeparators?: RegExp;
    progressTestId: string;
  }) {
    super({ node: el('div', options.className, undefined, options.testId) });
    this.errors = new FieldErrors(options.errorTestId, options.errorSeparators);
    this.progress = el('div', 'jp-Stratolab-progress', '', options.progressTestId);
    this.node.append(this.errors.top);
  }

  abstract submit(action: A): Promise<boolean>;

  /** Put the form's fields under the errors, above the progress line. */
  protected setForm(form: HTMLElement): void {
    this.node.append(form, this.progress);
  }

  /** Say what is under way (a spinner and `text`); an empty text clears it. */
  protected setProgress(text: string): void {
    setProgress(this.progress, text);
  }

  protected readonly errors: FieldErrors;
  private readonly progress: HTMLElement;
}

/**
 * A dialog that stays open while its form is submitted, and after a refusal (with the input kept):
 * "Create schedule" and "Run now" (or the Tune dialog's "Start") close it only once the service
 * said yes. `actions[i]` is what button `i` submits; null closes the dialog (Cancel).
 */
export class FormDialog<A extends string> extends Dialog<void> {
  constructor(
    private readonly form: ISubmittingForm<A>,
    title: string,
    private readonly actions: (A | null)[],
    buttons: Dialog.IButton[],
    className = 'jp-Stratolab-scheduleDialog'
  ) {
    super({ title, body: form, buttons, hasClose: true, focusNodeSelector: 'input[type=text]' });
    this.addClass(className);
  }

  resolve(index?: number): void {
    const i = index ?? this.actions.length - 1;
    const action = this.actions[i];
    if (!action) {
      super.resolve(index);
      return;
    }
    if (this.busy) {
      return;
    }
    this.setBusy(true);
    void this.form.submit(action).then(ok => {
      this.setBusy(false);
      if (ok) {
        super.resolve(i);
      }
    });
  }

  handleEvent(event: Event): void {
    // Enter in a field (picking a time zone, say) does not submit: the buttons do.
    if (!enterInField(event, this.form.node)) {
      super.handleEvent(event);
    }
  }

  private setBusy(busy: boolean): void {
    this.busy = busy;
    this.node.querySelectorAll<HTMLButtonElement>('.jp-Dialog-footer button').forEach(b => (b.disabled = busy));
  }

  private busy = false;
}

/**
 * The errors of a form, each under the field it is about (`field` as the service names it: `name`,
 * `notify.webhook`, `space.lr.low`), else at the top. Error nodes have the test id
 * `${testIdPrefix}-${field, with the characters in `separators` as dashes}`.
 */
export class FieldErrors {
  constructor(
    private readonly testIdPrefix: string,
    private readonly separators: RegExp = /\./g
  ) {
    this.top = alertNode('', testIdPrefix, 'jp-Stratolab-fieldError jp-Stratolab-topError');
  }

  /** Where errors about no known field go: put it at the top of the form. */
  readonly top: HTMLElement;

  /** A field's row with the place for its error below it (and any note under that). */
  group(row: HTMLElement, field: string, extra?: HTMLElement): HTMLElement {
    const group = el('div', 'jp-Stratolab-fieldGroup');
    group.dataset.field = field;
    const error = alertNode(
      '',
      `${this.testIdPrefix}-${field.replace(this.separators, '-')}`,
      'jp-Stratolab-fieldError'
    );
    this.register(field, error);
    group.append(row, error);
    if (extra) {
      group.append(extra);
    }
    return group;
  }

  /** Errors about `field` go into `node`. */
  register(field: string, node: HTMLElement): void {
    this._nodes.set(field, node);
  }

  /** `input` is marked invalid while an error about `field` is shown. */
  markInput(field: string, input: HTMLElement): void {
    this._inputs.set(field, input);
  }

  /**
   * Show `message` under the field it names, or the nearest field above it (`space.lr.low` goes to
   * the row of `space.lr`), else at the top; mark the input it is about.
   */
  show(field: string, message: string): void {
    let node: HTMLElement | undefined;
    const parts = field ? field.split('.') : [];
    for (let n = parts.length; n > 0 && !node; n--) {
      node = this._nodes.get(parts.slice(0, n).join('.'));
    }
    const target = node ?? this.top;
    target.append(el('div', '', target === this.top && field ? `${field}: ${message}` : message));
    this._inputs.get(field)?.classList.add('jp-mod-invalid');
    target.closest('details')?.setAttribute('open', '');
    target.scrollIntoView?.({ block: 'nearest' });
  }

  clear(field: string): void {
    this._nodes.get(field)?.replaceChildren();
  }

  clearAll(): void {
    this.top.replaceChildren();
    for (const node of this._nodes.values()) {
      node.replaceChildren();
    }
    for (const input of this._inputs.values()) {
      input.classList.remove('jp-mod-invalid');
    }
  }

  /**
   * Editing a field takes back what was said about it; the browser's own checks (which keep the
   * dialog's buttons disabled meanwhile) say what they refuse. `also` clears more (a parent row).
   */
  listen(form: HTMLElement, also?: (field: string) => void): void {
    form.addEventListener('input', event => {
      const target = event.target as HTMLInputElement;
      const group = target.closest?.('.jp-Stratolab-fieldGroup') as HTMLElement | null;
      const field = group?.dataset.field;
      if (field) {
        this.clear(field);
        also?.(field);
        if (target.validity && !target.validity.valid && target.validationMessage) {
          this.show(field, target.validationMessage);
        }
      }
    });
  }

  private readonly _nodes = new Map<string, HTMLElement>();
  private readonly _inputs = new Map<string, HTMLElement>();
}
