/**
 * "Schedule…": the dialog that turns a notebook into a scheduled job (or edits one), with a live
 * preview of the cron expression and the notebook's parameters.
 *
 * The service keeps a snapshot of the notebook, so the dialog sends the notebook's content as the
 * contents manager has it (saved first), besides its path.
 */
import { Dialog } from '@jupyterlab/apputils';
import { Contents } from '@jupyterlab/services';

import { schedulerClient, ServiceError } from '../api/client';
import { FormDialog, SubmittingForm } from '../ui/dialogs';
import { el } from '../ui/dom';
import { checkbox, checkboxes, details, fieldRow, IField, numberField, selectInput, textField } from '../ui/fields';
import { ICronPreview, INotebookParameter, IRun, ISchedule, IScheduleRequest, runNow } from './api';
import {
  browserTimeZone,
  cronHint,
  defaultScheduleName,
  formatParameterValue,
  knownTimeZones,
  nextRunLines,
  scheduleRequest
} from './scheduleForm';
import { askParameters, environmentSelect } from './fields';
import { notebookContent, readNotebookContent } from './notebooks';

export interface IScheduleDialogOptions {
  contents: Contents.IManager;
  /** The notebook's contents path; for an edit, the schedule's notebook. */
  path: string;
  /** The schedule to edit; none to create one. */
  schedule?: ISchedule;
  /** Called before the notebook is read (saves it when it is open with unsaved changes). */
  beforeRead?: (path: string) => Promise<void>;
  /** Called after a schedule was created or saved, with the run started by "Run now". */
  onChanged?: (schedule: ISchedule, run: IRun | null) => void;
}

type Action = 'save' | 'run';

const MISSED_OPTIONS = [
  ['catch_up', 'Catch up once (run for the latest missed time)'],
  ['skip', 'Skip']
] as const;

