/**
 * The Stratolab sidebar panel: a header with a Refresh button above a list of sections.
 *
 * Each feature of the platform adds its own `PanelSection` (today only the environment); the panel
 * only knows how to lay them out and refresh them together.
 */
import { Panel, Widget } from '@lumino/widgets';

import { alertNode, el } from './ui';
import { stratolabIcon } from './icon';
import { fetchGpuLedger, fetchStatus, IGpuLedger, IStratolabStatus, ledgerLines, StatusError } from './status';

/**
 * One titled block of the panel, which knows how to reload its own content.
 */
export abstract class PanelSection extends Widget {
  constructor(options: { title: string; testId: string; className?: string }) {
    super({ node: document.createElement('section') });
    this.addClass('jp-Stratolab-section');
    if (options.className) {
      this.addClass(options.className);
    }
    this.node.dataset.testid = options.testId;
    const heading = document.createElement('h3');
    heading.className = 'jp-Stratolab-sectionTitle';
    heading.textContent = options.title;
    this.body = document.createElement('div');
    this.body.className = 'jp-Stratolab-sectionBody';
    this.node.append(heading, this.body);
  }

  /**
   * Reload the section's content; must not throw (show the error in the section instead).
   */
  abstract refresh(): Promise<void>;

  /** Show an error above the last good content: it is still the best we know. */
  protected showError(message: string, testId: string): void {
    const stale = this.body.querySelectorAll(':scope > :not(.jp-Stratolab-error, .jp-Stratolab-loading)');
    this.body.replaceChildren(alertNode(message, testId), ...Array.from(stale));
  }

  protected readonly body: HTMLDivElement;
}


function formatCpu(cpu: number | null): string {
  if (cpu === null) {
    return 'No limit';
  }
  const cores = Number.isInteger(cpu) ? String(cpu) : cpu.toFixed(2).replace(/0+$/, '');
  return `${cores} ${cpu === 1 ? 'core' : 'cores'}`;
}

