/**
 * The extension's icons: the Stratolab logo (a balloon rising through layers of sky) and those of
 * its commands.
 */
import { LabIcon } from '@jupyterlab/ui-components';

/** The Stratolab logo: a balloon rising through layers of sky. */
export const stratolabIcon = icon(
  'logo',
  `<path d="M12 2a5 5 0 0 0-5 5c0 3.1 3 5.8 4.2 6.8h1.6C14 12.8 17 10.1 17 7a5 5 0 0 0-5-5z"/>
    <rect x="10.5" y="14.6" width="3" height="2.2" rx="0.5"/>
    <rect x="2" y="18.5" width="20" height="1.6" rx="0.8"/>
    <rect x="5" y="21.4" width="14" height="1.6" rx="0.8"/>`
);

/** A 24×24 icon in the theme's icon color (`jp-icon3`), drawn by `shapes`. */
function icon(name: string, shapes: string): LabIcon {
  return new LabIcon({
    name: `stratolab:${name}`,
    svgstr: `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">${shapes}</g>
</svg>`
  });
}

export const deployIcon = icon(
  'deploy',
  `<path d="M12 2 5 9h4v6h6V9h4z"/>
    <rect x="4" y="18" width="16" height="2.5" rx="1"/>`
);

export const scheduleIcon = icon(
  'schedule',
  `<path d="M12 2a10 10 0 1 0 0 20 10 10 0 0 0 0-20zm0 2.2a7.8 7.8 0 1 1 0 15.6 7.8 7.8 0 0 1 0-15.6z"/>
    <path d="M11 6.5h2v5.1l3.6 2.1-1 1.7-4.6-2.7z"/>`
);

export const tuneIcon = icon(
  'tune',
  `<rect x="3" y="5" width="18" height="2" rx="1"/>
    <rect x="3" y="11" width="18" height="2" rx="1"/>
    <rect x="3" y="17" width="18" height="2" rx="1"/>
    <circle cx="8" cy="6" r="2.6"/>
    <circle cx="16" cy="12" r="2.6"/>
    <circle cx="11" cy="18" r="2.6"/>`
);
