/**
 * "Schedule…": the dialog that turns a notebook into a scheduled job (or edits one), with a live
 * preview of the cron expression and the notebook's parameters.
 *
 * The service keeps a snapshot of the notebook, so the dialog sends the notebook's content as the
 * contents manager has it (saved first), besides its path.
 */
import { Dialog } from '@jupyterlab/apputils';
import { Contents } from '@jupyterlab/services';
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import { schedulerClient, ServiceError } from './api/client';
import { el } from './dom';
import { numberField, readNumber } from './functions';
import {
  formatTime,
  ICronPreview,
  INotebookParameter,
  INotify,
  IProfile,
  IRun,
  ISchedule,
  IScheduleRequest,
  runNow
} from './jobs';

export const scheduleIcon = new LabIcon({
  name: 'stratolab:schedule',
  svgstr: `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M12 2a10 10 0 1 0 0 20 10 10 0 0 0 0-20zm0 2.2a7.8 7.8 0 1 1 0 15.6 7.8 7.8 0 0 1 0-15.6z"/>
    <path d="M11 6.5h2v5.1l3.6 2.1-1 1.7-4.6-2.7z"/>
  </g>
</svg>`
});

// --- pure parts --------------------------------------------------------------------------------------

/** The default name of a schedule: the notebook's file name without its extension. */
export function defaultScheduleName(path: string): string {
  const file = path.split('/').pop() || path;
  return file.replace(/\.ipynb$/i, '') || file;
}

/** The browser's IANA time zone (UTC when it does not say). */
export function browserTimeZone(): string {
  try {
    return Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
  } catch {
    return 'UTC';
  }
}

/** Every IANA time zone the browser knows, for the time zone field's suggestions. */
export function knownTimeZones(): string[] {
  const intl = Intl as unknown as { supportedValuesOf?: (key: string) => string[] };
  try {
    const zones = intl.supportedValuesOf ? intl.supportedValuesOf('timeZone') : [];
    return zones.includes('UTC') ? zones : ['UTC', ...zones];
  } catch {
    return ['UTC'];
  }
}

/** How a parameter's value is written in its field: strings as they are, the rest as JSON. */
export function formatParameterValue(value: unknown, type: string): string {
  if (type === 'str' && typeof value === 'string') {
    return value;
  }
  if (value === undefined) {
    return '';
  }
  try {
    return JSON.stringify(value);
  } catch {
    return String(value);
  }
}

export type Parsed = { ok: true; value: unknown } | { ok: false; error: string };

/**
 * The value typed into a parameter's field, with the type of the notebook's default: ints, floats,
 * bools, JSON lists and dicts; strings as they are; for other types JSON when it parses, else text.
 */
export function parseParameterValue(text: string, type: string): Parsed {
  const t = text.trim();
  switch (type) {
    case 'str':
      return { ok: true, value: text };
    case 'int':
      return /^[-+]?\d+$/.test(t)
        ? { ok: true, value: Number(t) }
        : { ok: false, error: 'Expected an integer, e.g. 3' };
    case 'float': {
      const value = Number(t);
      return t !== '' && Number.isFinite(value)
        ? { ok: true, value }
        : { ok: false, error: 'Expected a number, e.g. 0.5' };
    }
    case 'bool': {
      const lower = t.toLowerCase();
      if (['true', '1', 'yes'].includes(lower)) {
        return { ok: true, value: true };
      }
      if (['false', '0', 'no'].includes(lower)) {
        return { ok: true, value: false };
      }
      return { ok: false, error: 'Expected true or false' };
    }
    case 'list':
    case 'dict': {
      let value: unknown;
      try {
        value = JSON.parse(t);
      } catch {
        return { ok: false, error: `Expected a JSON ${type === 'list' ? 'list, e.g. [1, 2]' : 'object, e.g. {"a": 1}'}` };
      }
      const isList = Array.isArray(value);
      const isDict = value !== null && typeof value === 'object' && !isList;
      if ((type === 'list' && !isList) || (type === 'dict' && !isDict)) {
        return { ok: false, error: `Expected a JSON ${type === 'list' ? 'list' : 'object'}` };
      }
      return { ok: true, value };
    }
    default:
      try {
        return { ok: true, value: JSON.parse(t) };
      } catch {
        return { ok: true, value: text };
      }
  }
}

