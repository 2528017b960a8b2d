/**
 * The Stratolab icon: a balloon rising through layers of sky.
 */
import { LabIcon } from '@jupyterlab/ui-components';

const svgstr = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M12 2a5 5 0 0 0-5 5c0 3.1 3 5.8 4.2 6.8h1.6C14 12.8 17 10.1 17 7a5 5 0 0 0-5-5z"/>
    <rect x="10.5" y="14.6" width="3" height="2.2" rx="0.5"/>
    <rect x="2" y="18.5" width="20" height="1.6" rx="0.8"/>
    <rect x="5" y="21.4" width="14" height="1.6" rx="0.8"/>
  </g>
</svg>`;

export const stratolabIcon = new LabIcon({ name: 'stratolab:logo', svgstr });
