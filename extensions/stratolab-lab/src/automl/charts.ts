/**
 * Small inline SVG charts of the AutoML section, drawn without a chart library: the optimization
 * history, parameter importances, and parallel coordinates of the trials.
 *
 * Pure builders: data in, an `<svg>` out (sized by its viewBox, so it fills the panel's width);
 * colors come from the theme through CSS classes (style/base.css, `.jp-Stratolab-chart`).
 */

const SVG_NS = 'http://www.w3.org/2000/svg';

/** The panel is about 230 px wide: one unit of the viewBox is about a pixel there. */
const WIDTH = 240;

function svg<K extends keyof SVGElementTagNameMap>(
  tag: K,
  attrs: Record<string, string | number> = {},
  text?: string
): SVGElementTagNameMap[K] {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) {
    node.setAttribute(key, String(value));
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

/** A hover text (SVG's `<title>` child). */
function hover<T extends SVGElement>(node: T, text: string): T {
  node.append(svg('title', {}, text));
  return node;
}

function chart(height: number, testId: string, label: string): SVGSVGElement {
  const root = svg('svg', {
    class: 'jp-Stratolab-chart',
    viewBox: `0 0 ${WIDTH} ${height}`,
    role: 'img',
    'aria-label': label,
    'data-testid': testId
  });
  root.append(svg('title', {}, label));
  return root;
}

/** A chart with only a note in its middle (nothing to draw yet). */
function withNote(root: SVGSVGElement, height: number, text: string): SVGSVGElement {
  root.append(
    svg('text', { x: WIDTH / 2, y: height / 2, class: 'jp-Stratolab-chartNote', 'text-anchor': 'middle' }, text)
  );
  return root;
}

/** A number in few characters: 4 significant digits, exponent notation when tiny or huge. */
export function formatNumber(value: number): string {
  if (!Number.isFinite(value)) {
    return String(value);
  }
  if (Number.isInteger(value) && Math.abs(value) < 1e6) {
    return String(value);
  }
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e6)) {
    return value.toExponential(2).replace(/\.?0+e/, 'e');
  }
  return String(Number(value.toPrecision(4)));
}

/** Maps `[lo, hi]` onto `[from, to]`; a degenerate domain maps to the middle. */
function linear(lo: number, hi: number, from: number, to: number): (v: number) => number {
  if (!(hi > lo)) {
    return () => (from + to) / 2;
  }
  return v => from + ((v - lo) / (hi - lo)) * (to - from);
}

function extent(values: number[]): [number, number] {
  return [Math.min(...values), Math.max(...values)];
}

export interface IHistoryPoint {
  number: number;
  value: number;
  best: number;
}

/**
 * Each completed trial's value (a dot) and the best value so far (a step line), by trial number.
 */
export function historyChart(history: IHistoryPoint[], metric: string): SVGSVGElement {
  const height = 130;
  const root = chart(height, 'stratolab-automl-history', `Optimization history of ${metric}`);
  const left = 40;
  const right = WIDTH - 8;
  const top = 14;
  const bottom = height - 18;
  if (history.length === 0) {
    return withNote(root, height, 'No completed trial yet');
  }
  const [nLo, nHi] = extent(history.map(h => h.number));
  const [vLo, vHi] = extent(history.flatMap(h => [h.value, h.best]));
  const x = linear(nLo, nHi, left + 4, right - 4);
  const y = linear(vLo, vHi, bottom - 4, top + 4);

  root.append(
    svg('line', { x1: left, y1: top, x2: left, y2: bottom, class: 'jp-Stratolab-chartAxis' }),
    svg('line', { x1: left, y1: bottom, x2: right, y2: bottom, class: 'jp-Stratolab-chartAxis' }),
    svg('text', { x: left - 3, y: top + 6, class: 'jp-Stratolab-chartTick', 'text-anchor': 'end' }, formatNumber(vHi)),
    svg('text', { x: left - 3, y: bottom, class: 'jp-Stratolab-chartTick', 'text-anchor': 'end' }, formatNumber(vLo)),
    svg('text', { x: left, y: height - 5, class: 'jp-Stratolab-chartTick', 'text-anchor': 'start' }, `#${nLo}`),
    svg('text', { x: right, y: height - 5, class: 'jp-Stratolab-chartTick', 'text-anchor': 'end' }, `#${nHi}`),
    svg(
      'text',
      { x: (left + right) / 2, y: height - 5, class: 'jp-Stratolab-chartTick', 'text-anchor': 'middle' },
      'trial'
    ),
    svg('text', { x: left + 2, y: 9, class: 'jp-Stratolab-chartLegend' }, `● ${metric}   — best so far`)
  );

  const steps = history.map((h, i) => {
    const px = x(h.number).toFixed(1);
    return i === 0 ? `M${px},${y(h.best).toFixed(1)}` : `H${px}V${y(h.best).toFixed(1)}`;
  });
  root.append(svg('path', { d: steps.join(''), class: 'jp-Stratolab-chartBest' }));
  for (const h of history) {
    const dot = svg('circle', {
      cx: x(h.number).toFixed(1),
      cy: y(h.value).toFixed(1),
      r: 2.6,
      class: `jp-Stratolab-chartPoint${h.value === h.best ? ' jp-mod-best' : ''}`
    });
    root.append(hover(dot, `Trial #${h.number}: ${formatNumber(h.value)} (best so far ${formatNumber(h.best)})`));
  }
  return root;
}

