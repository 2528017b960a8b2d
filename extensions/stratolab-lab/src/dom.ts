// DOM helpers shared by the panel, the functions section and the deploy dialog.

/**
 * Small DOM helper: an element with a class, optional text and optional test id.
 */
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
