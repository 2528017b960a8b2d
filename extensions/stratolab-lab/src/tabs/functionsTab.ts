/**
 * The Functions tab: every function with its version, state, instances, invocations, latency and
 * last deploy; the detail shows its numbers and endpoint, with the sidebar's actions, and its triggers.
 */
import { functionActions } from '../functions/actions';
import { IFunction, IFunctionVersion, listFunctions } from '../functions/api';
import { formatMs, trafficText } from '../functions/format';
import { formatTime } from '../jobs/format';
import { TriggersView, TriggersViews } from '../triggers/view';
import { IListTabOptions } from './listTab';

/** The newest version (the last deployed). */
export function latestVersion(fn: IFunction): IFunctionVersion | null {
  return fn.versions.reduce<IFunctionVersion | null>(
    (latest, v) => (latest && latest.version > v.version ? latest : v),
    null
  );
}

/** The detail's Triggers, one per function, kept while the function exists (the detail is redrawn often). */
const triggerViews = new TriggersViews(
  fn => new TriggersView({ fn, testId: 'stratolab-tab-functions-detail-triggers', open: true })
);

async function loadFunctions(): Promise<IFunction[]> {
  const functions = await listFunctions();
  triggerViews.keepOnly(functions.map(fn => fn.name));
  return functions;
}

export const functionsTab: IListTabOptions<IFunction> = {
  id: 'functions',
  label: 'Functions',
  actionTitle: 'Stratolab functions',
  emptyText: 'No functions yet. Right-click a code cell that defines a function and choose “Deploy as function”.',
  rowKey: fn => `${fn.owner}-${fn.name}`,
  load: loadFunctions,
  sort: { key: 'name', direction: 'asc' },
  columns: [
    { key: 'name', label: 'Name', value: fn => fn.name },
    { key: 'owner', label: 'Owner', value: fn => fn.owner },
    {
      key: 'version',
      label: 'Version',
      kind: 'number',
      firstDirection: 'desc',
      value: fn => latestVersion(fn)?.version,
      text: fn => (latestVersion(fn) ? `v${latestVersion(fn)!.version}` : '')
    },
    { key: 'state', label: 'State', choices: true, value: fn => latestVersion(fn)?.state ?? 'none' },
    { key: 'instances', label: 'Instances', kind: 'number', firstDirection: 'desc', value: fn => fn.instances },
    {
      key: 'invocations',
      label: 'Invocations',
      kind: 'number',
      firstDirection: 'desc',
      value: fn => fn.stats.invocations
    },
    {
      key: 'p50',
      label: 'p50 latency',
      kind: 'number',
      value: fn => fn.stats.p50_ms,
      text: fn => formatMs(fn.stats.p50_ms)
    },
    {
      key: 'updated',
      label: 'Updated',
      kind: 'date',
      firstDirection: 'desc',
      value: fn => latestVersion(fn)?.created_at,
      text: fn => formatTime(latestVersion(fn)?.created_at)
    }
  ],
  detail: (fn, guard, prefix) => ({
    title: fn.name,
    fields: [
      ['Owner', fn.owner, 'owner'],
      ['Access', fn.public ? 'public' : 'with a function key', 'access'],
      ['Endpoint', fn.url, 'url'],
      ['Versions', fn.versions.map(v => `v${v.version} ${v.state}`).join(', ') || 'none', 'versions'],
      ['Traffic', trafficText(fn), 'traffic'],
      ['Instances', `${fn.instances} (${fn.scaling.min_instances}–${fn.scaling.max_instances})`, 'instances'],
      ['Invocations', `${fn.stats.invocations}${fn.stats.errors ? ` (${fn.stats.errors} errors)` : ''}`, 'invocations'],
      ['Latency', `p50 ${formatMs(fn.stats.p50_ms)} · p99 ${formatMs(fn.stats.p99_ms)}`, 'latency'],
      ['Cold starts', String(fn.cold_starts), 'cold-starts']
    ],
    actions: functionActions(fn, `${prefix}-action`, guard),
    extra: [triggerViews.for(fn.name).node]
  })
};