/**
 * How much of the value's variation each parameter explains (Optuna's fANOVA), as bars, largest first.
 */
export function importanceBars(importances: Record<string, number>): SVGSVGElement {
  const entries = Object.entries(importances).sort((a, b) => b[1] - a[1]);
  const row = 16;
  const height = Math.max(row * entries.length + 6, 30);
  const root = chart(height, 'stratolab-automl-importances', 'Parameter importances');
  if (entries.length === 0) {
    root.append(
      svg(
        'text',
        { x: WIDTH / 2, y: 18, class: 'jp-Stratolab-chartNote', 'text-anchor': 'middle' },
        'Needs two or more completed trials'
      )
    );
    return root;
  }
  const labelRight = 76;
  const barLeft = labelRight + 4;
  const barMax = WIDTH - barLeft - 38;
  const top = Math.max(...entries.map(e => e[1]), 1e-9);
  entries.forEach(([name, weight], i) => {
    const y = 3 + i * row;
    const short = name.length > 12 ? `${name.slice(0, 11)}…` : name;
    const width = Math.max((weight / top) * barMax, 1);
    const group = svg('g', { 'data-param': name });
    group.append(
      svg('text', { x: labelRight, y: y + 11, class: 'jp-Stratolab-chartLabel', 'text-anchor': 'end' }, short),
      svg('rect', {
        x: barLeft,
        y: y + 2,
        width: width.toFixed(1),
        height: row - 5,
        rx: 2,
        class: 'jp-Stratolab-chartBar'
      }),
      svg(
        'text',
        { x: barLeft + width + 4, y: y + 11, class: 'jp-Stratolab-chartTick' },
        `${(weight * 100).toFixed(weight < 0.1 ? 1 : 0)}%`
      )
    );
    root.append(hover(group, `${name}: ${formatNumber(weight)}`));
  });
  return root;
}

/** One vertical axis: a parameter (its search space says the scale) or the objective. */
export interface IAxis {
  name: string;
  label?: string;
  kind: 'number' | 'log' | 'category';
  /** The categories, in order (those seen in trials but not listed are added after). */
  choices?: unknown[];
}

/** One trial: its values by axis name, and how good it is (1 best, 0 worst) for its shade. */
export interface ILine {
  values: Record<string, unknown>;
  score: number;
  label: string;
  best?: boolean;
}

function categoryKey(value: unknown): string {
  return JSON.stringify(value) ?? String(value);
}

