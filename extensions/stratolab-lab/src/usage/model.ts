/**
 * The state of the Usage section: this month's usage of the user (totals, breakdown by thing, cost
 * per day) and their budgets, reloaded when the panel refreshes.
 */
import { ILoaded, SectionModel } from '../ui/model';
import { getBudgets, getUsage, IBudget, IUsage } from './api';
import { dailyPoints, IDayPoint } from './chart';
import { monthStart } from './format';

export interface IUsageData {
  usage: IUsage;
  budgets: IBudget[];
  days: IDayPoint[];
}

/** Not polled on its own: the panel refreshes it with the environment. */
export class UsageModel extends SectionModel<null, IUsageData> {
  /** `clock`: now (tests of the month's start). */
  constructor(private readonly clock: () => Date = () => new Date()) {
    super(null);
  }

  protected async fetch(): Promise<ILoaded<null, IUsageData>> {
    const from = monthStart(this.clock());
    const [usage, budgets] = await Promise.all([getUsage(from, 'thing'), getBudgets()]);
    // the daily series comes with every answer; a service that answers it only for by=day is asked again
    let series = usage.series;
    if (!series) {
      const byDay = await getUsage(from, 'day');
      series = byDay.series ?? byDay.breakdown.map(line => ({ day: line.key, cost: line.cost }));
    }
    const days = dailyPoints(series, usage.from || from, usage.to || this.clock().toISOString());
    return { data: { usage, budgets, days }, selected: null };
  }

  protected isBusy(): boolean {
    return false;
  }
}
