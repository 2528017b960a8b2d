/**
 * The state of the AutoML section: the user's searches and the selected one's trials and insights,
 * reloaded every 2 s while a search is queued or running and the panel is visible, else every 10 s.
 */
import { ACTIVE_STATES } from '../jobs/format';
import { ILoaded, SectionModel } from '../ui/model';
import { fetchInsights, IAutoMLJob, IInsights, ITrial, listAutoMLJobs, listTrials } from './api';

/** The selected search's trials and insights, and the state of the search they were loaded for. */
export interface IAutoMLDetail {
  jobId: number;
  version: string;
  trials: ITrial[];
  insights: IInsights;
}

export interface IAutoMLData {
  jobs: IAutoMLJob[];
  detail: IAutoMLDetail | null;
}

/** The search whose trials are shown (null: none), and the data loaded for it. */
export class AutoMLModel extends SectionModel<number | null, IAutoMLData> {
  protected readonly pollMs = { active: 2000, idle: 10000 };

  protected isBusy(data: IAutoMLData): boolean {
    return data.jobs.some(j => ACTIVE_STATES.includes(j.state));
  }

  /** The searches last loaded, newest first. */
  get jobs(): ReadonlyArray<IAutoMLJob> {
    return this.data?.jobs ?? [];
  }

  /** The selected search's trials and insights; null when none is selected. */
  get detail(): IAutoMLDetail | null {
    return this.data?.detail ?? null;
  }

  protected async fetch(
    selected: number | null,
    previous: IAutoMLData | null
  ): Promise<ILoaded<number | null, IAutoMLData>> {
    const jobs = await listAutoMLJobs();
    const job = jobs.find(j => j.id === selected) ?? null;
    if (!job) {
      return { data: { jobs, detail: null }, selected: null }; // none selected, or deleted
    }
    // An ended search changes no more: its trials and insights are fetched once.
    let detail = previous?.detail ?? null;
    const version = JSON.stringify([job.state, job.counts, job.best, job.finished_at]);
    if (!detail || detail.jobId !== job.id || detail.version !== version || ACTIVE_STATES.includes(job.state)) {
      const [trials, insights] = await Promise.all([listTrials(job.id), fetchInsights(job.id)]);
      detail = { jobId: job.id, version, trials, insights };
    }
    return { data: { jobs, detail }, selected };
  }
}
