/**
 * DOM helpers every view uses: `el`, the alert and progress lines, and read-only fields to copy from.
 */

/** An element with a class, optional text and optional test id. */
export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className: string,
  text?: string,
  testId?: string
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  node.className = className;
  if (text !== undefined) {
    node.textContent = text;
  }
  if (testId) {
    node.dataset.testid = testId;
  }
  return node;
}

/** An error message that screen readers announce (`role="alert"`). */
export function alertNode(message: string, testId?: string, className = 'jp-Stratolab-error'): HTMLDivElement {
  const node = el('div', className, message, testId);
  node.setAttribute('role', 'alert');
  return node;
}

/** Show `items` in `container`, or a note (`empty`: its text and test id) when there are none. */
export function showList(container: HTMLElement, items: Element[], empty: [text: string, testId: string]): void {
  container.replaceChildren(...(items.length ? items : [el('p', 'jp-Stratolab-note', ...empty)]));
}

/** Show a spinner and `text` in `node`; an empty text clears it. */
export function setProgress(node: HTMLElement, text: string): void {
  node.replaceChildren(...(text ? [el('span', 'jp-Stratolab-spinner'), document.createTextNode(` ${text}`)] : []));
}

/** A read-only field whose value is selected when focused (an endpoint URL, a key, a command). */
export function readOnlyField(
  value: string,
  testId?: string,
  multiline = false
): HTMLInputElement | HTMLTextAreaElement {
  const field = multiline
    ? el('textarea', 'jp-Stratolab-input jp-Stratolab-code', undefined, testId)
    : el('input', 'jp-Stratolab-input jp-Stratolab-url', undefined, testId);
  field.value = value;
  field.readOnly = true;
  field.spellcheck = false;
  if (field instanceof HTMLTextAreaElement) {
    field.rows = 3;
  }
  field.addEventListener('focus', () => field.select());
  return field;
}

/**
 * A list of facts (`<dl>`): `add(label, value, key)` appends one whose value has the test id
 * `${testIdPrefix}-${key}`.
 */
export function facts(testIdPrefix: string): {
  node: HTMLDListElement;
  add: (label: string, value: string, key: string) => void;
} {
  const node = el('dl', 'jp-Stratolab-facts');
  const add = (label: string, value: string, key: string) => {
    node.append(
      el('dt', 'jp-Stratolab-factLabel', label),
      el('dd', 'jp-Stratolab-fact', value, `${testIdPrefix}-${key}`)
    );
  };
  return { node, add };
}
