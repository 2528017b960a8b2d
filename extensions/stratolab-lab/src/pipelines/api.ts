/**
 * The pipelines service's API, as the lab uses it (through `pipelinesClient`, the server's
 * `stratolab/pipelines/` route). Shapes as docs/pipelines.md gives them.
 */
import { pipelinesClient } from '../api/client';

export interface IValidationError {
  node: string | null;
  node_id: string | null;
  field: string | null;
  message: string;
}

export interface IValidation {
  valid: boolean;
  errors: IValidationError[];
}

export interface IPipelineStep {
  /** The node's id in the file. */
  id: string;
  name: string;
  op: string;
  state: string;
  started_at: string | null;
  finished_at: string | null;
  duration: number | null;
  /** The scheduler run of a notebook step. */
  run_id: number | string | null;
  automl_job_id?: number | string | null;
  records: Record<string, unknown> | null;
  outputs?: unknown;
  error: string | null;
  /** A condition's outcome. */
  branch?: boolean | null;
  function_version?: number | null;
  rollout_id?: number | string | null;
}

export interface IPipelineRun {
  id: number | string;
  owner: string;
  pipeline: string;
  path: string | null;
  state: string;
  parameters: Record<string, unknown>;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  duration: number | null;
  error: string | null;
  steps: IPipelineStep[];
}

export function validatePipeline(path: string): Promise<IValidation> {
  return pipelinesClient.post<IValidation>('api/pipelines/validate', { path });
}

export function startRun(path: string, parameters: Record<string, unknown>): Promise<IPipelineRun> {
  return pipelinesClient.post<IPipelineRun>('api/runs', { path, parameters });
}

/** The runs of the pipeline at `path` (all the user's runs without it), newest first. */
export function listRuns(path?: string, limit = 50): Promise<IPipelineRun[]> {
  const query = new URLSearchParams({ limit: String(limit) });
  if (path) {
    query.set('pipeline', path);
  }
  return pipelinesClient.get<{ runs: IPipelineRun[] }>(`api/runs?${query}`).then(d => d.runs);
}

export function getRun(id: number | string): Promise<IPipelineRun> {
  return pipelinesClient.get<IPipelineRun>(`api/runs/${encodeURIComponent(String(id))}`);
}

export function stopRun(id: number | string): Promise<IPipelineRun> {
  return pipelinesClient.post<IPipelineRun>(`api/runs/${encodeURIComponent(String(id))}/stop`);
}

/** Resume a failed or stopped run (from its failed step, or `fromStep`): a new run. */
export function resumeRun(id: number | string, fromStep?: string): Promise<IPipelineRun> {
  return pipelinesClient.post<IPipelineRun>(
    `api/runs/${encodeURIComponent(String(id))}/resume`,
    fromStep ? { from_step: fromStep } : {}
  );
}

export function deleteRun(id: number | string): Promise<void> {
  return pipelinesClient.delete(`api/runs/${encodeURIComponent(String(id))}`);
}

/** A step's executed notebook (nbformat JSON). */
export function stepOutput(runId: number | string, step: string): Promise<unknown> {
  return pipelinesClient.get<unknown>(
    `api/runs/${encodeURIComponent(String(runId))}/steps/${encodeURIComponent(step)}/output`
  );
}