export class ScheduleForm extends SubmittingForm<Action> {
  constructor(private readonly options: IScheduleDialogOptions) {
    super({
      className: 'jp-Stratolab-scheduleForm',
      testId: 'stratolab-schedule-form',
      errorTestId: 'stratolab-schedule-error',
      progressTestId: 'stratolab-schedule-progress'
    });
    const s = options.schedule;
    this.schedule = s ?? null;

    const form = el('div', 'jp-Stratolab-form');
    form.append(el('div', 'jp-Stratolab-note', `Notebook: ${options.path}`, 'stratolab-schedule-notebook'));

    this.name = textField('Name', 'stratolab-schedule-name', s ? s.name : defaultScheduleName(options.path));
    form.append(this.errors.group(this.name.row, 'name'));

    this.onDemand = checkbox(
      'On demand only (no cron: runs with “Run now”)',
      'stratolab-schedule-on-demand',
      !!s && !s.cron
    );
    form.append(this.onDemand.row);

    this.cron = textField('Cron (m h dom mon dow)', 'stratolab-schedule-cron', s?.cron ?? '', '0 7 * * 1-5');
    this.preview = el('div', 'jp-Stratolab-preview', undefined, 'stratolab-schedule-preview');
    this.preview.setAttribute('aria-live', 'polite');
    form.append(this.errors.group(this.cron.row, 'cron', this.preview));

    this.timezone = textField('Time zone', 'stratolab-schedule-timezone', s?.timezone ?? browserTimeZone(), 'UTC');
    const list = el('datalist', '');
    list.id = `stratolab-timezones-${Math.random().toString(36).slice(2)}`;
    for (const zone of knownTimeZones()) {
      const option = el('option', '');
      option.value = zone;
      list.append(option);
    }
    this.timezone.input.setAttribute('list', list.id);
    this.timezone.row.append(list);
    form.append(this.errors.group(this.timezone.row, 'timezone'));

    this.missed = selectInput('stratolab-schedule-missed', MISSED_OPTIONS, s?.missed ?? 'catch_up');
    form.append(this.errors.group(fieldRow('Runs missed while the scheduler was down', this.missed), 'missed'));

    const params = details('Parameters', 'stratolab-schedule-parameters', true);
    this.paramsBody = params.body;
    this.paramsBody.append(el('p', 'jp-Stratolab-loading', 'Reading the notebook’s parameters…'));
    this.errors.register('parameters', this.paramsError);
    params.body.before(this.paramsError);
    form.append(params.details);

    const run = details('Run settings', 'stratolab-schedule-run-settings');
    this.profile = environmentSelect('stratolab-schedule-profile', s?.profile ?? '', this.errors);
    const profileRow = fieldRow('Environment', this.profile);
    this.timeout = numberField('Timeout (s)', s?.timeout ?? null, {
      min: 1,
      step: 'any',
      placeholder: 'none',
      testId: 'stratolab-schedule-timeout'
    });
    this.retries = numberField('Retries', s?.retries ?? null, {
      min: 0,
      placeholder: '0',
      testId: 'stratolab-schedule-retries'
    });
    this.backoff = numberField('Retry backoff (s, doubled each time)', s?.retry_backoff ?? null, {
      min: 0,
      step: 'any',
      placeholder: '60',
      testId: 'stratolab-schedule-retry-backoff'
    });
    const formats = s?.output_formats ?? ['ipynb', 'html'];
    this.ipynb = checkbox('Executed notebook (.ipynb)', 'stratolab-schedule-output-ipynb', formats.includes('ipynb'));
    this.html = checkbox('HTML', 'stratolab-schedule-output-html', formats.includes('html'));
    const outputs = checkboxes('Outputs', [this.ipynb, this.html]);
    run.body.append(
      this.errors.group(profileRow, 'profile'),
      this.errors.group(this.timeout.row, 'timeout'),
      this.errors.group(this.retries.row, 'retries'),
      this.errors.group(this.backoff.row, 'retry_backoff'),
      this.errors.group(outputs, 'output_formats')
    );
    form.append(run.details);

    const notify = details(
      'Notifications',
      'stratolab-schedule-notifications',
      !!s?.notify?.webhook || !!s?.notify?.email?.length
    );
    this.webhook = textField('Webhook URL', 'stratolab-schedule-webhook', s?.notify?.webhook ?? '', 'https://…');
    this.webhook.input.type = 'url';
    this.emails = textField(
      'E-mail addresses',
      'stratolab-schedule-email',
      (s?.notify?.email ?? []).join(', '),
      'a@example.org, b@example.org'
    );
    const on = s?.notify?.on ?? ['failure'];
    this.onFailure = checkbox('On failure', 'stratolab-schedule-notify-failure', on.includes('failure'));
    this.onSuccess = checkbox('On success', 'stratolab-schedule-notify-success', on.includes('success'));
    const when = checkboxes('Notify', [this.onFailure, this.onSuccess]);
    notify.body.append(
      this.errors.group(this.webhook.row, 'notify.webhook'),
      this.errors.group(this.emails.row, 'notify.email'),
      this.errors.group(when, 'notify')
    );
    form.append(notify.details);

    if (s) {
      this.resnapshot = checkbox(
        `Take a new snapshot of ${s.notebook} (runs use the notebook as it was when the schedule was saved)`,
        'stratolab-schedule-resnapshot',
        false
      ).input;
      form.append(this.resnapshot.parentElement!);
    }

    this.setForm(form);

    const update = () => {
      this.cron.input.disabled = this.onDemand.input.checked;
      this.missed.disabled = this.onDemand.input.checked;
      this.queuePreview();
    };
    this.errors.listen(this.node);
    this.onDemand.input.addEventListener('change', update);
    this.cron.input.addEventListener('input', () => this.queuePreview());
    this.timezone.input.addEventListener('input', () => this.queuePreview());
    update();

    void this.loadParameters();
  }

  /** The schedule this dialog edits: the one given, or the one it created. */
  schedule: ISchedule | null;

