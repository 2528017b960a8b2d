/**
 * A `.pipeline` file (Elyra's pipeline-flow v3 JSON) read as a graph to draw: its nodes with their
 * step names, ops and positions, its links as edges, and its pipeline parameters. Pure: no DOM.
 *
 * Step names follow stratolab/pipelines/flow.py (`pipeline_of`): the node's label, else its notebook's
 * stem, made an identifier, `_2`, `_3`... for repeats in file order; a run's steps are keyed by node id.
 * Positions are Elyra's (`app_data.ui_data.x_pos/y_pos`) when every node has them and no two boxes
 * overlap (files written by code put every node at 0,0), otherwise a layout by
 * topological level (a node one column right of its furthest-upstream parent), so a file written by
 * hand or by `stratolab pipelines` reads left to right.
 */

export const NODE_WIDTH = 180;
export const NODE_HEIGHT = 56;
/** Columns and rows of the fallback layout. */
export const LAYOUT = { left: 40, top: 40, column: 240, row: 100 };

export interface IGraphNode {
  id: string;
  /** The step's name (what conditions and the runs API call it). */
  name: string;
  /** What the node shows: its label, else the notebook's file name, else the name. */
  label: string;
  op: string;
  /** The notebook or other file the step runs, when it names one. */
  filename: string | null;
  x: number;
  y: number;
}

export interface IGraphEdge {
  from: string;
  to: string;
  /** The source's port: `outPort`, or a condition's `elsePort` (the steps run when it is false). */
  port: string;
}

export interface IPipelineParameter {
  name: string;
  value: unknown;
  /** Elyra's type of the default (`String`, `Integer`, `Float`, `Bool`), when given. */
  type: string | null;
  description: string;
  required: boolean;
}

export interface IPipelineGraph {
  /** The pipeline's name (Elyra's `properties.name`), else the document's id. */
  name: string;
  nodes: IGraphNode[];
  edges: IGraphEdge[];
  parameters: IPipelineParameter[];
}

/** Why a document could not be read as a pipeline (not JSON, no pipelines, ...). */
export class PipelineFormatError extends Error {}

type Json = Record<string, unknown>;

function obj(value: unknown): Json {
  return value !== null && typeof value === 'object' && !Array.isArray(value) ? (value as Json) : {};
}

function list(value: unknown): unknown[] {
  return Array.isArray(value) ? value : [];
}

function text(value: unknown): string {
  return typeof value === 'string' ? value.trim() : '';
}

function finite(value: unknown): number | null {
  return typeof value === 'number' && Number.isFinite(value) ? value : null;
}

/** `text` as a step name: letters, digits and `_`, not starting with a digit (flow.py's `identifier`). */
export function identifier(value: string): string {
  const name = value
    .trim()
    .replace(/[^A-Za-z0-9_]+/g, '_')
    .replace(/^_+|_+$/g, '');
  if (!name) {
    return '';
  }
  return /^[0-9]/.test(name) ? `_${name}` : name;
}

/** A path's file name without its extension. */
export function stem(path: string): string {
  const base = path.split('/').pop() ?? '';
  const dot = base.lastIndexOf('.');
  return dot > 0 ? base.slice(0, dot) : base;
}

/** The document's primary pipeline (`primary_pipeline` names it; else the first). */
function primaryOf(doc: Json): Json {
  const pipelines = list(doc.pipelines).map(obj);
  if (pipelines.length === 0) {
    throw new PipelineFormatError('The file has no pipelines (a .pipeline file holds "pipelines": [...]).');
  }
  return pipelines.find(p => p.id === doc.primary_pipeline) ?? pipelines[0];
}

/** Read a `.pipeline` document (its text or its parsed JSON) as a graph. */
export function readPipeline(source: string | unknown): IPipelineGraph {
  let doc: unknown = source;
  if (typeof source === 'string') {
    try {
      doc = JSON.parse(source);
    } catch (error) {
      throw new PipelineFormatError(`The file is not JSON: ${(error as Error).message}`);
    }
  }
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) {
    throw new PipelineFormatError('The file is not a pipeline (a JSON object with "pipelines").');
  }
  const primary = primaryOf(doc as Json);
  const properties = obj(obj(primary.app_data).properties);
  const nodes: IGraphNode[] = [];
  const edges: IGraphEdge[] = [];
  const positioned: boolean[] = [];
  const taken = new Set<string>();
  list(primary.nodes).forEach((raw, index) => {
    const node = obj(raw);
    const id = text(node.id) || `node-${index + 1}`;
    const appData = obj(node.app_data);
    const ui = obj(appData.ui_data);
    const params = appData.component_parameters === undefined ? appData : obj(appData.component_parameters);
    const label = text(appData.label) || text(ui.label);
    const filename = text(params.filename) || null;
    let name = identifier(label) || identifier(filename ? stem(filename) : '') || identifier(`step_${index + 1}`);
    if (taken.has(name)) {
      let n = 2;
      while (taken.has(`${name}_${n}`)) {
        n++;
      }
      name = `${name}_${n}`;
    }
    taken.add(name);
    const x = finite(ui.x_pos);
    const y = finite(ui.y_pos);
    positioned.push(x !== null && y !== null);
    nodes.push({
      id,
      name,
      label: label || (filename ? (filename.split('/').pop() ?? filename) : name),
      op: text(node.op),
      filename,
      x: x ?? 0,
      y: y ?? 0
    });
    for (const port of list(node.inputs)) {
      for (const link of list(obj(port).links)) {
        const from = text(obj(link).node_id_ref);
        if (from && !edges.some(e => e.from === from && e.to === id)) {
          edges.push({ from, to: id, port: text(obj(link).port_id_ref) || 'outPort' });
        }
      }
    }
  });
  // links to nodes not in the file are not drawn (validation names them)
  const known = new Set(nodes.map(n => n.id));
  const drawn = edges.filter(e => known.has(e.from) && known.has(e.to));
  if (nodes.length && (!positioned.every(Boolean) || overlapping(nodes))) {
    layoutByLevel(nodes, drawn);
  }
  return {
    name: text(properties.name) || text((doc as Json).id) || 'pipeline',
    nodes,
    edges: drawn,
    parameters: pipelineParameters(properties)
  };
}

