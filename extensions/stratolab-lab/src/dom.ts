// DOM helpers shared by the panel, the functions section and the deploy dialog.

/**
 * Small DOM helper: an element with a class, optional text and optional test id.
 */
export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className: string,
  text?: string,
  testId?: string
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  node.className = className;
  if (text !== undefined) {
    node.textContent = text;
  }
  if (testId) {
    node.dataset.testid = testId;
  }
  return node;
}

/**
 * Loads keyed by a selection: a load asked for while one for the same selection is under way joins
 * it, unless `fresh` (after a change, whose effect a load started earlier would not show).
 */
export class JoinedLoads<K> {
  constructor(private readonly loadFor: (key: K) => Promise<void>) {}

  run(key: K, fresh = false): Promise<void> {
    if (!fresh && this._pending && this._pending.key === key) {
      return this._pending.promise;
    }
    const promise = this.loadFor(key).finally(() => {
      if (this._pending?.promise === promise) {
        this._pending = null;
      }
    });
    this._pending = { key, promise };
    return promise;
  }

  private _pending: { key: K; promise: Promise<void> } | null = null;
}

/**
 * Refresh a panel section every `activeMs` while `busy()` (something is queued or running), else every
 * `idleMs`; only while the section is visible, and never after it is disposed.
 */
export class Poller {
  constructor(
    private readonly section: { readonly isDisposed: boolean; readonly isVisible: boolean },
    private readonly refresh: () => Promise<void>,
    private readonly busy: () => boolean,
    private readonly activeMs: number,
    private readonly idleMs: number
  ) {}

  start(): void {
    this.tick(this.activeMs);
  }

  stop(): void {
    window.clearTimeout(this._timer);
  }

  private tick(ms: number): void {
    window.clearTimeout(this._timer);
    this._timer = window.setTimeout(async () => {
      if (this.section.isDisposed) {
        return;
      }
      if (this.section.isVisible) {
        await this.refresh();
      }
      this.tick(this.busy() ? this.activeMs : this.idleMs);
    }, ms);
  }

  private _timer: number | undefined;
}
