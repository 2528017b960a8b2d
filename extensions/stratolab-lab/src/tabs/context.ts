/**
 * What the main-area tabs need from the lab and from each other: the contents manager and how to
 * open a file (a run's notebook), the schedule dialog, who hears of a deployed function, and how to
 * show the runs of one schedule.
 */
import { Contents } from '@jupyterlab/services';

import { IFunction } from '../functions/api';
import { ISchedule } from '../jobs/api';

export interface ITabContext {
  contents: Contents.IManager;
  openPath: (path: string) => Promise<unknown>;
  editSchedule: (schedule: ISchedule) => Promise<void>;
  /** After Deploy best made a function (the Functions section and tab reload). */
  onDeployed?: (fn: IFunction) => void;
  /** Open the Runs tab filtered to one schedule's runs. */
  showRunsOf: (scheduleName: string) => Promise<void>;
}
