/**
 * The sidebar's summary of a list that grows: its most recent items, in the list's own order, and how
 * many more the list's main-area table holds.
 */

/** How many items a sidebar section shows before it points to the table. */
export const SIDEBAR_LIMIT = 8;

/**
 * The `limit` items with the highest `recency` (ties keep the list's order), shown in the list's
 * order, and the number left out.
 */
export function mostRecent<T>(
  items: ReadonlyArray<T>,
  recency: (item: T) => number,
  limit = SIDEBAR_LIMIT
): { shown: T[]; hidden: number } {
  if (items.length <= limit) {
    return { shown: [...items], hidden: 0 };
  }
  const kept = new Set(
    items
      .map((item, index) => ({ index, key: recency(item) }))
      .sort((a, b) => b.key - a.key || a.index - b.index)
      .slice(0, Math.max(0, limit))
      .map(entry => entry.index)
  );
  return { shown: items.filter((_, index) => kept.has(index)), hidden: items.length - kept.size };
}
