/**
 * The Pipelines section of the panel: the user's latest pipeline runs (state, started, duration), each
 * with Open (the `.pipeline` file as a graph, showing that run) and Stop while it is going. Polled
 * every 3 s while a run is queued or running, else every 10 s, while the panel is shown.
 */
import { ModelSection } from '../environment/panel';
import { formatTime } from '../jobs/format';
import { actionButtons, el, facts, guarded, mostRecent, showList } from '../ui';
import { ILoaded, SectionModel } from '../ui/model';
import { IPipelineRun, listRuns, stopRun } from './api';
import { isActive, shortDuration, stepStyle } from './format';

export class PipelinesModel extends SectionModel<null, IPipelineRun[]> {
  get runs(): ReadonlyArray<IPipelineRun> {
    return this.data ?? [];
  }

  protected async fetch(): Promise<ILoaded<null, IPipelineRun[]>> {
    return { data: await listRuns(undefined, 50), selected: null };
  }

  protected isBusy(data: IPipelineRun[]): boolean {
    return data.some(isActive);
  }
}

export interface IPipelinesSectionOptions {
  /** Open the `.pipeline` file at `path` as a graph showing the run `runId`. */
  openRun: (path: string, runId: string | number) => Promise<unknown>;
}

export class PipelinesSection extends ModelSection<null, PipelinesModel> {
  constructor(private readonly options: IPipelinesSectionOptions) {
    super(
      {
        title: 'Pipelines',
        testId: 'stratolab-pipelines',
        className: 'jp-Stratolab-pipelines',
        errorTestId: 'stratolab-pipelines-error'
      },
      new PipelinesModel(null)
    );
    this.body.append(this.errorNode, this.listNode);
    this.listNode.append(el('p', 'jp-Stratolab-loading', 'Loading…'));
    this.model.startPolling(this);
  }

  protected render(): void {
    const { shown, hidden } = mostRecent(this.model.runs, r => Date.parse(r.created_at) || 0);
    showList(
      this.listNode,
      [...shown.map(r => this.renderRun(r)), ...this.moreNote(hidden, 'pipeline runs', 'stratolab-pipelines-more')],
      ['No pipeline runs yet. Open a .pipeline file and press Run.', 'stratolab-pipelines-empty']
    );
  }

  private renderRun(r: IPipelineRun): HTMLElement {
    const testId = `stratolab-pipeline-run-${r.id}`;
    const card = el('div', 'jp-Stratolab-function jp-Stratolab-pipelineRun', undefined, testId);
    const title = el('div', 'jp-Stratolab-functionTitle');
    title.append(el('span', 'jp-Stratolab-functionName', `${r.pipeline} #${r.id}`));
    const badge = el(
      'span',
      `jp-Stratolab-badge jp-Stratolab-stateBadge ${stepStyle(r.state).className}`,
      r.state,
      `${testId}-state`
    );
    title.append(badge);
    card.append(title);
    const { node, add } = facts(testId);
    if (r.path) {
      add('File', r.path, 'path');
    }
    add('Started', formatTime(r.started_at ?? r.created_at), 'started');
    add('Duration', shortDuration(r.duration) || (isActive(r) ? 'running' : '–'), 'duration');
    const done = r.steps.filter(s => ['succeeded', 'cached', 'skipped'].includes(s.state)).length;
    add('Steps', `${done}/${r.steps.length} done`, 'steps');
    card.append(node);
    const act = actionButtons(testId, run => guarded('Stratolab pipelines', run, () => this.refresh(true)));
    const actions = el('div', 'jp-Stratolab-actions');
    if (r.path) {
      const path = r.path;
      actions.append(
        act('Open', 'Open the pipeline as a graph, showing this run', () => this.options.openRun(path, r.id))
      );
    }
    if (isActive(r)) {
      actions.append(act('Stop', 'Stop this run', () => stopRun(r.id)));
    }
    card.append(actions);
    return card;
  }

  private readonly listNode = el('div', 'jp-Stratolab-functionList');
}