/** Elyra's `pipeline_parameters`: [{name, description, default_value: {type, value}, required}]. */
export function pipelineParameters(properties: Json): IPipelineParameter[] {
  const out: IPipelineParameter[] = [];
  for (const raw of list(properties.pipeline_parameters)) {
    const item = obj(raw);
    const name = text(item.name);
    if (!name || out.some(p => p.name === name)) {
      continue;
    }
    const def = item.default_value;
    const isTyped = def !== null && typeof def === 'object' && !Array.isArray(def);
    out.push({
      name,
      value: isTyped ? obj(def).value : def,
      type: isTyped ? text(obj(def).type) || null : null,
      description: text(item.description),
      required: item.required === true
    });
  }
  return out;
}

/**
 * Each node's level: 0 for a node with no upstream, else one more than its furthest upstream node
 * (nodes on a cycle, which validation refuses, stay where the walk left them).
 */
export function levels(nodes: ReadonlyArray<{ id: string }>, edges: ReadonlyArray<IGraphEdge>): Map<string, number> {
  const level = new Map<string, number>(nodes.map(n => [n.id, 0]));
  const incoming = new Map<string, string[]>(nodes.map(n => [n.id, []]));
  for (const e of edges) {
    incoming.get(e.to)?.push(e.from);
  }
  // longest path by relaxation: at most |nodes| rounds, so a cycle cannot loop for ever
  for (let round = 0; round < nodes.length; round++) {
    let changed = false;
    for (const n of nodes) {
      for (const from of incoming.get(n.id) ?? []) {
        const wanted = (level.get(from) ?? 0) + 1;
        if (wanted > (level.get(n.id) ?? 0) && wanted < nodes.length) {
          level.set(n.id, wanted);
          changed = true;
        }
      }
    }
    if (!changed) {
      break;
    }
  }
  return level;
}

/** Whether two nodes' boxes overlap at their positions. */
export function overlapping(nodes: ReadonlyArray<{ x: number; y: number }>): boolean {
  for (let i = 0; i < nodes.length; i++) {
    for (let j = i + 1; j < nodes.length; j++) {
      if (Math.abs(nodes[i].x - nodes[j].x) < NODE_WIDTH && Math.abs(nodes[i].y - nodes[j].y) < NODE_HEIGHT) {
        return true;
      }
    }
  }
  return false;
}

/** Place nodes in columns by level, in file order down each column. */
export function layoutByLevel(nodes: IGraphNode[], edges: ReadonlyArray<IGraphEdge>): void {
  const level = levels(nodes, edges);
  const rows = new Map<number, number>();
  for (const n of nodes) {
    const l = level.get(n.id) ?? 0;
    const row = rows.get(l) ?? 0;
    rows.set(l, row + 1);
    n.x = LAYOUT.left + l * LAYOUT.column;
    n.y = LAYOUT.top + row * LAYOUT.row;
  }
}

/** The box every node fits in, with a margin: the SVG's viewBox. */
export function bounds(
  nodes: ReadonlyArray<{ x: number; y: number }>,
  margin = 24
): { x: number; y: number; width: number; height: number } {
  if (nodes.length === 0) {
    return { x: 0, y: 0, width: 400, height: 200 };
  }
  const minX = Math.min(...nodes.map(n => n.x)) - margin;
  const minY = Math.min(...nodes.map(n => n.y)) - margin;
  const maxX = Math.max(...nodes.map(n => n.x + NODE_WIDTH)) + margin;
  const maxY = Math.max(...nodes.map(n => n.y + NODE_HEIGHT)) + margin + 48; // room for records under a node
  return { x: minX, y: minY, width: maxX - minX, height: maxY - minY };
}

/** An edge's path: a horizontal S-curve from the right side of `from` to the left side of `to`. */
export function edgePath(from: { x: number; y: number }, to: { x: number; y: number }): string {
  const x1 = from.x + NODE_WIDTH;
  const y1 = from.y + NODE_HEIGHT / 2;
  const x2 = to.x;
  const y2 = to.y + NODE_HEIGHT / 2;
  const bend = Math.max(40, Math.abs(x2 - x1) / 2);
  return `M ${x1} ${y1} C ${x1 + bend} ${y1}, ${x2 - bend} ${y2}, ${x2} ${y2}`;
}