/**
 * The parameters to send: those whose field no longer shows the notebook's default (so a schedule
 * follows later changes of the defaults it does not override), typed; or the errors, by name.
 */
export function changedParameters(
  declared: INotebookParameter[],
  typed: Record<string, string>
): { values: Record<string, unknown>; errors: Record<string, string> } {
  const values: Record<string, unknown> = {};
  const errors: Record<string, string> = {};
  for (const p of declared) {
    const text = typed[p.name];
    if (text === undefined || text === formatParameterValue(p.default, p.type)) {
      continue;
    }
    const parsed = parseParameterValue(text, p.type);
    if (parsed.ok) {
      values[p.name] = parsed.value;
    } else {
      errors[p.name] = parsed.error;
    }
  }
  return { values, errors };
}

/** E-mail addresses typed with commas (or spaces, or semicolons) between them. */
export function splitAddresses(text: string): string[] {
  return text.split(/[\s,;]+/).filter(Boolean);
}

// --- the dialog --------------------------------------------------------------------------------------

/** What the dialog needs: the notebook (or the schedule to edit) and how to reach the lab. */
/** The notebook as the contents manager has it (saved first when open); undefined if unreadable. */
export async function readNotebookContent(options: {
  contents: Contents.IManager;
  path: string;
  beforeRead?: (path: string) => Promise<void>;
}): Promise<unknown> {
  try {
    await options.beforeRead?.(options.path);
    const model = await options.contents.get(options.path, { type: 'notebook', content: true });
    return model.content;
  } catch (error) {
    console.warn(`Stratolab: cannot read ${options.path}; the scheduler reads it from the home.`, error);
    return undefined;
  }
}

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

export interface IField {
  row: HTMLElement;
  input: HTMLInputElement;
}

export function textField(label: string, testId: string, value = '', placeholder = ''): IField {
  const row = el('label', 'jp-Stratolab-field');
  const input = el('input', 'jp-Stratolab-input', undefined, testId);
  input.type = 'text';
  input.value = value;
  input.placeholder = placeholder;
  input.spellcheck = false;
  row.append(el('span', 'jp-Stratolab-fieldLabel', label), input);
  return { row, input };
}

export function checkbox(label: string, testId: string, checked: boolean): { row: HTMLElement; input: HTMLInputElement } {
  const row = el('label', 'jp-Stratolab-check');
  const input = el('input', '', undefined, testId);
  input.type = 'checkbox';
  input.checked = checked;
  row.append(input, document.createTextNode(` ${label}`));
  return { row, input };
}

export function details(title: string, testId: string, open = false): { details: HTMLDetailsElement; body: HTMLElement } {
  const node = el('details', 'jp-Stratolab-details', undefined, testId);
  node.open = open;
  node.append(el('summary', 'jp-Stratolab-summary', title));
  const body = el('div', 'jp-Stratolab-form');
  node.append(body);
  return { details: node, body };
}

/**
 * The dialog's body: the form, the errors next to their fields, and the progress of a submit.
 */
