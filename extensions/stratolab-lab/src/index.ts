/**
 * Stratolab's JupyterLab plugin: the sidebar panel and the command that opens it.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { ISettingRegistry } from '@jupyterlab/settingregistry';

import { stratolabIcon } from './icon';
import { StratolabPanel } from './panel';

export { EnvironmentSection, PanelSection, StratolabPanel } from './panel';
export { fetchStatus, IStratolabStatus, StatusError } from './status';

const PLUGIN_ID = 'stratolab-lab:plugin';

export namespace CommandIDs {
  export const openPanel = 'stratolab:open-panel';
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'The Stratolab sidebar panel: profile, limits and GPUs of this server.',
  autoStart: true,
  optional: [ICommandPalette, ILayoutRestorer, ISettingRegistry],
  activate: (
    app: JupyterFrontEnd,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null,
    settingRegistry: ISettingRegistry | null
  ) => {
    const panel = new StratolabPanel();
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
