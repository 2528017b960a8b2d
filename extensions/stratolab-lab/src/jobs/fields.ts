/**
 * Fields that the Schedule and Tune dialogs share: the environment select and the notebook's
 * parameters read from its `parameters` cell.
 */
import { el, FieldErrors, selectInput, setOptions } from '../ui';
import { INotebookParameter, listProfiles } from './api';
import { profileOptions } from './format';

/**
 * The environment select: the default (and `wanted`) until the scheduler's list has come, then its
 * profiles (`gpuNote` after a GPU count: "per trial"). A failure to list them is an error of
 * `profile` in `errors`.
 */
export function environmentSelect(
  testId: string,
  wanted: string,
  errors: FieldErrors,
  gpuNote = ''
): HTMLSelectElement {
  const select = selectInput(testId, profileOptions([], wanted, gpuNote), wanted);
  listProfiles()
    .then(profiles => {
      const current = select.value;
      setOptions(select, profileOptions(profiles, current, gpuNote));
      select.value = current;
    })
    .catch(error => errors.show('profile', `Cannot list the environments: ${(error as Error).message}`));
  return select;
}

/** How a dialog says that it has no parameters to show: the class and test ids of its notes. */
export interface IParameterNotes {
  className: string;
  errorTestId: string;
  /** Why a notebook without a `parameters` cell is no use here. */
  none: string;
  noneTestId: string;
}

/**
 * What `ask` answers about the notebook's `parameters` cell; when it fails or finds no parameter,
 * `body` says so and null is returned.
 */
export async function askParameters<T extends { parameters: INotebookParameter[] }>(
  body: HTMLElement,
  ask: () => Promise<T>,
  notes: IParameterNotes
): Promise<T | null> {
  let answer: T;
  try {
    answer = await ask();
  } catch (error) {
    const message = `Cannot read the notebook’s parameters: ${(error as Error).message}`;
    body.replaceChildren(el('p', notes.className, message, notes.errorTestId));
    return null;
  }
  if (answer.parameters.length === 0) {
    body.replaceChildren(el('p', notes.className, notes.none, notes.noneTestId));
    return null;
  }
  return answer;
}
