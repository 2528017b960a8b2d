/**
 * How a function's numbers and answers read in the panel. Pure: no requests, no DOM.
 */
import { IFunction, IInvocation } from './api';

export function formatMs(ms: number | null): string {
  return ms === null ? '–' : ms < 10 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`;
}

export function trafficText(fn: IFunction): string {
  const entries = Object.entries(fn.traffic);
  if (entries.length === 0) {
    return 'no traffic';
  }
  return entries.map(([v, w]) => `v${v} ${w}%`).join(' · ');
}

/**
 * Pretty-print a JSON answer; other answers are shown as they came.
 */
export function formatAnswer(result: IInvocation): string {
  if (result.contentType.startsWith('application/json')) {
    try {
      return JSON.stringify(JSON.parse(result.text), null, 2);
    } catch {
      // fall through: show the raw text
    }
  }
  return result.text;
}
