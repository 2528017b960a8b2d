/**
 * Buttons and links in the panel's cards, and actions whose errors are shown in a dialog.
 */
import { Clipboard, showErrorMessage } from '@jupyterlab/apputils';

import { el, readOnlyField } from './dom';

export function button(label: string, onClick: () => void, testId?: string, title?: string): HTMLButtonElement {
  const b = el('button', 'jp-Button jp-Stratolab-smallButton', label, testId);
  b.type = 'button';
  if (title) {
    b.title = title;
  }
  b.addEventListener('click', onClick);
  return b;
}

/** A read-only field (an endpoint URL, a key, a command) with a Copy button beside it. */
export function copyable(value: string, testId: string, multiline = false): HTMLElement {
  const row = el('div', 'jp-Stratolab-copyRow');
  const field = readOnlyField(value, testId, multiline);
  const copy = button(
    'Copy',
    () => {
      Clipboard.copyToSystem(field.value);
      copy.textContent = 'Copied';
      window.setTimeout(() => (copy.textContent = 'Copy'), 1500);
    },
    testId ? `${testId}-copy` : undefined,
    'Copy to the clipboard'
  );
  row.append(field, copy);
  return row;
}

/** A link, opened in a new tab; a plain GET from the browser carries this server's cookie. */
export function link(label: string, href: string, testId: string, title: string, download = false): HTMLAnchorElement {
  const a = el('a', 'jp-Button jp-Stratolab-smallButton jp-Stratolab-link', label, testId);
  a.href = href;
  a.target = '_blank';
  a.rel = 'noopener';
  a.title = title;
  if (download) {
    a.download = '';
  }
  return a;
}

/** Run an action; show its error in a dialog titled `title`; then `after` (a refresh), whatever happened. */
export async function guarded(title: string, run: () => Promise<unknown>, after: () => Promise<void>): Promise<void> {
  try {
    await run();
  } catch (error) {
    await showErrorMessage(title, (error as Error).message || String(error));
  }
  await after();
}

/**
 * A maker of a card's action buttons: each runs `guard(run)`, with the test id
 * `${testIdPrefix}-${label in lower case, spaces as dashes}`.
 */
export function actionButtons(
  testIdPrefix: string,
  guard: (run: () => Promise<unknown>) => Promise<void>
): (label: string, title: string, run: () => Promise<unknown>) => HTMLButtonElement {
  return (label, title, run) =>
    button(label, () => void guard(run), `${testIdPrefix}-${label.toLowerCase().replace(/\s+/g, '-')}`, title);
}
