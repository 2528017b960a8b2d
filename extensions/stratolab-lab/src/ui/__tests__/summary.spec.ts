import { mostRecent } from '../summary';

describe('mostRecent', () => {
  const items = [
    { name: 'a', at: 1 },
    { name: 'b', at: 5 },
    { name: 'c', at: 3 },
    { name: 'd', at: 4 }
  ];
  const names = (list: { name: string }[]) => list.map(i => i.name);

  it('keeps every item, in order, when they fit', () => {
    expect(mostRecent(items, i => i.at, 4)).toEqual({ shown: items, hidden: 0 });
    expect(mostRecent([], () => 0, 2)).toEqual({ shown: [], hidden: 0 });
  });

  it('keeps the most recent in the list order and counts the rest', () => {
    const { shown, hidden } = mostRecent(items, i => i.at, 2);
    expect(names(shown)).toEqual(['b', 'd']);
    expect(hidden).toBe(2);
  });

  it('breaks ties by the list order', () => {
    const same = items.map(i => ({ ...i, at: 0 }));
    expect(names(mostRecent(same, i => i.at, 3).shown)).toEqual(['a', 'b', 'c']);
  });

  it('treats a limit below one as none', () => {
    expect(mostRecent(items, i => i.at, 0)).toEqual({ shown: [], hidden: 4 });
  });
});