export class ScheduleForm extends Widget {
  constructor(private readonly options: IScheduleDialogOptions) {
    super({ node: el('div', 'jp-Stratolab-scheduleForm', undefined, 'stratolab-schedule-form') });
    const s = options.schedule;
    this.schedule = s ?? null;

    this.topError = el('div', 'jp-Stratolab-fieldError jp-Stratolab-topError', undefined, 'stratolab-schedule-error');
    this.topError.setAttribute('role', 'alert');
    this.node.append(this.topError);

    const form = el('div', 'jp-Stratolab-form');
    form.append(el('div', 'jp-Stratolab-note', `Notebook: ${options.path}`, 'stratolab-schedule-notebook'));

    this.name = textField('Name', 'stratolab-schedule-name', s ? s.name : defaultScheduleName(options.path));
    form.append(this.group(this.name.row, 'name'));

    this.onDemand = checkbox('On demand only (no cron: runs with “Run now”)', 'stratolab-schedule-on-demand', !!s && !s.cron);
    form.append(this.onDemand.row);

    this.cron = textField('Cron (m h dom mon dow)', 'stratolab-schedule-cron', s?.cron ?? '', '0 7 * * 1-5');
    this.preview = el('div', 'jp-Stratolab-preview', undefined, 'stratolab-schedule-preview');
    this.preview.setAttribute('aria-live', 'polite');
    form.append(this.group(this.cron.row, 'cron', this.preview));

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
    form.append(this.group(this.timezone.row, 'timezone'));

    this.missed = el('select', 'jp-Stratolab-input', undefined, 'stratolab-schedule-missed');
    for (const [value, label] of [
      ['catch_up', 'Catch up once (run for the latest missed time)'],
      ['skip', 'Skip']
    ]) {
      const option = el('option', '', label);
      option.value = value;
      this.missed.append(option);
    }
    this.missed.value = s?.missed ?? 'catch_up';
    const missedRow = el('label', 'jp-Stratolab-field');
    missedRow.append(el('span', 'jp-Stratolab-fieldLabel', 'Runs missed while the scheduler was down'), this.missed);
    form.append(this.group(missedRow, 'missed'));

    const params = details('Parameters', 'stratolab-schedule-parameters', true);
    this.paramsBody = params.body;
    this.paramsBody.append(el('p', 'jp-Stratolab-loading', 'Reading the notebook’s parameters…'));
    this.errors.set('parameters', this.paramsError);
    params.body.before(this.paramsError);
    form.append(params.details);

    const run = details('Run settings', 'stratolab-schedule-run-settings');
    this.profile = el('select', 'jp-Stratolab-input', undefined, 'stratolab-schedule-profile');
    this.setProfiles([]);
    const profileRow = el('label', 'jp-Stratolab-field');
    profileRow.append(el('span', 'jp-Stratolab-fieldLabel', 'Environment'), this.profile);
    this.timeout = numberField('Timeout (s)', s?.timeout ?? null, { min: 1, step: 'any', placeholder: 'none', testId: 'stratolab-schedule-timeout' });
    this.retries = numberField('Retries', s?.retries ?? null, { min: 0, placeholder: '0', testId: 'stratolab-schedule-retries' });
    this.backoff = numberField('Retry backoff (s, doubled each time)', s?.retry_backoff ?? null, { min: 0, step: 'any', placeholder: '60', testId: 'stratolab-schedule-retry-backoff' });
    const formats = s?.output_formats ?? ['ipynb', 'html'];
    this.ipynb = checkbox('Executed notebook (.ipynb)', 'stratolab-schedule-output-ipynb', formats.includes('ipynb'));
    this.html = checkbox('HTML', 'stratolab-schedule-output-html', formats.includes('html'));
    const outputs = el('div', 'jp-Stratolab-field');
    const boxes = el('div', 'jp-Stratolab-checks');
    boxes.append(this.ipynb.row, this.html.row);
    outputs.append(el('span', 'jp-Stratolab-fieldLabel', 'Outputs'), boxes);
    run.body.append(
      this.group(profileRow, 'profile'),
      this.group(this.timeout.row, 'timeout'),
      this.group(this.retries.row, 'retries'),
      this.group(this.backoff.row, 'retry_backoff'),
      this.group(outputs, 'output_formats')
    );
    form.append(run.details);

    const notify = details('Notifications', 'stratolab-schedule-notifications', !!s?.notify?.webhook || !!s?.notify?.email?.length);
    this.webhook = textField('Webhook URL', 'stratolab-schedule-webhook', s?.notify?.webhook ?? '', 'https://…');
    this.webhook.input.type = 'url';
    this.emails = textField('E-mail addresses', 'stratolab-schedule-email', (s?.notify?.email ?? []).join(', '), 'a@example.org, b@example.org');
    const on = s?.notify?.on ?? ['failure'];
    this.onFailure = checkbox('On failure', 'stratolab-schedule-notify-failure', on.includes('failure'));
    this.onSuccess = checkbox('On success', 'stratolab-schedule-notify-success', on.includes('success'));
    const when = el('div', 'jp-Stratolab-field');
    const whenBoxes = el('div', 'jp-Stratolab-checks');
    whenBoxes.append(this.onFailure.row, this.onSuccess.row);
    when.append(el('span', 'jp-Stratolab-fieldLabel', 'Notify'), whenBoxes);
    notify.body.append(
      this.group(this.webhook.row, 'notify.webhook'),
      this.group(this.emails.row, 'notify.email'),
      this.group(when, 'notify')
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

    this.progress = el('div', 'jp-Stratolab-progress', '', 'stratolab-schedule-progress');
    this.node.append(form, this.progress);

    const update = () => {
      this.cron.input.disabled = this.onDemand.input.checked;
      this.missed.disabled = this.onDemand.input.checked;
      this.queuePreview();
    };
    // Editing a field takes back what was said about it; the browser's own checks (which keep the
    // dialog's buttons disabled meanwhile) say what they refuse.
    this.node.addEventListener('input', event => {
      const target = event.target as HTMLInputElement;
      const group = target.closest?.('.jp-Stratolab-fieldGroup') as HTMLElement | null;
      if (group?.dataset.field) {
        this.clearFieldError(group.dataset.field);
        if (target.validity && !target.validity.valid && target.validationMessage) {
          this.showFieldError(group.dataset.field, target.validationMessage);
        }
      }
    });
    this.onDemand.input.addEventListener('change', update);
    this.cron.input.addEventListener('input', () => this.queuePreview());
    this.timezone.input.addEventListener('input', () => this.queuePreview());
    update();

    void this.loadParameters();
    void this.loadProfiles();
  }

  /** The schedule this dialog edits: the one given, or the one it created. */
  schedule: ISchedule | null;

  /** Check the form, then create or save the schedule (and start a run); true when all went well. */
  async submit(action: Action): Promise<boolean> {
    this.clearErrors();
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
            this.topError.prepend(el('div', '', `Schedule “${schedule.name}” was created, but the run did not start.`));
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
    let valid = true;
    const fail = (field: string, message: string) => {
      this.showFieldError(field, message);
      valid = false;
    };
    const name = this.name.input.value.trim();
    if (!name) {
      fail('name', 'Give the schedule a name.');
    }
    const cronText = this.cron.input.value.trim();
    const onDemand = this.onDemand.input.checked;
    if (!onDemand && !cronText && action === 'save') {
      fail('cron', 'Enter a cron expression, or tick “On demand only”.');
    }
    const timezone = this.timezone.input.value.trim() || 'UTC';
    const { values, errors } = changedParameters(this.declared, this.typedParameters());
    for (const [param, message] of Object.entries(errors)) {
      fail(`parameters.${param}`, message);
    }
    const numbers: Record<string, number | undefined> = {};
    for (const [field, f] of [
      ['timeout', this.timeout],
      ['retries', this.retries],
      ['retry_backoff', this.backoff]
    ] as const) {
      const value = readNumber(f.input);
      if (value !== undefined && (!Number.isFinite(value) || value < 0)) {
        fail(field, 'Expected a number of at least 0.');
      }
      numbers[field] = value;
    }
    const outputFormats = [this.ipynb.input.checked ? 'ipynb' : '', this.html.input.checked ? 'html' : ''].filter(Boolean);
    const webhook = this.webhook.input.value.trim();
    const email = splitAddresses(this.emails.input.value);
    const on = [this.onFailure.input.checked ? 'failure' : '', this.onSuccess.input.checked ? 'success' : ''].filter(Boolean);
    if ((webhook || email.length) && on.length === 0) {
      fail('notify', 'Tick when to notify: on failure, on success or both.');
    }
    if (!valid) {
      return null;
    }

    const editing = this.schedule !== null;
    const request: IScheduleRequest = {
      name,
      cron: onDemand || !cronText ? null : cronText,
      timezone,
      parameters: values,
      output_formats: outputFormats,
      missed: this.missed.value
    };
    if (this.profile.value || editing) {
      request.profile = this.profile.value || null;
    }
    if (numbers.timeout !== undefined || editing) {
      request.timeout = numbers.timeout ?? null;
    }
    if (numbers.retries !== undefined) {
      request.retries = numbers.retries;
    }
    if (numbers.retry_backoff !== undefined) {
      request.retry_backoff = numbers.retry_backoff;
    }
    if (webhook || email.length) {
      request.notify = { webhook: webhook || null, email, on } as INotify;
    } else if (editing) {
      request.notify = null;
    }
    if (!editing || this.resnapshot?.checked) {
      request.notebook = this.options.path;
      const content = await this.readNotebook();
      if (content !== undefined) {
        request.content = content;
      }
    }
    return request;
  }

  private readNotebook(): Promise<unknown> {
    return readNotebookContent(this.options);
  }

  private async loadParameters(): Promise<void> {
    let declared: INotebookParameter[];
    try {
      const content = await this.readNotebook();
      const body = content !== undefined ? { content } : { notebook: this.options.path };
      declared = (await schedulerClient.post<{ parameters: INotebookParameter[] }>('api/inspect', body)).parameters;
    } catch (error) {
      this.paramsBody.replaceChildren(
        el('p', 'jp-Stratolab-note', `Cannot read the notebook’s parameters: ${(error as Error).message}`, 'stratolab-schedule-parameters-error')
      );
      return;
    }
    this.declared = declared;
    if (declared.length === 0) {
      this.paramsBody.replaceChildren(
        el(
          'p',
          'jp-Stratolab-note',
          'This notebook has no cell tagged “parameters”: add one (with assignments like n = 10) to pass values to runs.',
          'stratolab-schedule-no-parameters'
        )
      );
      return;
    }
    const set = this.schedule?.parameters ?? {};
    const nodes: HTMLElement[] = [
      el('p', 'jp-Stratolab-note', 'Values other than the notebook’s defaults are injected into each run.')
    ];
    for (const p of declared) {
      const initial = formatParameterValue(p.name in set ? set[p.name] : p.default, p.type);
      const field = textField(`${p.name} (${p.type})`, `stratolab-schedule-param-${p.name}`, initial, formatParameterValue(p.default, p.type));
      field.input.dataset.param = p.name;
      field.input.dataset.paramType = p.type;
      field.input.title = `Default: ${formatParameterValue(p.default, p.type)}${p.help ? ` — ${p.help}` : ''}`;
      this.paramInputs.set(p.name, field.input);
      const note = el('div', 'jp-Stratolab-note jp-Stratolab-paramDefault', `default ${formatParameterValue(p.default, p.type) || '""'}${p.help ? ` · ${p.help}` : ''}`);
      nodes.push(this.group(field.row, `parameters.${p.name}`, note));
    }
    this.paramsBody.replaceChildren(...nodes);
  }

  private async loadProfiles(): Promise<void> {
    try {
      const data = await schedulerClient.get<{ profiles: IProfile[] }>('api/profiles');
      this.setProfiles(data.profiles);
    } catch (error) {
      this.showFieldError('profile', `Cannot list the environments: ${(error as Error).message}`);
    }
  }

  private setProfiles(profiles: IProfile[]): void {
    const wanted = this.profile.value || this.schedule?.profile || '';
    const first = el('option', '', 'Default environment');
    first.value = '';
    const options = [first];
    for (const p of profiles) {
      const option = el('option', '', p.gpus ? `${p.display_name} (${p.gpus} GPU${p.gpus > 1 ? 's' : ''})` : p.display_name);
      option.value = p.slug;
      options.push(option);
    }
    if (wanted && !profiles.some(p => p.slug === wanted)) {
      const option = el('option', '', wanted);
      option.value = wanted;
      options.push(option);
    }
    this.profile.replaceChildren(...options);
    this.profile.value = wanted;
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
    this.clearFieldError('cron');
    this.clearFieldError('timezone');
    if (this.onDemand.input.checked) {
      this.preview.replaceChildren(el('span', 'jp-Stratolab-note', 'Runs only when started with “Run now”.'));
      return;
    }
    if (!cron) {
      this.preview.replaceChildren(el('span', 'jp-Stratolab-note', 'e.g. 0 7 * * 1-5: at 07:00, Monday through Friday.'));
      return;
    }
    try {
      const preview = await schedulerClient.post<ICronPreview>('api/preview', { cron, timezone, count: 3 });
      if (seq !== this.previewSeq) {
        return;
      }
      const list = el('ol', 'jp-Stratolab-nextRuns', undefined, 'stratolab-schedule-preview-next');
      for (const iso of preview.next) {
        list.append(el('li', '', `${formatTime(iso, preview.timezone)} (${preview.timezone})`));
      }
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
      this.showFieldError(field, (error as Error).message);
    }
  }

  /** A field's row with the place for its error below it (and any note under that). */
  private group(row: HTMLElement, field: string, extra?: HTMLElement): HTMLElement {
    const group = el('div', 'jp-Stratolab-fieldGroup');
    group.dataset.field = field;
    const error = el('div', 'jp-Stratolab-fieldError', undefined, `stratolab-schedule-error-${field.replace(/\./g, '-')}`);
    error.setAttribute('role', 'alert');
    this.errors.set(field, error);
    group.append(row, error);
    if (extra) {
      group.append(extra);
    }
    return group;
  }

  private showError(error: unknown): void {
    const message = (error as Error).message || String(error);
    const field = error instanceof ServiceError ? error.field : null;
    if (field) {
      this.showFieldError(field, message);
    } else {
      this.showFieldError('', message);
    }
  }

  /** Show `message` under the field it names (or its parent field), else at the top. */
  private showFieldError(field: string, message: string): void {
    const node = this.errors.get(field) ?? this.errors.get(field.split('.')[0]) ?? this.topError;
    node.append(el('div', '', node === this.topError && field ? `${field}: ${message}` : message));
    node.closest('details')?.setAttribute('open', '');
    node.scrollIntoView?.({ block: 'nearest' });
  }

  private clearFieldError(field: string): void {
    this.errors.get(field)?.replaceChildren();
  }

  private clearErrors(): void {
    this.topError.replaceChildren();
    for (const node of this.errors.values()) {
      node.replaceChildren();
    }
  }

  private setProgress(text: string): void {
    this.progress.replaceChildren(
      ...(text ? [el('span', 'jp-Stratolab-spinner'), document.createTextNode(` ${text}`)] : [])
    );
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
  private readonly topError: HTMLElement;
  private readonly progress: HTMLElement;
  private readonly errors = new Map<string, HTMLElement>();
  private readonly paramInputs = new Map<string, HTMLInputElement>();
  private declared: INotebookParameter[] = [];
  private previewTimer: number | undefined;
  private previewSeq = 0;
}

/** A dialog's form that submits itself: true when the service said yes (the dialog then closes). */
export interface ISubmittingForm<A extends string> extends Widget {
  submit(action: A): Promise<boolean>;
}

/**
 * A dialog that stays open while its form is submitted, and after a refusal (with the input kept):
 * "Create schedule" and "Run now" (or the Tune dialog's "Start") close it only once the service
 * said yes. `actions[i]` is what button `i` submits; null closes the dialog (Cancel).
 */
export class FormDialog<A extends string> extends Dialog<void> {
  constructor(
    private readonly form: ISubmittingForm<A>,
    title: string,
    private readonly actions: (A | null)[],
    buttons: Dialog.IButton[],
    className = 'jp-Stratolab-scheduleDialog'
  ) {
    super({ title, body: form, buttons, hasClose: true, focusNodeSelector: 'input[type=text]' });
    this.addClass(className);
  }

  resolve(index?: number): void {
    const i = index ?? this.actions.length - 1;
    const action = this.actions[i];
    if (!action) {
      super.resolve(index);
      return;
    }
    if (this.busy) {
      return;
    }
    this.setBusy(true);
    void this.form.submit(action).then(ok => {
      this.setBusy(false);
      if (ok) {
        super.resolve(i);
      }
    });
  }

  handleEvent(event: Event): void {
    // Enter in a field (picking a time zone, say) does not submit: the buttons do.
    if (event.type === 'keydown' && (event as KeyboardEvent).key === 'Enter') {
      const target = event.target as HTMLElement;
      if (target instanceof HTMLInputElement && this.form.node.contains(target)) {
        event.preventDefault();
        event.stopPropagation();
        return;
      }
    }
    super.handleEvent(event);
  }

  private setBusy(busy: boolean): void {
    this.busy = busy;
    this.node.querySelectorAll<HTMLButtonElement>('.jp-Dialog-footer button').forEach(b => (b.disabled = busy));
  }

  private busy = false;
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
      Dialog.okButton({ label: editing ? 'Save' : 'Create schedule', caption: 'Save the schedule; it runs on its cron' })
    ]
  );
  await dialog.launch();
}
