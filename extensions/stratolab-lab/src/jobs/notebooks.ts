/**
 * Notebooks in the home: read as the contents manager has them, and folders made for copies.
 */
import { Contents } from '@jupyterlab/services';

/** A notebook of the home, and what saves it first when it is open with unsaved changes. */
export interface INotebookSource {
  contents: Contents.IManager;
  path: string;
  beforeRead?: (path: string) => Promise<void>;
}

/** The notebook as the contents manager has it (saved first when open); undefined if unreadable. */
export async function readNotebookContent(options: INotebookSource): Promise<unknown> {
  try {
    await options.beforeRead?.(options.path);
    const model = await options.contents.get(options.path, { type: 'notebook', content: true });
    return model.content;
  } catch (error) {
    console.warn(`Stratolab: cannot read ${options.path}; the scheduler reads it from the home.`, error);
    return undefined;
  }
}

/** The `content` of a request that snapshots the notebook: absent when it cannot be read (the scheduler then reads it from the home). */
export async function notebookContent(options: INotebookSource): Promise<{ content?: unknown }> {
  const content = await readNotebookContent(options);
  return content === undefined ? {} : { content };
}

/** Create `path` and the folders above it that are missing, with the contents manager. */
export async function ensureDirectory(contents: Contents.IManager, path: string): Promise<void> {
  let current = '';
  for (const part of path.split('/').filter(Boolean)) {
    current = current ? `${current}/${part}` : part;
    try {
      await contents.get(current, { content: false });
    } catch {
      await contents.save(current, { type: 'directory' });
    }
  }
}