/** Where a value sits on an axis (0 bottom, 1 top), or null when the trial has none. */
function axisPosition(
  axis: IAxis,
  lines: ILine[]
): {
  at: (v: unknown) => number | null;
  ticks: { at: number; label: string }[];
} {
  const present = lines.map(l => l.values[axis.name]).filter(v => v !== undefined && v !== null);
  if (axis.kind === 'category') {
    const keys: string[] = [];
    const labels: string[] = [];
    for (const c of [...(axis.choices ?? []), ...present]) {
      const key = categoryKey(c);
      if (!keys.includes(key)) {
        keys.push(key);
        labels.push(typeof c === 'string' ? c : key);
      }
    }
    const pos = (i: number) => (keys.length === 1 ? 0.5 : i / (keys.length - 1));
    const shown = keys.length <= 8 ? labels.map((label, i) => ({ at: pos(i), label })) : [];
    return {
      at: v => (v === undefined || v === null ? null : pos(keys.indexOf(categoryKey(v)))),
      ticks: shown
    };
  }
  const numbers = present.filter((v): v is number => typeof v === 'number' && Number.isFinite(v));
  if (numbers.length === 0) {
    return { at: () => null, ticks: [] };
  }
  const log = axis.kind === 'log' && numbers.every(v => v > 0);
  const f = (v: number) => (log ? Math.log10(v) : v);
  const [lo, hi] = extent(numbers);
  const scale = linear(f(lo), f(hi), 0, 1);
  return {
    at: v => (typeof v === 'number' && Number.isFinite(v) && (!log || v > 0) ? scale(f(v)) : null),
    ticks:
      lo === hi
        ? [{ at: 0.5, label: formatNumber(lo) }]
        : [
            { at: 0, label: formatNumber(lo) },
            { at: 1, label: formatNumber(hi) }
          ]
  };
}

/**
 * One vertical axis per parameter and one for the objective; each trial a line across them, the
 * better trials darker, the best one bold. A trial without a value for a parameter (a conditional
 * one that did not apply) has a gap there.
 */
export function parallelCoordinates(axes: IAxis[], lines: ILine[]): SVGSVGElement {
  const height = 150;
  const root = chart(height, 'stratolab-automl-parallel', 'Parallel coordinates of the trials');
  if (axes.length === 0 || lines.length === 0) {
    return withNote(root, height, 'No completed trial yet');
  }
  const left = 24;
  const right = WIDTH - 24;
  const top = 24;
  const bottom = height - 14;
  const xs = axes.map((_, i) =>
    axes.length === 1 ? (left + right) / 2 : left + (i * (right - left)) / (axes.length - 1)
  );
  const positions = axes.map(a => axisPosition(a, lines));
  const y = (p: number) => bottom - p * (bottom - top);

  axes.forEach((axis, i) => {
    const label = axis.label ?? axis.name;
    const short = label.length > 12 ? `${label.slice(0, 11)}…` : label;
    const anchor = i === 0 && axes.length > 1 ? 'start' : i === axes.length - 1 && axes.length > 1 ? 'end' : 'middle';
    const x = i === 0 && axes.length > 1 ? xs[i] - 10 : i === axes.length - 1 && axes.length > 1 ? xs[i] + 10 : xs[i];
    root.append(
      svg('line', { x1: xs[i], y1: top, x2: xs[i], y2: bottom, class: 'jp-Stratolab-chartAxis' }),
      hover(svg('text', { x, y: 10, class: 'jp-Stratolab-chartLabel', 'text-anchor': anchor }, short), label)
    );
    for (const tick of positions[i].ticks) {
      root.append(
        svg(
          'text',
          {
            x: xs[i] + 2,
            y: y(tick.at) + (tick.at === 0 ? 10 : tick.at === 1 ? -3 : 3),
            class: 'jp-Stratolab-chartTick',
            'text-anchor': i === axes.length - 1 && axes.length > 1 ? 'end' : 'start'
          },
          tick.label
        )
      );
    }
  });

  const ordered = [...lines].sort((a, b) => Number(!!a.best) - Number(!!b.best) || a.score - b.score);
  for (const line of ordered) {
    const points = axes.map((a, i) => {
      const p = positions[i].at(line.values[a.name]);
      return p === null ? null : `${xs[i].toFixed(1)},${y(p).toFixed(1)}`;
    });
    // Runs of consecutive axes with a value: a gap where a conditional parameter did not apply.
    const runs: string[][] = [[]];
    for (const p of points) {
      if (p === null) {
        runs.push([]);
      } else {
        runs[runs.length - 1].push(p);
      }
    }
    const group = svg('g', { class: `jp-Stratolab-chartLine${line.best ? ' jp-mod-best' : ''}` });
    group.style.strokeOpacity = String(line.best ? 1 : 0.2 + 0.65 * Math.max(0, Math.min(1, line.score)));
    for (const run of runs) {
      if (run.length === 1) {
        const [cx, cy] = run[0].split(',');
        group.append(svg('circle', { cx, cy, r: 1.8 }));
      } else if (run.length > 1) {
        group.append(svg('polyline', { points: run.join(' ') }));
      }
    }
    root.append(hover(group, line.label));
  }
  return root;
}