  /** Check the form, then create or save the schedule (and start a run); true when all went well. */
  async submit(action: Action): Promise<boolean> {
    this.errors.clearAll();
    const request = await this.read(action);
    if (!request) {
      return false;
    }
    const creating = this.schedule === null;
    this.setProgress(creating ? 'Creating the schedule…' : 'Saving the schedule…');
    try {
      const schedule = creating
        ? await schedulerClient.post<ISchedule>('api/schedules', request)
        : await schedulerClient.patch<ISchedule>(`api/schedules/${this.schedule!.id}`, request);
      this.schedule = schedule;
      let run: IRun | null = null;
      if (action === 'run') {
        this.setProgress('Starting a run…');
        try {
          run = await runNow(schedule.id);
        } catch (error) {
          this.options.onChanged?.(schedule, null);
          this.showError(error);
          if (creating) {
            // The next click saves this schedule rather than creating a second one.
            this.errors.top.prepend(
              el('div', '', `Schedule “${schedule.name}” was created, but the run did not start.`)
            );
          }
          return false;
        }
      }
      this.options.onChanged?.(schedule, run);
      return true;
    } catch (error) {
      this.showError(error);
      return false;
    } finally {
      this.setProgress('');
    }
  }

  /** The request for the form's values; null (and the errors shown) when something is wrong. */
  private async read(action: Action): Promise<IScheduleRequest | null> {
    const editing = this.schedule !== null;
    const { request, problems } = scheduleRequest(
      {
        name: this.name.input.value,
        cron: this.cron.input.value,
        onDemand: this.onDemand.input.checked,
        timezone: this.timezone.input.value,
        missed: this.missed.value,
        parameters: this.typedParameters(),
        profile: this.profile.value,
        timeout: this.timeout.input.value,
        retries: this.retries.input.value,
        retryBackoff: this.backoff.input.value,
        ipynb: this.ipynb.input.checked,
        html: this.html.input.checked,
        webhook: this.webhook.input.value,
        emails: this.emails.input.value,
        onFailure: this.onFailure.input.checked,
        onSuccess: this.onSuccess.input.checked
      },
      { declared: this.declared, editing, needsCron: action === 'save' }
    );
    for (const [field, message] of problems) {
      this.errors.show(field, message);
    }
    if (!request) {
      return null;
    }
    if (!editing || this.resnapshot?.checked) {
      return { ...request, notebook: this.options.path, ...(await notebookContent(this.options)) };
    }
    return request;
  }

  private async loadParameters(): Promise<void> {
    const answer = await askParameters(
      this.paramsBody,
      async () => {
        const content = await readNotebookContent(this.options);
        const body = content !== undefined ? { content } : { notebook: this.options.path };
        return schedulerClient.post<{ parameters: INotebookParameter[] }>('api/inspect', body);
      },
      {
        className: 'jp-Stratolab-note',
        errorTestId: 'stratolab-schedule-parameters-error',
        none: 'This notebook has no cell tagged “parameters”: add one (with assignments like n = 10) to pass values to runs.',
        noneTestId: 'stratolab-schedule-no-parameters'
      }
    );
    if (!answer) {
      return;
    }
    const declared = (this.declared = answer.parameters);
    const set = this.schedule?.parameters ?? {};
    const nodes: HTMLElement[] = [
      el('p', 'jp-Stratolab-note', 'Values other than the notebook’s defaults are injected into each run.')
    ];
    for (const p of declared) {
      const initial = formatParameterValue(p.name in set ? set[p.name] : p.default, p.type);
      const field = textField(
        `${p.name} (${p.type})`,
        `stratolab-schedule-param-${p.name}`,
        initial,
        formatParameterValue(p.default, p.type)
      );
      field.input.dataset.param = p.name;
      field.input.dataset.paramType = p.type;
      field.input.title = `Default: ${formatParameterValue(p.default, p.type)}${p.help ? ` — ${p.help}` : ''}`;
      this.paramInputs.set(p.name, field.input);
      const note = el(
        'div',
        'jp-Stratolab-note jp-Stratolab-paramDefault',
        `default ${formatParameterValue(p.default, p.type) || '""'}${p.help ? ` · ${p.help}` : ''}`
      );
      nodes.push(this.errors.group(field.row, `parameters.${p.name}`, note));
    }
    this.paramsBody.replaceChildren(...nodes);
  }