function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${Number(value.toFixed(1))} ${units[unit]}`;
}

function gpuLines(status: IStratolabStatus): string[] {
  const { assigned, names, usage } = status.gpus;
  return assigned.map((id, i) => {
    const live = usage.find(u => u.id === id || u.uuid === id);
    const name = names[i] || live?.name;
    let line = `GPU ${id}${name ? ` · ${name}` : ''}`;
    if (live) {
      line +=
        ` · ${formatBytes(live.memory_used_bytes)} / ${formatBytes(live.memory_total_bytes)}` +
        ` · ${Math.round(live.utilization_percent)}%`;
    }
    return line;
  });
}

/**
 * Profile, CPU and memory limits and GPUs of this server, from `GET stratolab/status`.
 */
export class EnvironmentSection extends PanelSection {
  constructor() {
    super({
      title: 'Environment',
      testId: 'stratolab-environment',
      className: 'jp-Stratolab-environment'
    });
    this.body.append(el('p', 'jp-Stratolab-loading', 'Loading…'));
  }

  /** The last status shown, or null before the first success. */
  get status(): IStratolabStatus | null {
    return this._status;
  }

  async refresh(): Promise<void> {
    try {
      const [status, ledger] = await Promise.all([fetchStatus(), fetchGpuLedger()]);
      this._status = status;
      this.render(status, ledger);
    } catch (error) {
      const message =
        error instanceof StatusError
          ? error.message
          : `Unexpected error: ${(error as Error).message || error}`;
      this.showError(message, 'stratolab-error');
    }
  }

  private render(status: IStratolabStatus, ledger: IGpuLedger | null = null): void {
    const profile = status.profile;
    const nodes: HTMLElement[] = [
      el(
        'div',
        'jp-Stratolab-profile',
        profile.display_name || 'Default environment',
        'stratolab-profile'
      )
    ];
    if (profile.description) {
      nodes.push(
        el('p', 'jp-Stratolab-description', profile.description, 'stratolab-profile-description')
      );
    }

    const facts = el('dl', 'jp-Stratolab-facts');
    const fact = (label: string, value: HTMLElement) => {
      facts.append(el('dt', 'jp-Stratolab-factLabel', label), value);
    };
    fact('CPU', el('dd', 'jp-Stratolab-fact', formatCpu(status.limits.cpu), 'stratolab-cpu'));
    fact(
      'Memory',
      el(
        'dd',
        'jp-Stratolab-fact',
        status.limits.memory ? status.limits.memory.text : 'No limit',
        'stratolab-memory'
      )
    );
    const gpus = el('dd', 'jp-Stratolab-fact jp-Stratolab-gpus', undefined, 'stratolab-gpus');
    const lines = gpuLines(status);
    if (lines.length === 0) {
      gpus.textContent = 'No GPU';
    } else {
      for (const line of lines) {
        gpus.append(el('div', 'jp-Stratolab-gpu', line));
      }
      if (status.gpus.idle_timeout_seconds) {
        const minutes = Math.round(status.gpus.idle_timeout_seconds / 60);
        gpus.append(
          el(
            'div',
            'jp-Stratolab-note',
            `Released after ${minutes} min of inactivity`
          )
        );
      }
    }
    fact(lines.length > 1 ? 'GPUs' : 'GPU', gpus);
    if (ledger && ledger.inventory.length) {
      // every device of the machine and what holds it: servers, scheduled runs, trials, functions
      const machine = el('dd', 'jp-Stratolab-fact jp-Stratolab-gpuLedger', undefined, 'stratolab-gpu-ledger');
      for (const line of ledgerLines(ledger)) {
        machine.append(el('div', 'jp-Stratolab-gpu', line));
      }
      fact(ledger.all_names ? 'Machine GPUs (all users)' : 'Machine GPUs', machine);
    }
    if (status.user) {
      const server = status.server_name ? ` (server “${status.server_name}”)` : '';
      fact('User', el('dd', 'jp-Stratolab-fact', `${status.user}${server}`, 'stratolab-user'));
    }
    nodes.push(facts);

    if (status.hub) {
      const link = el('a', 'jp-Stratolab-hubLink', 'Hub control panel', 'stratolab-hub-link');
      link.href = status.hub.home_url;
      link.target = '_blank';
      link.rel = 'noopener';
      nodes.push(link);
    }
    this.body.replaceChildren(...nodes);
  }

  private _status: IStratolabStatus | null = null;
}

/**
 * The sidebar panel.
 */
export class StratolabPanel extends Panel {
  constructor(sections: PanelSection[] = [new EnvironmentSection()]) {
    super();
    this.id = 'stratolab-panel';
    this.addClass('jp-Stratolab-panel');
    this.title.icon = stratolabIcon;
    this.title.caption = 'Stratolab';
    this.node.dataset.testid = 'stratolab-panel';

    const header = new Widget({ node: el('header', 'jp-Stratolab-header') });
    header.node.append(el('h2', 'jp-Stratolab-title', 'Stratolab'));
    this._refreshButton = el(
      'button',
      'jp-Button jp-Stratolab-refresh',
      'Refresh',
      'stratolab-refresh'
    );
    this._refreshButton.type = 'button';
    this._refreshButton.title = 'Reload the information in this panel';
    this._refreshButton.addEventListener('click', () => void this.refresh());
    header.node.append(this._refreshButton);
    this.addWidget(header);

    for (const section of sections) {
      this.addSection(section);
    }
  }

  /** The sections, in display order. */
  get sections(): ReadonlyArray<PanelSection> {
    return this._sections;
  }

  addSection(section: PanelSection): void {
    this._sections.push(section);
    this.addWidget(section);
  }

  /** Reload every section; concurrent calls share one round of requests. */
  refresh(): Promise<void> {
    if (!this._pending) {
      this._refreshButton.disabled = true;
      this._pending = Promise.all(this._sections.map(s => s.refresh())).then(() => {
        this._pending = null;
        this._refreshButton.disabled = false;
      });
    }
    return this._pending;
  }

  /** Seconds between automatic refreshes while the panel is visible; 0 turns them off. */
  set refreshInterval(seconds: number) {
    window.clearInterval(this._timer);
    this._timer = undefined;
    if (seconds > 0) {
      this._timer = window.setInterval(() => {
        if (this.isVisible) {
          void this.refresh();
        }
      }, seconds * 1000);
    }
  }

  dispose(): void {
    window.clearInterval(this._timer);
    super.dispose();
  }

  protected onAfterShow(): void {
    void this.refresh();
  }

  private _sections: PanelSection[] = [];
  private _refreshButton: HTMLButtonElement;
  private _pending: Promise<void> | null = null;
  private _timer: number | undefined;
}
