/**
 * The commands that open the main-area tabs (Functions, Schedules, Runs, AutoML searches), in the
 * command palette and the launcher under "Stratolab". A tab is opened once: its command again
 * brings it to the front (the Runs command can also filter it to one schedule: `{schedule: name}`).
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import { ICommandPalette, MainAreaWidget } from '@jupyterlab/apputils';
import { ILauncher } from '@jupyterlab/launcher';
import { LabIcon } from '@jupyterlab/ui-components';

import { IAutoMLJob } from '../automl/api';
import { PanelSection } from '../environment/panel';
import { IFunction } from '../functions/api';
import { IRun, ISchedule } from '../jobs/api';
import { button } from '../ui';
import { deployIcon, scheduleIcon, stratolabIcon, tuneIcon } from '../ui/icons';
import { automlTab } from './automlTab';
import { ITabContext } from './context';
import { functionsTab } from './functionsTab';
import { IListTabOptions, ListTab } from './listTab';
import { runsTab } from './runsTab';
import { schedulesTab } from './schedulesTab';

export namespace TabCommandIDs {
  export const openFunctions = 'stratolab:open-functions';
  export const openSchedules = 'stratolab:open-schedules';
  export const openRuns = 'stratolab:open-runs';
  export const openAutoML = 'stratolab:open-automl';
}

/** The lab's parts the tabs are registered with; the palette and launcher are optional. */
export interface ITabHosts {
  palette: ICommandPalette | null;
  launcher: ILauncher | null;
}

/** The tabs, by the id of their spec, to reload or focus them from elsewhere (the sidebar). */
export class StratolabTabs {
  constructor(
    private readonly app: JupyterFrontEnd,
    context: Omit<ITabContext, 'showRunsOf'>
  ) {
    const full: ITabContext = {
      ...context,
      showRunsOf: async schedule => {
        await app.commands.execute(TabCommandIDs.openRuns, { schedule });
      }
    };
    this.specs = {
      functions: functionsTab,
      schedules: schedulesTab(full),
      runs: runsTab(full),
      automl: automlTab(full)
    };
  }

  /** Add the four commands, and their palette and launcher items. */
  register({ palette, launcher }: ITabHosts): void {
    const items: [string, keyof TabSpecs, string, LabIcon][] = [
      [
        TabCommandIDs.openFunctions,
        'functions',
        'Your serverless functions: versions, state, invocations, latency',
        deployIcon
      ],
      [TabCommandIDs.openSchedules, 'schedules', 'Your scheduled notebooks: cron, next run, last state', scheduleIcon],
      [
        TabCommandIDs.openRuns,
        'runs',
        'Runs of your scheduled notebooks, filtered by state and schedule',
        stratolabIcon
      ],
      [TabCommandIDs.openAutoML, 'automl', 'Your AutoML searches: state, trials, best value', tuneIcon]
    ];
    items.forEach(([command, id, caption, icon], rank) => {
      this.app.commands.addCommand(command, {
        label: this.specs[id].label,
        caption,
        icon,
        execute: args => {
          const tab = this.open(id);
          if (id === 'runs' && typeof args.schedule === 'string') {
            (tab as ListTab<IRun>).table.setChoice('schedule', args.schedule);
          }
          return tab;
        }
      });
      palette?.addItem({ command, category: 'Stratolab' });
      launcher?.add({ command, category: 'Stratolab', rank });
    });
  }

  /** Open the tab of `id`, or bring it to the front when it is open. */
  open(id: keyof TabSpecs): ListTab<unknown> {
    let widget = this.open_.get(id);
    if (!widget || widget.isDisposed) {
      const spec = this.specs[id] as IListTabOptions<unknown>;
      const content = new ListTab<unknown>(spec);
      widget = new MainAreaWidget({ content });
      widget.id = `stratolab-tab-${id}`;
      widget.title.label = `Stratolab ${spec.label}`;
      widget.title.icon = stratolabIcon;
      widget.title.closable = true;
      this.open_.set(id, widget);
      this.app.shell.add(widget, 'main');
    }
    this.app.shell.activateById(widget.id);
    return widget.content;
  }

  /** Reload an open tab (after a change made elsewhere, say a deploy). */
  refresh(id: keyof TabSpecs): void {
    const widget = this.open_.get(id);
    if (widget && !widget.isDisposed) {
      void widget.content.refresh();
    }
  }

  private readonly specs: TabSpecs;
  private readonly open_ = new Map<keyof TabSpecs, MainAreaWidget<ListTab<unknown>>>();
}

interface TabSpecs {
  functions: IListTabOptions<IFunction>;
  schedules: IListTabOptions<ISchedule>;
  runs: IListTabOptions<IRun>;
  automl: IListTabOptions<IAutoMLJob>;
}

/** The sidebar sections that get a button opening their lists as tabs. */
export interface ISidebarSections {
  functions: PanelSection;
  jobs: PanelSection;
  automl: PanelSection;
}

/** Beside each sidebar section's title, buttons that open its lists as main-area tables. */
export function addTabButtons(app: JupyterFrontEnd, { functions, jobs, automl }: ISidebarSections): void {
  const open = (command: string, label: string, testId: string, title: string) =>
    button(label, () => void app.commands.execute(command), testId, title);
  functions.addTitleButton(
    open(
      TabCommandIDs.openFunctions,
      'All functions…',
      'stratolab-functions-open-tab',
      'Open every function in a table'
    )
  );
  jobs.addTitleButton(
    open(TabCommandIDs.openSchedules, 'Schedules…', 'stratolab-schedules-open-tab', 'Open every schedule in a table')
  );
  jobs.addTitleButton(open(TabCommandIDs.openRuns, 'Runs…', 'stratolab-runs-open-tab', 'Open every run in a table'));
  automl.addTitleButton(
    open(TabCommandIDs.openAutoML, 'All searches…', 'stratolab-automl-open-tab', 'Open every AutoML search in a table')
  );
  // the sidebar summarizes long lists; "Show all…" under one opens its table
  functions.moreAction = () => void app.commands.execute(TabCommandIDs.openFunctions);
  jobs.moreAction = () => void app.commands.execute(TabCommandIDs.openSchedules);
  automl.moreAction = () => void app.commands.execute(TabCommandIDs.openAutoML);
}
