import { ShownNotifications } from '../shown';

const n = (id: number, created_at: string) => ({ id, budget: 'b', level: 'warning', message: `m${id}`, created_at });

describe('ShownNotifications', () => {
  it('gives each notification once, oldest first', () => {
    const shown = new ShownNotifications();
    expect(shown.fresh([n(2, '2026-12-02'), n(1, '2026-12-01')]).map(x => x.id)).toEqual([1, 2]);
    expect(shown.fresh([n(2, '2026-12-02'), n(1, '2026-12-01'), n(3, '2026-12-03')]).map(x => x.id)).toEqual([3]);
    expect(shown.fresh([n(3, '2026-12-03')])).toEqual([]);
  });
});
