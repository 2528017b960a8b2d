/**
 * The Usage section's chart: cost per day over the period, as SVG bars (no chart library: a bar per
 * day is a few rectangles). `dailyPoints` and `barLayout` are pure (jest checks them); `chartNode`
 * draws what they give.
 */
import type { ISeriesPoint } from './api';
import { formatCost } from './format';

const SVG = 'http://www.w3.org/2000/svg';
const DAY_MS = 86_400_000;

export interface IDayPoint {
  day: string;
  cost: number;
}

/**
 * One point per day from `from` to `to` (ISO times; the day `to` falls in is included unless `to` is
 * its midnight), in order: the series' cost where it has the day, 0 where it has none. At most
 * `maxDays` (the last ones), so a long period stays readable.
 */
export function dailyPoints(series: ReadonlyArray<ISeriesPoint>, from: string, to: string, maxDays = 92): IDayPoint[] {
  const byDay = new Map<string, number>();
  for (const point of series) {
    const cost = Number.isFinite(point.cost) ? point.cost : 0;
    byDay.set(point.day.slice(0, 10), (byDay.get(point.day.slice(0, 10)) ?? 0) + cost);
  }
  const start = Date.parse(from.slice(0, 10) + 'T00:00:00Z');
  const endT = Date.parse(to);
  if (Number.isNaN(start) || Number.isNaN(endT) || endT <= start) {
    return [...byDay.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([day, cost]) => ({ day, cost }));
  }
  const days = Math.max(1, Math.ceil((endT - start) / DAY_MS));
  const first = Math.max(0, days - maxDays);
  const points: IDayPoint[] = [];
  for (let i = first; i < days; i++) {
    const day = new Date(start + i * DAY_MS).toISOString().slice(0, 10);
    points.push({ day, cost: byDay.get(day) ?? 0 });
  }
  return points;
}

export interface IBar {
  x: number;
  y: number;
  width: number;
  height: number;
  day: string;
  cost: number;
}

/**
 * Bars filling `width` × `height`, one per point, scaled to the largest cost (a period of zeros has
 * flat bars; a cost above 0 is at least one pixel high, so it shows).
 */
export function barLayout(points: ReadonlyArray<IDayPoint>, width: number, height: number, gap = 1): IBar[] {
  if (!points.length) {
    return [];
  }
  const max = Math.max(0, ...points.map(p => p.cost));
  const slot = width / points.length;
  const barWidth = Math.max(1, slot - gap);
  return points.map((p, i) => {
    const h = max > 0 && p.cost > 0 ? Math.max(1, (p.cost / max) * height) : 0;
    return { x: i * slot, y: height - h, width: barWidth, height: h, day: p.day, cost: p.cost };
  });
}

/** The chart: bars with a tooltip each (`day: cost`), the period's first and last day under it. */
export function chartNode(points: ReadonlyArray<IDayPoint>, currency: string, testId: string): HTMLElement {
  const width = 240;
  const height = 64;
  const figure = document.createElement('figure');
  figure.className = 'jp-Stratolab-usageChart';
  figure.dataset.testid = testId;
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.setAttribute('role', 'img');
  const total = points.reduce((sum, p) => sum + p.cost, 0);
  svg.setAttribute('aria-label', `Cost per day: ${formatCost(total, currency)} over ${points.length} days`);
  const axis = document.createElementNS(SVG, 'line');
  axis.setAttribute('x1', '0');
  axis.setAttribute('x2', String(width));
  axis.setAttribute('y1', String(height - 0.5));
  axis.setAttribute('y2', String(height - 0.5));
  axis.setAttribute('class', 'jp-Stratolab-usageAxis');
  svg.append(axis);
  for (const bar of barLayout(points, width, height)) {
    const rect = document.createElementNS(SVG, 'rect');
    rect.setAttribute('x', bar.x.toFixed(2));
    rect.setAttribute('y', bar.y.toFixed(2));
    rect.setAttribute('width', bar.width.toFixed(2));
    rect.setAttribute('height', bar.height.toFixed(2));
    rect.setAttribute('class', 'jp-Stratolab-usageBar');
    rect.setAttribute('data-day', bar.day);
    rect.setAttribute('data-cost', String(bar.cost));
    const title = document.createElementNS(SVG, 'title');
    title.textContent = `${bar.day}: ${formatCost(bar.cost, currency)}`;
    rect.append(title);
    svg.append(rect);
  }
  figure.append(svg);
  if (points.length) {
    const caption = document.createElement('figcaption');
    caption.className = 'jp-Stratolab-usageChartAxis';
    const first = document.createElement('span');
    first.textContent = points[0].day;
    const last = document.createElement('span');
    last.textContent = points[points.length - 1].day;
    caption.append(first, last);
    figure.append(caption);
  }
  return figure;
}
