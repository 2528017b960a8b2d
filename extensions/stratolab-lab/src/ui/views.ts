/**
 * One view per key (a function's name) for a host that redraws its cards: the same view, and so the
 * same node with what is open in it, for a key across redraws; the views of keys gone are disposed.
 */
export class ViewsByKey<V extends { dispose(): void }> {
  constructor(private readonly make: (key: string) => V) {}

  for(key: string): V {
    let view = this.views.get(key);
    if (!view) {
      view = this.make(key);
      this.views.set(key, view);
    }
    return view;
  }

  /** Dispose the views of the keys not in `keys`. */
  keepOnly(keys: Iterable<string>): void {
    const kept = new Set(keys);
    for (const [key, view] of this.views) {
      if (!kept.has(key)) {
        view.dispose();
        this.views.delete(key);
      }
    }
  }

  private readonly views = new Map<string, V>();
}
