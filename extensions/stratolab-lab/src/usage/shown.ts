/**
 * Which usage notifications the lab has shown: each is shown once (pure: jest checks it).
 */
import type { IUsageNotification } from './api';

/** Which notifications were shown already (pure: jest checks it). */
export class ShownNotifications {
  /** The ones of `list` not shown yet, oldest first; they count as shown from now on. */
  fresh(list: ReadonlyArray<IUsageNotification>): IUsageNotification[] {
    const fresh = list.filter(n => !this._shown.has(n.id));
    for (const n of fresh) {
      this._shown.add(n.id);
    }
    return [...fresh].sort((a, b) => a.created_at.localeCompare(b.created_at) || a.id - b.id);
  }

  private readonly _shown = new Set<number>();
}
