/**
 * Stratolab's JupyterLab plugin: the sidebar panel and the command that opens it, and "Deploy as
 * function" for notebook code cells (context menu and cell toolbar).
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { INotebookTracker } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';

import { deployIcon, openDeployDialog } from './deploy';
import { FunctionsSection } from './functions';
import { stratolabIcon } from './icon';
import { EnvironmentSection, StratolabPanel } from './panel';

export { EnvironmentSection, PanelSection, StratolabPanel } from './panel';
export { fetchStatus, IStratolabStatus, StatusError } from './status';
export { FunctionsSection, IFunction } from './functions';

const PLUGIN_ID = 'stratolab-lab:plugin';

export namespace CommandIDs {
  export const openPanel = 'stratolab:open-panel';
  export const deployCell = 'stratolab:deploy-cell';
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description:
    'The Stratolab sidebar panel (profile, limits and GPUs of this server; serverless functions) and "Deploy as function".',
  autoStart: true,
  optional: [ICommandPalette, ILayoutRestorer, ISettingRegistry, INotebookTracker],
  activate: (
    app: JupyterFrontEnd,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null,
    settingRegistry: ISettingRegistry | null,
    notebooks: INotebookTracker | null
  ) => {
    const functions = new FunctionsSection();
    const panel = new StratolabPanel([new EnvironmentSection()]);
    panel.addSection(functions);
    app.shell.add(panel, 'left', { rank: 500 });
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
