/**
 * The Environment section of the panel: this server's profile, limits and GPUs.
 */
import { el } from '../ui';
import { fetchGpuLedger, fetchStatus, IGpuLedger, IStratolabStatus, StatusError } from './api';
import { formatCpu, gpuLines, ledgerLines } from './format';
import { PanelSection } from './panel';

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
        error instanceof StatusError ? error.message : `Unexpected error: ${(error as Error).message || error}`;
      this.showError(message, 'stratolab-error');
    }
  }

  private render(status: IStratolabStatus, ledger: IGpuLedger | null = null): void {
    const profile = status.profile;
    const nodes: HTMLElement[] = [
      el('div', 'jp-Stratolab-profile', profile.display_name || 'Default environment', 'stratolab-profile')
    ];
    if (profile.description) {
      nodes.push(el('p', 'jp-Stratolab-description', profile.description, 'stratolab-profile-description'));
    }

    const facts = el('dl', 'jp-Stratolab-facts');
    const fact = (label: string, value: HTMLElement) => {
      facts.append(el('dt', 'jp-Stratolab-factLabel', label), value);
    };
    fact('CPU', el('dd', 'jp-Stratolab-fact', formatCpu(status.limits.cpu), 'stratolab-cpu'));
    fact(
      'Memory',
      el('dd', 'jp-Stratolab-fact', status.limits.memory ? status.limits.memory.text : 'No limit', 'stratolab-memory')
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
        gpus.append(el('div', 'jp-Stratolab-note', `Released after ${minutes} min of inactivity`));
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
