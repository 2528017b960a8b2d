import { barLayout, dailyPoints } from '../chart';

describe('dailyPoints', () => {
  it('has one point per day of the period, 0 on days without use', () => {
    const points = dailyPoints(
      [
        { day: '2026-12-02', cost: 1.5 },
        { day: '2026-12-04', cost: 3 }
      ],
      '2026-12-01T00:00:00Z',
      '2026-12-05T10:00:00Z'
    );
    expect(points).toEqual([
      { day: '2026-12-01', cost: 0 },
      { day: '2026-12-02', cost: 1.5 },
      { day: '2026-12-03', cost: 0 },
      { day: '2026-12-04', cost: 3 },
      { day: '2026-12-05', cost: 0 }
    ]);
  });

  it('ends before a period that ends at midnight, and adds up a day given twice', () => {
    const points = dailyPoints(
      [
        { day: '2026-12-01', cost: 1 },
        { day: '2026-12-01T00:00:00Z', cost: 2 }
      ],
      '2026-12-01T00:00:00Z',
      '2026-12-03T00:00:00Z'
    );
    expect(points).toEqual([
      { day: '2026-12-01', cost: 3 },
      { day: '2026-12-02', cost: 0 }
    ]);
  });

  it('keeps the last days of a long period', () => {
    const points = dailyPoints([], '2026-01-01T00:00:00Z', '2026-12-31T12:00:00Z', 10);
    expect(points.length).toBe(10);
    expect(points[9].day).toBe('2026-12-31');
  });

  it('falls back to the series in order when the period is not readable', () => {
    const points = dailyPoints(
      [
        { day: '2026-12-03', cost: 1 },
        { day: '2026-12-01', cost: 2 }
      ],
      'junk',
      ''
    );
    expect(points.map(p => p.day)).toEqual(['2026-12-01', '2026-12-03']);
  });
});

describe('barLayout', () => {
  it('scales bars to the largest cost and fills the width', () => {
    const bars = barLayout(
      [
        { day: 'a', cost: 0 },
        { day: 'b', cost: 5 },
        { day: 'c', cost: 10 },
        { day: 'd', cost: 0.001 }
      ],
      100,
      50,
      1
    );
    expect(bars.map(b => b.x)).toEqual([0, 25, 50, 75]);
    expect(bars.map(b => b.width)).toEqual([24, 24, 24, 24]);
    expect(bars.map(b => b.height)).toEqual([0, 25, 50, 1]); // a small cost still shows
    expect(bars.map(b => b.y)).toEqual([50, 25, 0, 49]);
  });

  it('draws nothing for no points and flat bars for a period of zeros', () => {
    expect(barLayout([], 100, 50)).toEqual([]);
    expect(barLayout([{ day: 'a', cost: 0 }], 100, 50)[0].height).toBe(0);
  });
});
