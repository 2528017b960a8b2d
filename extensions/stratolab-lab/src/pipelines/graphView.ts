/**
 * The pipeline drawn as SVG: a box per node (its op's glyph, label and kind; with a run, its state's
 * colour, duration, branch and recorded values; with validation errors, a red mark and the messages
 * as its tooltip) and an S-curve per link (a condition's false branch dashed). Clicking a node
 * selects it; double-clicking opens it (`onOpen`).
 */
import { IPipelineStep, IValidationError } from './api';
import { errorText, opInfo, recordLines, stepStyle, stepSummary } from './format';
import { bounds, edgePath, IPipelineGraph, NODE_HEIGHT, NODE_WIDTH } from './graph';

const SVG = 'http://www.w3.org/2000/svg';

function svg<K extends keyof SVGElementTagNameMap>(
  tag: K,
  attrs: Record<string, string | number> = {},
  textContent?: string
): SVGElementTagNameMap[K] {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) {
    node.setAttribute(k, String(v));
  }
  if (textContent !== undefined) {
    node.textContent = textContent;
  }
  return node;
}

/** What the graph shows besides the file: a run's steps (by node id), errors (by node id), the selection. */
export interface IGraphState {
  steps: Map<string, IPipelineStep>;
  errors: Map<string, IValidationError[]>;
  selected: string | null;
}

let markers = 0;

export class GraphView {
  constructor(
    private readonly options: {
      testId: string;
      onSelect: (nodeId: string) => void;
      onOpen: (nodeId: string) => void;
    }
  ) {
    this.node = svg('svg', { class: 'jp-Stratolab-pipelineGraph', role: 'img' });
    this.node.dataset.testid = `${options.testId}-graph`;
    this.markerId = `jp-Stratolab-arrow-${++markers}`;
  }

  readonly node: SVGSVGElement;

  render(graph: IPipelineGraph, state: IGraphState, now: number = Date.now()): void {
    const box = bounds(graph.nodes);
    this.node.setAttribute('viewBox', `${box.x} ${box.y} ${box.width} ${box.height}`);
    this.node.setAttribute('width', String(box.width));
    this.node.setAttribute('height', String(box.height));
    this.node.setAttribute('aria-label', `Pipeline ${graph.name}: ${graph.nodes.length} steps`);
    const defs = svg('defs');
    const marker = svg('marker', {
      id: this.markerId,
      viewBox: '0 0 10 10',
      refX: 9,
      refY: 5,
      markerWidth: 7,
      markerHeight: 7,
      orient: 'auto-start-reverse'
    });
    marker.append(svg('path', { d: 'M 0 0 L 10 5 L 0 10 z', class: 'jp-Stratolab-pipelineArrow' }));
    defs.append(marker);

    const byId = new Map(graph.nodes.map(n => [n.id, n]));
    const edges = svg('g', { class: 'jp-Stratolab-pipelineEdges' });
    for (const e of graph.edges) {
      const from = byId.get(e.from);
      const to = byId.get(e.to);
      if (!from || !to) {
        continue;
      }
      const target = state.steps.get(e.to)?.state;
      const classes = ['jp-Stratolab-pipelineEdge'];
      if (e.port === 'elsePort') {
        classes.push('jp-Stratolab-pipelineEdge-else');
      }
      if (target === 'skipped') {
        classes.push('jp-Stratolab-pipelineEdge-dead');
      }
      const path = svg('path', {
        d: edgePath(from, to),
        class: classes.join(' '),
        'marker-end': `url(#${this.markerId})`
      });
      path.dataset.testid = `${this.options.testId}-edge-${from.name}-${to.name}`;
      edges.append(path);
      if (from.op === 'stratolab-condition-node') {
        // beside the arrow's head, so a true and a false branch to the same row do not overlap
        const label = svg(
          'text',
          { x: to.x - 34, y: to.y + NODE_HEIGHT / 2 - 6, class: 'jp-Stratolab-pipelineEdgeLabel' },
          e.port === 'elsePort' ? 'false' : 'true'
        );
        edges.append(label);
      }
    }

    const nodes = svg('g', { class: 'jp-Stratolab-pipelineNodes' });
    for (const n of graph.nodes) {
      const step = state.steps.get(n.id);
      const errors = state.errors.get(n.id) ?? [];
      const style = stepStyle(step?.state);
      const classes = ['jp-Stratolab-pipelineNode', style.className];
      if (style.dashed) {
        classes.push('jp-Stratolab-step-dashed');
      }
      if (style.pulsing) {
        classes.push('jp-Stratolab-step-pulsing');
      }
      if (errors.length) {
        classes.push('jp-Stratolab-pipelineNode-invalid');
      }
      if (state.selected === n.id) {
        classes.push('jp-Stratolab-pipelineNode-selected');
      }
      const info = opInfo(n.op);
      const g = svg('g', {
        class: classes.join(' '),
        transform: `translate(${n.x} ${n.y})`,
        tabindex: 0,
        role: 'button'
      });
      g.dataset.testid = `${this.options.testId}-node-${n.name}`;
      g.dataset.state = step?.state ?? '';
      g.dataset.nodeId = n.id;
      const tooltip = [`${n.label} (${info.kind}${n.filename ? `: ${n.filename}` : ''})`];
      if (step) {
        tooltip.push(stepSummary(step, now));
        if (step.error) {
          tooltip.push(step.error);
        }
      }
      tooltip.push(...errors.map(errorText));
      g.append(svg('title', {}, tooltip.join('\n')));
      g.append(
        svg('rect', { class: 'jp-Stratolab-pipelineBox', width: NODE_WIDTH, height: NODE_HEIGHT, rx: 8, ry: 8 })
      );
      g.append(svg('text', { x: 12, y: 24, class: 'jp-Stratolab-pipelineGlyph' }, info.glyph));
      g.append(svg('text', { x: 36, y: 24, class: 'jp-Stratolab-pipelineLabel' }, clip(n.label, 18)));
      const summary = step ? stepSummary(step, now) : info.kind;
      const sub = svg('text', { x: 12, y: 44, class: 'jp-Stratolab-pipelineSub' }, clip(summary, 28));
      sub.dataset.testid = `${this.options.testId}-node-${n.name}-summary`;
      g.append(sub);
      if (errors.length) {
        const mark = svg('g', {
          class: 'jp-Stratolab-pipelineErrorMark',
          transform: `translate(${NODE_WIDTH - 12} 12)`
        });
        mark.dataset.testid = `${this.options.testId}-node-${n.name}-invalid`;
        mark.append(svg('circle', { r: 8 }), svg('text', { y: 4, 'text-anchor': 'middle' }, '!'));
        g.append(mark);
      }
      recordLines(step?.records).forEach((line, i) => {
        const t = svg('text', { x: 6, y: NODE_HEIGHT + 14 + i * 13, class: 'jp-Stratolab-pipelineRecord' }, line);
        g.append(t);
      });
      g.addEventListener('click', () => this.options.onSelect(n.id));
      g.addEventListener('dblclick', () => this.options.onOpen(n.id));
      g.addEventListener('keydown', event => {
        if (event.key === 'Enter') {
          this.options.onOpen(n.id);
        } else if (event.key === ' ') {
          event.preventDefault();
          this.options.onSelect(n.id);
        }
      });
      nodes.append(g);
    }
    this.node.replaceChildren(defs, edges, nodes);
  }

  private readonly markerId: string;
}

function clip(value: string, max: number): string {
  return value.length > max ? `${value.slice(0, max - 1)}…` : value;
}
