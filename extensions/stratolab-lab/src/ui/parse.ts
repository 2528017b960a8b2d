/**
 * Reading what was typed into fields. Pure: no DOM.
 */

/** A number typed in a field: undefined when the field is empty (`NaN` when it is not a number). */
export function typedNumber(text: string): number | undefined {
  const t = text.trim();
  return t === '' ? undefined : Number(t);
}
