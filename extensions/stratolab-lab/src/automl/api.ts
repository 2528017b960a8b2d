/**
 * The scheduler's API for AutoML searches (`api/automl`), as the lab uses it.
 *
 * The shapes mirror docs/scheduler-api.md, "AutoML searches".
 */
import { schedulerClient } from '../api/client';
import { INotebookParameter } from '../jobs/api';
import { IHistoryPoint } from './charts';

/** One parameter's range or choices; `when` makes it apply only under a categorical choice. */
export interface ISpaceItem {
  type: 'float' | 'int' | 'categorical';
  low?: number;
  high?: number;
  log?: boolean;
  step?: number;
  choices?: unknown[];
  when?: Record<string, unknown[]>;
}

export type ISearchSpace = Record<string, ISpaceItem>;

export type Direction = 'maximize' | 'minimize';

/** What `POST api/automl` takes; optional numbers are left out to get the service's defaults. */
export interface IAutoMLRequest {
  notebook: string;
  content?: unknown;
  name?: string;
  space?: ISearchSpace;
  metric: string;
  direction: Direction;
  trials: number;
  parallel: number;
  timeout?: number;
  max_failed?: number;
  trial_timeout?: number;
  algorithm: 'tpe' | 'random' | 'cmaes' | 'grid';
  pruner: 'none' | 'median' | 'successive_halving' | 'hyperband';
  seed?: number;
  /** the environment trials run in (a profile slug); the default profile when absent */
  profile?: string;
}

export interface ITrial {
  number: number;
  /** complete, pruned, fail, running, waiting, or lost (its scheduler died; run again). */
  state: string;
  params: Record<string, unknown>;
  value: number | null;
  duration: number | null;
  error: string | null;
  intermediate: Record<string, number>;
  model: boolean;
  started_at?: string | null;
  finished_at?: string | null;
}

export interface IAutoMLJob {
  id: number;
  name: string;
  owner: string;
  notebook: string;
  /** queued, running, succeeded, failed or stopped */
  state: string;
  error: string | null;
  config: {
    space: ISearchSpace;
    metric: string;
    direction: Direction;
    trials: number;
    parallel: number;
    algorithm: string;
    pruner: string;
    [key: string]: unknown;
  };
  counts: Record<string, number>;
  best: ITrial | null;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
}

export interface IInsights {
  history: IHistoryPoint[];
  importances: Record<string, number>;
}

export interface IProposal {
  parameters: INotebookParameter[];
  space: ISearchSpace;
}

export function listAutoMLJobs(): Promise<IAutoMLJob[]> {
  return schedulerClient.get<{ jobs: IAutoMLJob[] }>('api/automl').then(d => d.jobs);
}

export function proposeSpace(notebook: string, content?: unknown): Promise<IProposal> {
  return schedulerClient.post<IProposal>(
    'api/automl/propose',
    content === undefined ? { notebook } : { notebook, content }
  );
}

export function startAutoMLJob(request: IAutoMLRequest): Promise<IAutoMLJob> {
  return schedulerClient.post<IAutoMLJob>('api/automl', request);
}

export function listTrials(jobId: number): Promise<ITrial[]> {
  return schedulerClient.get<{ trials: ITrial[] }>(`api/automl/${jobId}/trials`).then(d => d.trials);
}

export function fetchInsights(jobId: number): Promise<IInsights> {
  return schedulerClient.get<IInsights>(`api/automl/${jobId}/insights`);
}

/** The best trial's function bundle (.tar.gz), as bytes. */
export async function fetchBestBundle(jobId: number): Promise<ArrayBuffer> {
  return schedulerClient.arrayBuffer(`api/automl/${jobId}/best/bundle`);
}
