/**
 * The Functions section of the panel: the user's functions, their numbers, what can be done to them
 * (invoke, traffic, rollback, scale, logs, delete), and their triggers.
 */
import { ModelSection } from '../environment/panel';
import { TriggersView, TriggersViews } from '../triggers/view';
import { el, facts, guarded, mostRecent, readOnlyField, showList } from '../ui';
import { functionActions } from './actions';
import { IFunction } from './api';
import { formatMs, trafficText } from './format';
import { FunctionsModel } from './model';
import { RolloutView, RolloutViews } from './rollout';

/**
 * The user's functions, with their numbers and what can be done to them.
 */
export class FunctionsSection extends ModelSection<null, FunctionsModel> {
  /** `openFolder`: show a folder in the file browser (an upload trigger's inbox). */
  constructor(options: { openFolder?: (path: string) => Promise<unknown> } = {}) {
    super(
      {
        title: 'Functions',
        testId: 'stratolab-functions',
        className: 'jp-Stratolab-functions',
        errorTestId: 'stratolab-functions-error'
      },
      new FunctionsModel(null)
    );
    this.body.append(this.errorNode, this.listNode);
    this.listNode.append(el('p', 'jp-Stratolab-loading', 'Loading…'));
    this.triggers = new TriggersViews(
      fn => new TriggersView({ fn, testId: `stratolab-function-${fn}-triggers`, openFolder: options.openFolder })
    );
  }

  protected render(): void {
    // a summary: the functions deployed to last; the Functions tab holds them all
    const { shown, hidden } = mostRecent(this.model.functions, lastDeployed);
    this.triggers.keepOnly(shown.map(fn => fn.name));
    this.rollouts.keepOnly(shown.map(fn => fn.name));
    showList(
      this.listNode,
      [...shown.map(fn => this.renderFunction(fn)), ...this.moreNote(hidden, 'functions', 'stratolab-functions-more')],
      [
        'No functions yet. Right-click a code cell that defines a function and choose “Deploy as function”.',
        'stratolab-functions-empty'
      ]
    );
  }

  private renderFunction(fn: IFunction): HTMLElement {
    const card = el('div', 'jp-Stratolab-function', undefined, `stratolab-function-${fn.name}`);
    const title = el('div', 'jp-Stratolab-functionTitle');
    title.append(el('span', 'jp-Stratolab-functionName', fn.name));
    title.append(el('span', 'jp-Stratolab-badge', fn.public ? 'public' : 'token'));
    card.append(title);

    const { node: factList, add: fact } = facts(`stratolab-function-${fn.name}`);
    fact('Versions', fn.versions.map(v => `v${v.version} ${v.state}`).join(', ') || 'none', 'versions');
    fact('Traffic', trafficText(fn), 'traffic');
    fact('Instances', `${fn.instances} (${fn.scaling.min_instances}–${fn.scaling.max_instances})`, 'instances');
    fact(
      'Invocations',
      `${fn.stats.invocations}${fn.stats.errors ? ` (${fn.stats.errors} errors)` : ''}`,
      'invocations'
    );
    fact('Latency', `p50 ${formatMs(fn.stats.p50_ms)} · p99 ${formatMs(fn.stats.p99_ms)}`, 'latency');
    fact('Cold starts', String(fn.cold_starts), 'cold-starts');
    card.append(factList);

    const url = readOnlyField(fn.url);
    url.title = 'Endpoint URL';
    card.append(url);

    const actions = el('div', 'jp-Stratolab-actions');
    actions.append(...functionActions(fn, `stratolab-function-${fn.name}-action`, run => this.guard(run)));
    card.append(actions);

    // the latest rollout (the same view across redraws, as the triggers')
    const rollout = this.rollouts.for(fn.name);
    rollout.function = fn;
    void rollout.refresh();
    card.append(rollout.node);

    // the same view across redraws (what is open stays open); it reloads itself while open
    const triggers = this.triggers.for(fn.name);
    void triggers.refresh();
    card.append(triggers.node);
    return card;
  }

  /** Run an action; show its error in a dialog; refresh after. */
  private guard(run: () => Promise<unknown>): Promise<void> {
    return guarded('Stratolab functions', run, () => this.refresh(true));
  }

  private readonly listNode = el('div', 'jp-Stratolab-functionList');
  private readonly triggers: TriggersViews;
  private readonly rollouts = new RolloutViews(
    fn => new RolloutView(fn, `stratolab-function-${fn}-rollout`, () => void this.refresh(true))
  );
}

/** When a version of `fn` was last deployed (ms since the epoch; 0 for none). */
function lastDeployed(fn: IFunction): number {
  return Math.max(0, ...fn.versions.map(v => Date.parse(v.created_at) || 0));
}
