/**
 * Stratolab's JupyterLab plugin: the sidebar panel and the command that opens it, "Deploy as
 * function" for notebook code cells (context menu and cell toolbar), and "Schedule…" and "Tune…"
 * for notebooks (file browser context menu, notebook toolbar, command palette).
 */
import { ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { IDefaultFileBrowser } from '@jupyterlab/filebrowser';
import { INotebookTracker } from '@jupyterlab/notebook';
import { ILauncher } from '@jupyterlab/launcher';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { LabIcon } from '@jupyterlab/ui-components';

import { IAutoMLJob } from './automl/api';
import { AutoMLSection } from './automl/section';
import { openTuneDialog } from './automl/tuneDialog';
import { StratolabPanel } from './environment/panel';
import { EnvironmentSection } from './environment/section';
import { openDeployDialog } from './functions/deployDialog';
import { FunctionsSection } from './functions/section';
import { ISchedule } from './jobs/api';
import { openScheduleDialog } from './jobs/scheduleDialog';
import { JobsSection } from './jobs/section';
import { registerPipelines } from './pipelines';
import { addTabButtons, StratolabTabs } from './tabs/commands';
import { deployIcon, scheduleIcon, stratolabIcon, tuneIcon } from './ui/icons';
import { UsageNotifier } from './usage/notifications';
import { UsageSection } from './usage/section';

export { IAutoMLJob, ITrial } from './automl/api';
export { AutoMLSection } from './automl/section';
export { fetchStatus, IStratolabStatus, StatusError } from './environment/api';
export { PanelSection, StratolabPanel } from './environment/panel';
export { EnvironmentSection } from './environment/section';
export { IFunction } from './functions/api';
export { FunctionsSection } from './functions/section';
export { IRun, ISchedule } from './jobs/api';
export { JobsSection } from './jobs/section';
export { PipelinesSection, PipelineView } from './pipelines';
export { UsageSection } from './usage/section';

const PLUGIN_ID = 'stratolab-lab:plugin';

export namespace CommandIDs {
  export const openPanel = 'stratolab:open-panel';
  export const deployCell = 'stratolab:deploy-cell';
  export const scheduleNotebook = 'stratolab:schedule-notebook';
  export const tuneNotebook = 'stratolab:tune-notebook';
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description:
    'The Stratolab sidebar panel (profile, limits and GPUs of this server; serverless functions) and "Deploy as function".',
  autoStart: true,
  optional: [ICommandPalette, ILayoutRestorer, ISettingRegistry, INotebookTracker, IDefaultFileBrowser, ILauncher],
  activate: (
    app: JupyterFrontEnd,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null,
    settingRegistry: ISettingRegistry | null,
    notebooks: INotebookTracker | null,
    fileBrowser: IDefaultFileBrowser | null,
    launcher: ILauncher | null
  ) => {
    const functions = new FunctionsSection({
      openFolder: path => app.commands.execute('filebrowser:go-to-path', { path })
    });
    const contents = app.serviceManager.contents;
    // An open notebook with unsaved changes is saved before the scheduler takes its snapshot.
    const saveIfOpen = async (path: string) => {
      const open = notebooks?.find(w => w.context.path === path);
      if (open && open.context.model.dirty) {
        await open.context.save();
      }
    };
    const scheduleChanged = (schedule: ISchedule, run: unknown) => {
      if (jobs.selected === schedule.id) {
        void jobs.refresh(true);
      } else {
        jobs.selected = schedule.id; // refreshes
      }
      if (run) {
        app.shell.activateById(panel.id);
      }
    };
    const editSchedule = (schedule: ISchedule) =>
      openScheduleDialog({
        contents,
        path: schedule.notebook,
        schedule,
        beforeRead: saveIfOpen,
        onChanged: scheduleChanged
      });
    const jobs = new JobsSection({
      contents,
      openPath: path => app.commands.execute('docmanager:open', { path }),
      editSchedule
    });
    const automl = new AutoMLSection({
      contents,
      openPath: path => app.commands.execute('docmanager:open', { path }),
      onDeployed: () => {
        void functions.refresh();
        tabs.refresh('functions');
      }
    });
    const tuneStarted = (job: IAutoMLJob) => {
      automl.selected = job.id; // refreshes
      app.shell.activateById(panel.id);
    };
    const panel = new StratolabPanel([new EnvironmentSection()]);
    panel.addSection(functions);
    panel.addSection(jobs);
    panel.addSection(automl);
    // `.pipeline` files open as a graph; the Pipelines section lists their runs
    panel.addSection(registerPipelines(app, restorer).section);
    const usage = new UsageSection();
    panel.addSection(usage);
    app.shell.add(panel, 'left', { rank: 500 });
    // budget warnings (and servers stopped for a budget) as lab notifications, each once
    new UsageNotifier(() => {
      app.shell.activateById(panel.id);
      usage.node.scrollIntoView();
    }).start(60);

    // The lists as main-area tables: commands (palette, launcher) and a button per sidebar section.
    const tabs = new StratolabTabs(app, {
      contents,
      openPath: path => app.commands.execute('docmanager:open', { path }),
      editSchedule,
      onDeployed: () => {
        void functions.refresh();
        tabs.refresh('functions');
      }
    });
    tabs.register({ palette, launcher });
    addTabButtons(app, { functions, jobs, automl });
    if (restorer) {
      restorer.add(panel, panel.id);
    }

    app.commands.addCommand(CommandIDs.openPanel, {
      label: 'Open Stratolab panel',
      caption: 'Show the Stratolab panel: profile, limits and GPUs of this server',
      icon: stratolabIcon,
      execute: () => {
        app.shell.activateById(panel.id);
      }
    });
    if (palette) {
      palette.addItem({ command: CommandIDs.openPanel, category: 'Stratolab' });
    }

    if (notebooks) {
      const activeCodeCell = () => notebooks.activeCell?.model.type === 'code';
      // The cell toolbar's button shows or hides itself when the command says it changed.
      const changed = () => app.commands.notifyCommandChanged(CommandIDs.deployCell);
      notebooks.activeCellChanged.connect(changed);
      notebooks.currentChanged.connect(changed);
      app.commands.addCommand(CommandIDs.deployCell, {
        label: 'Deploy as function',
        caption: 'Deploy the function this cell defines, with its model, as an HTTP endpoint',
        icon: deployIcon,
        isEnabled: activeCodeCell,
        // The cell toolbar shows the button on code cells only.
        isVisible: activeCodeCell,
        execute: async () => {
          const current = notebooks.currentWidget;
          if (current) {
            await openDeployDialog(current, () => void functions.refresh());
          }
        }
      });
      app.contextMenu.addItem({
        command: CommandIDs.deployCell,
        selector: '.jp-Notebook .jp-CodeCell',
        rank: 20
      });
      if (palette) {
        palette.addItem({ command: CommandIDs.deployCell, category: 'Stratolab' });
      }
    }

    // The notebook "Schedule…" and "Tune…" are about: the one right-clicked in the file browser, else the current one.
    const notebookToSchedule = (args: Record<string, unknown>): string | null => {
      if (typeof args.path === 'string') {
        return args.path;
      }
      if (args.source === 'filebrowser') {
        for (const item of fileBrowser?.selectedItems() ?? []) {
          return item.type === 'notebook' ? item.path : null;
        }
        return null;
      }
      return notebooks?.currentWidget?.context.path ?? null;
    };
    // "Schedule…" and "Tune…": commands on a notebook, in the file browser's context menu and the palette.
    const addNotebookCommand = (
      id: string,
      rank: number,
      options: { label: string; caption: string; icon: LabIcon; open: (path: string) => Promise<void> }
    ) => {
      app.commands.addCommand(id, {
        label: options.label,
        caption: options.caption,
        icon: options.icon,
        isEnabled: args => notebookToSchedule(args) !== null,
        execute: async args => {
          const path = notebookToSchedule(args);
          if (path) {
            await options.open(path);
          }
        }
      });
      app.contextMenu.addItem({
        command: id,
        selector: '.jp-DirListing-item[data-file-type="notebook"]',
        args: { source: 'filebrowser' },
        rank
      });
      palette?.addItem({ command: id, category: 'Stratolab' });
    };
    addNotebookCommand(CommandIDs.scheduleNotebook, 60, {
      label: 'Schedule…',
      caption: 'Run this notebook on a schedule (cron) or on demand, as a job',
      icon: scheduleIcon,
      open: path => openScheduleDialog({ contents, path, beforeRead: saveIfOpen, onChanged: scheduleChanged })
    });
    addNotebookCommand(CommandIDs.tuneNotebook, 61, {
      label: 'Tune…',
      caption: 'Search the best values of this notebook’s parameters (AutoML: one run of the notebook per trial)',
      icon: tuneIcon,
      open: path => openTuneDialog({ contents, path, beforeRead: saveIfOpen, onStarted: tuneStarted })
    });

    // Fill the panel once, even while collapsed, so it is ready when opened.
    void panel.refresh();

    if (settingRegistry) {
      settingRegistry
        .load(PLUGIN_ID)
        .then(settings => {
          const apply = () => {
            panel.refreshInterval = settings.get('refreshInterval').composite as number;
          };
          apply();
          settings.changed.connect(apply);
        })
        .catch(reason => {
          console.error('Stratolab: failed to load settings.', reason);
          panel.refreshInterval = 30;
        });
    } else {
      panel.refreshInterval = 30;
    }
  }
};

export default plugin;
