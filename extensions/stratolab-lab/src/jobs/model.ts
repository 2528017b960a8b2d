/**
 * The state of the Jobs section: the user's schedules and the runs of the selected one (or of all),
 * reloaded every 3 s while a run is queued or running and the panel is visible, else every 10 s.
 */
import { ILoaded, SectionModel } from '../ui/model';
import { IRun, ISchedule, listRuns, listSchedules } from './api';
import { ACTIVE_STATES } from './format';

export interface IJobsData {
  schedules: ISchedule[];
  runs: IRun[];
}

/** The schedule whose runs are listed (null: all), and the data loaded for it. */
export class JobsModel extends SectionModel<number | null, IJobsData> {
  /** The schedules last loaded. */
  get schedules(): ReadonlyArray<ISchedule> {
    return this.data?.schedules ?? [];
  }

  /** The runs last loaded (of the selected schedule, or of all). */
  get runs(): ReadonlyArray<IRun> {
    return this.data?.runs ?? [];
  }

  protected async fetch(selected: number | null): Promise<ILoaded<number | null, IJobsData>> {
    const [schedules, runs] = await Promise.all([listSchedules(), listRuns(selected)]);
    if (selected !== null && !schedules.some(s => s.id === selected)) {
      // The selected schedule was deleted: the runs of all.
      return { data: { schedules, runs: await listRuns(null) }, selected: null };
    }
    return { data: { schedules, runs }, selected };
  }

  protected isBusy(data: IJobsData): boolean {
    return data.runs.some(r => ACTIVE_STATES.includes(r.state));
  }
}
