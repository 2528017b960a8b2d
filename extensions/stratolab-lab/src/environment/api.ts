/**
 * The environment of this server: its status (profile, limits, GPUs, from the server extension's
 * `stratolab/status`) and the machine's GPU ledger (from the scheduler).
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { schedulerClient } from '../api/client';

export interface IMemoryLimit {
  bytes: number;
  text: string;
}

export interface IGpuUsage {
  id: string;
  uuid: string;
  name: string;
  memory_used_bytes: number;
  memory_total_bytes: number;
  utilization_percent: number;
}

export interface IStratolabStatus {
  user: string | null;
  server_name: string;
  profile: {
    slug: string | null;
    display_name: string | null;
    description: string;
  };
  limits: {
    cpu: number | null;
    memory: IMemoryLimit | null;
  };
  gpus: {
    assigned: string[];
    names: string[];
    idle_timeout_seconds: number | null;
    usage: IGpuUsage[];
  };
  hub: { url: string; home_url: string } | null;
  version: string;
  isolation: string | null;
}

/**
 * A failed request, with a message meant for the person looking at the panel.
 */
export class StatusError extends Error {}

/**
 * Fetch this server's status; throws a `StatusError` whose message can be shown as is.
 */
export async function fetchStatus(
  settings: ServerConnection.ISettings = ServerConnection.makeSettings()
): Promise<IStratolabStatus> {
  const url = URLExt.join(settings.baseUrl, 'stratolab', 'status');
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, {}, settings);
  } catch (error) {
    throw new StatusError(`Cannot reach the server: ${(error as Error).message || error}`);
  }
  if (response.status === 404) {
    throw new StatusError('This server does not have the Stratolab server extension (stratolab.server) enabled.');
  }
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const body = await response.json();
      detail = body.message || detail;
    } catch {
      // Not JSON: keep the status text.
    }
    throw new StatusError(`The server answered ${response.status}${detail ? `: ${detail}` : ''}`);
  }
  try {
    return (await response.json()) as IStratolabStatus;
  } catch {
    throw new StatusError('The server sent a status that is not valid JSON.');
  }
}

/** One device of the machine's GPU ledger (`GET /services/scheduler/api/gpus`). */
export interface IGpuHolding {
  device: string;
  kind: string;
  /** This user's own holder ("notebook server (gpu-1)"); null for another user's */
  holder: string | null;
  username: string | null;
  /** How the holder is named to this user ("your scheduled run 7", "another user's ...") */
  described: string;
  since: string;
}

export interface IGpuLedger {
  inventory: string[];
  free: string[];
  held: IGpuHolding[];
  all_names: boolean;
}

/**
 * The machine's GPU ledger (servers, scheduled runs, AutoML trials and function instances), through
 * this server's scheduler proxy; null when the scheduler cannot be asked (the panel then shows only
 * this server's own devices).
 */
export async function fetchGpuLedger(): Promise<IGpuLedger | null> {
  try {
    return await schedulerClient.get<IGpuLedger>('api/gpus');
  } catch {
    return null;
  }
}