  private typedParameters(): Record<string, string> {
    const typed: Record<string, string> = {};
    for (const [name, input] of this.paramInputs) {
      typed[name] = input.value;
    }
    return typed;
  }

  /** The preview follows the typing, one request at a time, 300 ms after the last key. */
  private queuePreview(): void {
    window.clearTimeout(this.previewTimer);
    this.previewTimer = window.setTimeout(() => void this.updatePreview(), 300);
  }

  private async updatePreview(): Promise<void> {
    const cron = this.cron.input.value.trim();
    const timezone = this.timezone.input.value.trim() || 'UTC';
    const seq = ++this.previewSeq;
    this.errors.clear('cron');
    this.errors.clear('timezone');
    const hint = cronHint(cron, this.onDemand.input.checked);
    if (hint !== null) {
      this.preview.replaceChildren(el('span', 'jp-Stratolab-note', hint));
      return;
    }
    try {
      const preview = await schedulerClient.post<ICronPreview>('api/preview', { cron, timezone, count: 3 });
      if (seq !== this.previewSeq) {
        return;
      }
      const list = el('ol', 'jp-Stratolab-nextRuns', undefined, 'stratolab-schedule-preview-next');
      list.append(...nextRunLines(preview).map(line => el('li', '', line)));
      this.preview.replaceChildren(
        el('div', 'jp-Stratolab-previewText', preview.description, 'stratolab-schedule-preview-description'),
        el('div', 'jp-Stratolab-note', 'Next runs:'),
        list
      );
    } catch (error) {
      if (seq !== this.previewSeq) {
        return;
      }
      this.preview.replaceChildren();
      const field = error instanceof ServiceError && error.field === 'timezone' ? 'timezone' : 'cron';
      this.errors.show(field, (error as Error).message);
    }
  }

  private showError(error: unknown): void {
    const message = (error as Error).message || String(error);
    this.errors.show((error instanceof ServiceError && error.field) || '', message);
  }

  private readonly name: IField;
  private readonly onDemand: IField;
  private readonly cron: IField;
  private readonly preview: HTMLElement;
  private readonly timezone: IField;
  private readonly missed: HTMLSelectElement;
  private readonly paramsBody: HTMLElement;
  private readonly paramsError = el('div', 'jp-Stratolab-fieldError', undefined, 'stratolab-schedule-error-parameters');
  private readonly profile: HTMLSelectElement;
  private readonly timeout: IField;
  private readonly retries: IField;
  private readonly backoff: IField;
  private readonly ipynb: IField;
  private readonly html: IField;
  private readonly webhook: IField;
  private readonly emails: IField;
  private readonly onFailure: IField;
  private readonly onSuccess: IField;
  private readonly resnapshot: HTMLInputElement | null = null;
  private readonly paramInputs = new Map<string, HTMLInputElement>();
  private declared: INotebookParameter[] = [];
  private previewTimer: number | undefined;
  private previewSeq = 0;
}

/**
 * Open the "Schedule…" dialog for the notebook at `options.path`, or to edit `options.schedule`.
 */
export async function openScheduleDialog(options: IScheduleDialogOptions): Promise<void> {
  const editing = !!options.schedule;
  if (!editing) {
    await options.beforeRead?.(options.path);
  }
  const form = new ScheduleForm(options);
  const dialog = new FormDialog<Action>(
    form,
    editing ? `Edit schedule ${options.schedule!.name}` : `Schedule ${defaultScheduleName(options.path)}`,
    [null, 'run', 'save'],
    [
      Dialog.cancelButton(),
      Dialog.okButton({ label: 'Run now', displayType: 'default', caption: 'Save the schedule and run it now' }),
      Dialog.okButton({
        label: editing ? 'Save' : 'Create schedule',
        caption: 'Save the schedule; it runs on its cron'
      })
    ]
  );
  await dialog.launch();
}
