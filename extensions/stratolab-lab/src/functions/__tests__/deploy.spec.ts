import { IFunction } from '../api';
import { curlExample, definedFunctions, deployCode, functionName, parseDeployOutput } from '../deploy';
import { formatAnswer, formatMs, trafficText } from '../format';

function fn(overrides: Partial<IFunction> = {}): IFunction {
  return {
    owner: 'ada',
    name: 'predict',
    public: false,
    url: 'https://hub.example/services/functions/fn/ada/predict',
    scaling: {
      min_instances: 0,
      max_instances: 4,
      concurrency: 1,
      idle_timeout_s: 300,
      timeout_s: 30,
      memory_mb: null
    },
    traffic: { '1': 100 },
    versions: [],
    instances: 0,
    cold_starts: 0,
    stats: { invocations: 0, errors: 0, p50_ms: null, p99_ms: null },
    ...overrides
  };
}

describe('definedFunctions and functionName', () => {
  it('lists the top-level functions of a cell in order', () => {
    const source =
      'import x\n\ndef handle_it(inputs):\n    def inner():\n        pass\n\nasync def other (a):\n    return a\n';
    expect(definedFunctions(source)).toEqual(['handle_it', 'other']);
  });

  it('makes a DNS-label name from a handler', () => {
    expect(functionName('Predict_Price_')).toBe('predict-price');
  });
});

describe('deployCode', () => {
  const request = {
    handler: 'predict',
    name: 'predict',
    scaling: { max_instances: 2 },
    public: false,
    source: 'def predict(x):\n    return "\'\\"" + x\n'
  };

  it('passes the inputs as one JSON literal, never spliced into code', () => {
    const code = deployCode(request, '@@M@@');
    const line = code.split('\n').find(l => l.includes('json").loads('))!;
    const literal = line.slice(line.indexOf('loads(') + 'loads('.length, line.lastIndexOf(')') - 1);
    expect(JSON.parse(JSON.parse(literal))).toEqual({ ...request, marker: '@@M@@' });
    expect(code).not.toContain('def predict(x):\n');
    expect(code).toContain('from stratolab.functions.client import deploy');
  });

  it('reads the outcome printed between the markers', () => {
    const text = `noise\n@@M@@{"ok": true, "data": {"name": "predict"}}@@M@@\n`;
    expect(parseDeployOutput(text, '@@M@@')).toEqual({ ok: true, data: { name: 'predict' } });
    expect(parseDeployOutput('@@M@@{"ok": false, "error": "no"}@@M@@', '@@M@@')).toEqual({ ok: false, error: 'no' });
  });

  it('finds nothing without both markers or with broken JSON', () => {
    expect(parseDeployOutput('@@M@@{"ok": true', '@@M@@')).toBeNull();
    expect(parseDeployOutput('@@M@@{not json@@M@@', '@@M@@')).toBeNull();
  });
});

describe('curlExample', () => {
  it('sends the function key of a new token-protected function', () => {
    expect(curlExample(fn({ key: 'k-1' }), '[1]')).toBe(
      "curl -X POST -H 'X-Function-Key: k-1' -H 'Content-Type: application/json' -d '[1]' " + fn().url
    );
  });

  it('falls back on the hub token, and sends nothing for a public function', () => {
    expect(curlExample(fn(), '[]')).toContain('-H "Authorization: token $JUPYTERHUB_API_TOKEN" ');
    expect(curlExample(fn({ public: true }), '[]')).toBe(
      `curl -X POST -H 'Content-Type: application/json' -d '[]' ${fn().url}`
    );
  });

  it('quotes single quotes of the body for the shell', () => {
    expect(curlExample(fn({ public: true }), `["it's"]`)).toContain(`-d '["it'\\''s"]'`);
  });
});

describe('format', () => {
  it('shows latencies and traffic', () => {
    expect(formatMs(null)).toBe('–');
    expect(formatMs(3.14)).toBe('3.1 ms');
    expect(formatMs(123.6)).toBe('124 ms');
    expect(trafficText(fn({ traffic: {} }))).toBe('no traffic');
    expect(trafficText(fn({ traffic: { '1': 90, '2': 10 } }))).toBe('v1 90% · v2 10%');
  });

  it('pretty-prints JSON answers only', () => {
    const answer = { status: 200, contentType: 'application/json', text: '{"a":1}', version: '1' };
    expect(formatAnswer(answer)).toBe('{\n  "a": 1\n}');
    expect(formatAnswer({ ...answer, text: 'not json' })).toBe('not json');
    expect(formatAnswer({ ...answer, contentType: 'text/plain', text: '{"a":1}' })).toBe('{"a":1}');
  });
});
