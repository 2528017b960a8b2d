/**
 * Loading and refreshing: joined loads, polling while visible, and nodes kept across refreshes.
 */

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

/** What a poller asks before each refresh. */
export interface IPollTarget {
  readonly isDisposed: boolean;
  readonly isVisible: boolean;
}

/**
 * Refresh every `activeMs` while `busy()` (something is queued or running), else every `idleMs`;
 * only while the target is visible, and never after it is disposed.
 */
export class Poller {
  constructor(
    private readonly target: IPollTarget,
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
      if (this.target.isDisposed) {
        return;
      }
      if (this.target.isVisible) {
        await this.refresh();
      }
      this.tick(this.busy() ? this.activeMs : this.idleMs);
    }, ms);
  }

  private _timer: number | undefined;
}

/**
 * The node shown last for an id when what it shows has not changed, else a new one: a refresh every
 * few seconds then leaves the nodes (and the buttons someone is about to click) in place.
 */
export class NodeCache<K, N extends Element = HTMLElement> {
  constructor(private readonly limit = 200) {}

  reuse<M extends N>(id: K, shown: unknown, render: () => M): M {
    const key = JSON.stringify(shown);
    const hit = this._nodes.get(id);
    if (this._nodes.size > this.limit) {
      this._nodes.clear();
    }
    if (hit && hit.key === key) {
      return hit.node as M;
    }
    const node = render();
    this._nodes.set(id, { key, node });
    return node;
  }

  get(id: K): N | undefined {
    return this._nodes.get(id)?.node;
  }

  private readonly _nodes = new Map<K, { key: string; node: N }>();
}
