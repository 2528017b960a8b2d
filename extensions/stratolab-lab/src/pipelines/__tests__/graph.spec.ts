import * as fs from 'fs';
import * as path from 'path';

import {
  bounds,
  edgePath,
  identifier,
  LAYOUT,
  levels,
  NODE_HEIGHT,
  NODE_WIDTH,
  PipelineFormatError,
  readPipeline
} from '../graph';

const DATA = path.resolve(__dirname, '../../../../../tests/pipelines/data');

function node(id: string, label: string, links: string[] = [], extra: Record<string, unknown> = {}) {
  return {
    id,
    type: 'execution_node',
    op: 'execute-notebook-node',
    app_data: { label, component_parameters: { filename: `${label || id}.ipynb` }, ui_data: extra },
    inputs: [{ id: 'inPort', links: links.map(l => ({ node_id_ref: l, port_id_ref: 'outPort' })) }],
    outputs: [{ id: 'outPort' }]
  };
}

function doc(nodes: unknown[], properties: Record<string, unknown> = {}) {
  return {
    doc_type: 'pipeline',
    version: '3.0',
    primary_pipeline: 'p',
    pipelines: [{ id: 'p', nodes, app_data: { properties } }]
  };
}

describe('identifier', () => {
  it('makes step names as flow.py does', () => {
    expect(identifier('Load data')).toBe('Load_data');
    expect(identifier('  2nd-try! ')).toBe('_2nd_try');
    expect(identifier('--')).toBe('');
    expect(identifier('train')).toBe('train');
  });
});

describe('readPipeline', () => {
  it('reads the train-evaluate-deploy example with its Elyra positions and condition ports', () => {
    const text = fs.readFileSync(path.join(DATA, 'train_evaluate_deploy.pipeline'), 'utf8');
    const graph = readPipeline(text);
    expect(graph.name).toBe('train-evaluate-deploy');
    const candidate = graph.nodes.find(n => n.name === 'candidate');
    expect(candidate).toMatchObject({ x: 80, y: 100, op: 'execute-notebook-node', filename: 'train.ipynb' });
    const better = graph.nodes.find(n => n.name === 'better');
    expect(better?.op).toBe('stratolab-condition-node');
    expect(
      graph.edges
        .filter(e => e.to === better?.id)
        .map(e => e.from)
        .sort()
    ).toEqual([candidate?.id, graph.nodes.find(n => n.name === 'champion')?.id].sort());
    expect(graph.edges.every(e => graph.nodes.some(n => n.id === e.from))).toBe(true);
  });

  it('names repeated labels train, train_2 and falls back to the notebook stem', () => {
    const graph = readPipeline(
      doc([
        node('a', 'train'),
        node('b', 'train'),
        { id: 'c', op: 'execute-notebook-node', app_data: { component_parameters: { filename: 'dir/Eval set.ipynb' } } }
      ])
    );
    expect(graph.nodes.map(n => n.name)).toEqual(['train', 'train_2', 'Eval_set']);
    expect(graph.nodes[2].label).toBe('Eval set.ipynb');
  });

  it('lays nodes out by level when a position is missing: a diamond in three columns', () => {
    const graph = readPipeline(
      doc([node('d', 'join', ['b', 'c']), node('a', 'start'), node('b', 'left', ['a']), node('c', 'right', ['a'])])
    );
    const at = Object.fromEntries(graph.nodes.map(n => [n.name, [n.x, n.y]]));
    expect(at.start[0]).toBe(LAYOUT.left);
    expect(at.left[0]).toBe(LAYOUT.left + LAYOUT.column);
    expect(at.right[0]).toBe(LAYOUT.left + LAYOUT.column);
    expect(at.left[1]).not.toBe(at.right[1]);
    expect(at.join[0]).toBe(LAYOUT.left + 2 * LAYOUT.column);
  });

  it('lays out a file written by code, whose nodes all sit at 0,0', () => {
    const at = { x_pos: 0, y_pos: 0 };
    const graph = readPipeline(doc([node('a', 'a', [], at), node('b', 'b', ['a'], at)]));
    expect(graph.nodes.map(n => n.x)).toEqual([LAYOUT.left, LAYOUT.left + LAYOUT.column]);
  });

  it('keeps the levels finite on a cycle (validation refuses it; drawing must not hang)', () => {
    const level = levels(
      [{ id: 'a' }, { id: 'b' }],
      [
        { from: 'a', to: 'b', port: 'outPort' },
        { from: 'b', to: 'a', port: 'outPort' }
      ]
    );
    expect([...level.values()].every(l => l >= 0 && l < 2)).toBe(true);
  });

  it('drops links to unknown nodes and duplicate links', () => {
    const n = node('b', 'b', ['a', 'a', 'ghost']);
    const graph = readPipeline(doc([node('a', 'a'), n]));
    expect(graph.edges).toEqual([{ from: 'a', to: 'b', port: 'outPort' }]);
  });

  it('reads pipeline parameters with their types', () => {
    const graph = readPipeline(
      doc([], {
        name: 'p1',
        pipeline_parameters: [
          { name: 'epochs', default_value: { type: 'Integer', value: 3 }, required: true, description: 'passes' },
          { name: 'tag', default_value: 'x' },
          { name: '' }
        ]
      })
    );
    expect(graph.parameters).toEqual([
      { name: 'epochs', value: 3, type: 'Integer', description: 'passes', required: true },
      { name: 'tag', value: 'x', type: null, description: '', required: false }
    ]);
  });

  it('refuses what is not a pipeline with a sentence', () => {
    expect(() => readPipeline('{nope')).toThrow(PipelineFormatError);
    expect(() => readPipeline('[]')).toThrow(/not a pipeline/);
    expect(() => readPipeline('{"pipelines": []}')).toThrow(/no pipelines/);
  });
});

describe('geometry', () => {
  it('bounds every node with a margin', () => {
    const box = bounds([
      { x: 0, y: 0 },
      { x: 100, y: 50 }
    ]);
    expect(box.x).toBeLessThan(0);
    expect(box.x + box.width).toBeGreaterThan(100 + NODE_WIDTH);
    expect(box.y + box.height).toBeGreaterThan(50 + NODE_HEIGHT);
  });

  it('draws an edge from the right side of one node to the left side of the next', () => {
    const d = edgePath({ x: 0, y: 0 }, { x: 300, y: 100 });
    expect(d.startsWith(`M ${NODE_WIDTH} ${NODE_HEIGHT / 2}`)).toBe(true);
    expect(d.endsWith(`300 ${100 + NODE_HEIGHT / 2}`)).toBe(true);
  });
});
