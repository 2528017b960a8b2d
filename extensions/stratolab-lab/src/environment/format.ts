/**
 * How this server's environment reads in the panel: CPU, memory, GPUs and the machine's GPU ledger.
 * Pure: no requests, no DOM.
 */
import { IGpuLedger, IStratolabStatus } from './api';

export function formatCpu(cpu: number | null): string {
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

export function gpuLines(status: IStratolabStatus): string[] {
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

/** One line per device of the machine: what holds it, or that it is free. */
export function ledgerLines(ledger: IGpuLedger): string[] {
  return ledger.inventory.map(device => {
    const holders = ledger.held.filter(h => h.device === device).map(h => h.described);
    return `GPU ${device} · ${holders.length ? holders.join(', ') : 'free'}`;
  });
}
