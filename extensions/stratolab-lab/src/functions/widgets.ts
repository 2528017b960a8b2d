/**
 * Pieces of the functions views: the "Try it" box and the function name input.
 */
import { button, el } from '../ui';
import { invokeFunction } from './api';
import { formatAnswer } from './format';

/**
 * The "Try it" box: a JSON textarea, an Invoke button, and the status and answer below.
 */
export function createTryBox(owner: string, name: string, example = '[]'): HTMLElement {
  const box = el('div', 'jp-Stratolab-try');
  const input = el('textarea', 'jp-Stratolab-tryInput', undefined, 'stratolab-try-input');
  input.value = example;
  input.rows = 3;
  input.spellcheck = false;
  input.setAttribute('aria-label', 'Request body (JSON)');
  const output = el('pre', 'jp-Stratolab-tryOutput', '', 'stratolab-try-output');
  output.setAttribute('aria-live', 'polite');
  const status = el('div', 'jp-Stratolab-tryStatus', '', 'stratolab-try-status');
  const submit = button('Invoke', () => void run(), 'stratolab-try-submit', `POST to ${name}`);
  submit.classList.add('jp-mod-accept');

  async function run(): Promise<void> {
    const body = input.value.trim() || 'null';
    try {
      JSON.parse(body);
    } catch (error) {
      status.textContent = 'Not valid JSON';
      status.className = 'jp-Stratolab-tryStatus jp-mod-error';
      output.textContent = (error as Error).message;
      return;
    }
    submit.disabled = true;
    status.textContent = 'Invoking…';
    status.className = 'jp-Stratolab-tryStatus';
    output.textContent = '';
    const started = performance.now();
    try {
      const result = await invokeFunction(owner, name, body);
      const ms = Math.round(performance.now() - started);
      const version = result.version ? ` · version ${result.version}` : '';
      status.textContent = `${result.status} · ${ms} ms${version}`;
      status.className = `jp-Stratolab-tryStatus ${result.status < 400 ? 'jp-mod-ok' : 'jp-mod-error'}`;
      output.textContent = formatAnswer(result);
    } catch (error) {
      status.textContent = 'Failed';
      status.className = 'jp-Stratolab-tryStatus jp-mod-error';
      output.textContent = (error as Error).message;
    } finally {
      submit.disabled = false;
    }
  }

  box.append(el('label', 'jp-Stratolab-fieldLabel', 'Request body (JSON)'), input, submit, status, output);
  return box;
}

/** The input of a function's name: what the service accepts (a DNS label) is checked as typed. */
export function functionNameInput(testId: string, value: string): HTMLInputElement {
  const input = el('input', 'jp-Stratolab-input', undefined, testId);
  input.type = 'text';
  input.value = value;
  // Escaped dash: browsers compile `pattern` with the `v` flag, where a bare `-` is an error.
  input.pattern = '[a-z]([a-z0-9\\-]{0,61}[a-z0-9])?';
  input.title = '1-63 lower-case letters, digits and dashes, starting with a letter';
  input.spellcheck = false;
  return input;
}
