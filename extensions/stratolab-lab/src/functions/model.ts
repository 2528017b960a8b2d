/**
 * The state of the Functions section: the user's functions, reloaded when the panel refreshes (and
 * after every action).
 */
import { ILoaded, SectionModel } from '../ui/model';
import { IFunction, listFunctions } from './api';

/** Not polled on its own: the panel refreshes it with the environment. */
export class FunctionsModel extends SectionModel<null, IFunction[]> {
  /** The functions last loaded. */
  get functions(): ReadonlyArray<IFunction> {
    return this.data ?? [];
  }

  protected async fetch(): Promise<ILoaded<null, IFunction[]>> {
    return { data: await listFunctions(), selected: null };
  }

  protected isBusy(): boolean {
    return false;
  }
}
