/**
 * Pipelines in the lab: the `pipeline` file type (`.pipeline`, Elyra's JSON), the "Pipeline" document
 * factory that opens it as a graph (the default; "Open With > Editor" edits the JSON), and the
 * Pipelines section of the panel. `registerPipelines` is called by the plugin (src/index.ts).
 */
import { ILayoutRestorer, JupyterFrontEnd } from '@jupyterlab/application';
import { WidgetTracker } from '@jupyterlab/apputils';
import { ABCWidgetFactory, DocumentRegistry, DocumentWidget, IDocumentWidget } from '@jupyterlab/docregistry';

import { pipelineIcon } from './icons';
import { PipelinesSection } from './section';
import { IPipelineViewOptions, PipelineView } from './view';

export { PipelinesSection } from './section';
export { PipelineView } from './view';

export const PIPELINE_FILE_TYPE = 'pipeline';
export const PIPELINE_FACTORY = 'Pipeline';

class PipelineFactory extends ABCWidgetFactory<IDocumentWidget<PipelineView>> {
  constructor(
    options: DocumentRegistry.IWidgetFactoryOptions<IDocumentWidget<PipelineView>>,
    private readonly viewOptions: IPipelineViewOptions
  ) {
    super(options);
  }

  protected createNewWidget(context: DocumentRegistry.Context): IDocumentWidget<PipelineView> {
    const content = new PipelineView(context, this.viewOptions);
    const widget = new DocumentWidget({ content, context });
    widget.title.icon = pipelineIcon;
    widget.addClass('jp-Stratolab-pipelineDocument');
    return widget;
  }
}

/**
 * Register the file type and the graph factory; return the Pipelines section (for the panel) and
 * `openRun`, which opens a pipeline file showing one of its runs.
 */
export function registerPipelines(
  app: JupyterFrontEnd,
  restorer: ILayoutRestorer | null
): { section: PipelinesSection; openRun: (path: string, runId: string | number) => Promise<void> } {
  const openPath = (path: string) => app.commands.execute('docmanager:open', { path });
  app.docRegistry.addFileType({
    name: PIPELINE_FILE_TYPE,
    displayName: 'Pipeline',
    extensions: ['.pipeline'],
    mimeTypes: ['application/json'],
    contentType: 'file',
    fileFormat: 'text',
    icon: pipelineIcon
  });
  const factory = new PipelineFactory(
    {
      name: PIPELINE_FACTORY,
      label: 'Pipeline graph',
      fileTypes: [PIPELINE_FILE_TYPE],
      defaultFor: [PIPELINE_FILE_TYPE],
      modelName: 'text'
    },
    { contents: app.serviceManager.contents, openPath }
  );
  app.docRegistry.addWidgetFactory(factory);
  const tracker = new WidgetTracker<IDocumentWidget<PipelineView>>({ namespace: 'stratolab-pipeline' });
  factory.widgetCreated.connect((_, widget) => {
    widget.context.pathChanged.connect(() => void tracker.save(widget));
    void tracker.add(widget);
  });
  if (restorer) {
    void restorer.restore(tracker, {
      command: 'docmanager:open',
      args: widget => ({ path: widget.context.path, factory: PIPELINE_FACTORY }),
      name: widget => widget.context.path
    });
  }

  const openRun = async (path: string, runId: string | number) => {
    const widget = (await app.commands.execute('docmanager:open', { path, factory: PIPELINE_FACTORY })) as
      IDocumentWidget<PipelineView> | undefined;
    if (widget?.content instanceof PipelineView) {
      await widget.context.ready;
      widget.content.selectRun(runId);
    }
  };
  return { section: new PipelinesSection({ openRun }), openRun };
}
