/**
 * The Rollout part of a function's card: its latest rollout (`GET api/functions/NAME/rollouts/current`)
 * with the steps (the current one highlighted), the baseline's and the candidate's numbers side by
 * side (requests, error rate, p50/p99, accuracy), the judge's latest verdict per check, the decisions
 * history, and Pause/Resume/Promote/Abort (`POST .../rollouts/ID/ACTION`); "Start rollout…" when
 * none is going on.
 *
 * A collapsible block whose summary line always says the phase (so a rollout in progress shows on
 * the closed card); polled every 3 s while open, shown and progressing. Hosts keep one view per
 * function (`RolloutViews`) and put the same node back on every redraw.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';

import { functionsClient, ServiceError } from '../api/client';
import { actionButtons, alertNode, el, FormBody, guarded, Poller, selectInput, textField, ViewsByKey } from '../ui';
import { IFunction } from './api';
import {
  allowedActions,
  checkValue,
  decisionText,
  decisionTime,
  IRollout,
  isEnded,
  metricRows,
  nextCheckText,
  parseSteps,
  phaseText,
  stepMarks,
  verdictStyle
} from './rolloutFormat';

function rolloutsPath(fn: string): string {
  return `api/functions/${encodeURIComponent(fn)}/rollouts`;
}

/** The function's latest rollout, or null when it never had one. */
export async function currentRollout(fn: string): Promise<IRollout | null> {
  try {
    return await functionsClient.get<IRollout>(`${rolloutsPath(fn)}/current`);
  } catch (error) {
    if (error instanceof ServiceError && error.status === 404 && !/cannot reach/i.test(error.message)) {
      return null;
    }
    throw error;
  }
}

export function rolloutAction(fn: string, id: number, action: string): Promise<IRollout> {
  return functionsClient.post<IRollout>(`${rolloutsPath(fn)}/${id}/${action}`);
}

export class RolloutView {
  constructor(
    private readonly fn: string,
    private readonly testId: string,
    private readonly onChanged: () => void = () => undefined
  ) {
    this.node = el('details', 'jp-Stratolab-details jp-Stratolab-rollout', undefined, testId);
    this.summary = el('summary', 'jp-Stratolab-summary', 'Rollout', `${testId}-summary`);
    this.node.append(this.summary, this.errorNode, this.bodyNode);
    this.node.addEventListener('toggle', () => {
      if (this.node.open) {
        this.poller.start();
        void this.refresh();
      }
    });
  }

  readonly node: HTMLDetailsElement;

  /** The function as the card last showed it (for the Start dialog's versions). */
  function: IFunction | null = null;

  get isDisposed(): boolean {
    return this._isDisposed;
  }

  get isVisible(): boolean {
    return this.node.open && this.node.isConnected && this.node.offsetParent !== null;
  }

  get rollout(): IRollout | null {
    return this._rollout;
  }

  /** Reload (also while closed: the summary line says the phase). */
  async refresh(): Promise<void> {
    if (this._isDisposed) {
      return;
    }
    const seq = ++this.seq;
    try {
      const rollout = await currentRollout(this.fn);
      if (seq !== this.seq || this._isDisposed) {
        return;
      }
      const wasActive = this._rollout !== null && !isEnded(this._rollout);
      this._rollout = rollout;
      this.errorNode.replaceChildren();
      this.render();
      if (wasActive && rollout && isEnded(rollout)) {
        this.onChanged(); // the function's traffic changed: the card redraws
      }
    } catch (error) {
      if (seq === this.seq && !this._isDisposed) {
        this.errorNode.replaceChildren(alertNode((error as Error).message || String(error), `${this.testId}-error`));
      }
    }
  }

  dispose(): void {
    this._isDisposed = true;
    this.poller.stop();
  }

  private render(): void {
    const r = this._rollout;
    const act = actionButtons(this.testId, run => guarded('Stratolab rollout', run, () => this.afterAction()));
    const start = act('Start rollout', 'Move traffic to another version in steps while judging it', () =>
      this.startDialog()
    );
    start.textContent = 'Start rollout…';
    start.dataset.testid = `${this.testId}-start`;
    if (!r) {
      this.summary.textContent = 'Rollout';
      this.node.classList.remove('jp-mod-active');
      const bar = el('div', 'jp-Stratolab-actions');
      bar.append(start);
      this.bodyNode.replaceChildren(el('p', 'jp-Stratolab-note', 'No rollout yet.', `${this.testId}-none`), bar);
      return;
    }
    this.summary.textContent = `Rollout v${r.baseline} → v${r.candidate} · ${r.phase.replace('_', ' ')}`;
    this.node.classList.toggle('jp-mod-active', !isEnded(r));
    this.node.dataset.phase = r.phase;

    const phase = el(
      'p',
      `jp-Stratolab-rolloutPhase jp-Stratolab-phase-${r.phase}`,
      phaseText(r),
      `${this.testId}-phase`
    );
    const meta = el(
      'p',
      'jp-Stratolab-note',
      `${r.mode} · every ${r.interval} s · failures ${r.failures}${r.failure_threshold ? `/${r.failure_threshold}` : ''}` +
        (isEnded(r) ? '' : ` · next check ${nextCheckText(r.next_check_at)}`),
      `${this.testId}-meta`
    );

    // the steps, the current one highlighted
    const steps = el('ol', 'jp-Stratolab-rolloutSteps', undefined, `${this.testId}-steps`);
    for (const mark of stepMarks(r)) {
      const li = el('li', `jp-Stratolab-rolloutStep jp-mod-${mark.state}`, `${mark.percent} %`);
      li.dataset.state = mark.state;
      if (mark.state === 'current') {
        li.setAttribute('aria-current', 'step');
      }
      steps.append(li);
    }

    // both versions side by side
    const table = el('table', 'jp-Stratolab-rolloutMetrics', undefined, `${this.testId}-metrics`);
    const head = el('tr', '');
    head.append(
      el('th', '', ''),
      el('th', '', `v${r.baseline} (baseline)`),
      el('th', '', `v${r.candidate} (candidate)`)
    );
    table.append(head);
    for (const [label, b, c, key] of metricRows(r.metrics)) {
      const tr = el('tr', '', undefined, `${this.testId}-metric-${key}`);
      tr.append(el('th', '', label), el('td', '', b), el('td', '', c));
      table.append(tr);
    }

    // the judge's latest verdicts
    const judged = el('div', 'jp-Stratolab-rolloutJudgement', undefined, `${this.testId}-judgement`);
    const j = r.last_judgement;
    if (j) {
      const overall = verdictStyle(j.verdict);
      judged.append(
        el(
          'div',
          `jp-Stratolab-subTitle`,
          `Judgement: ${overall.label}${j.score !== null && j.score !== undefined ? ` (score ${Math.round(j.score)})` : ''}`,
          `${this.testId}-verdict`
        )
      );
      const list = el('ul', 'jp-Stratolab-rolloutChecks');
      for (const check of j.metrics) {
        const style = verdictStyle(check.verdict);
        const li = el('li', '', undefined, `${this.testId}-check-${check.name}`);
        li.append(
          el('span', `jp-Stratolab-badge ${style.className}`, style.label),
          el(
            'span',
            '',
            ` ${check.name}: v${r.baseline} ${checkValue(check, check.baseline)} · v${r.candidate} ${checkValue(check, check.candidate)}` +
              (check.p_value !== null && check.p_value !== undefined ? ` · p=${check.p_value.toPrecision(2)}` : '')
          )
        );
        li.title = check.reason;
        list.append(li);
      }
      judged.append(list);
    } else {
      judged.append(
        el('p', 'jp-Stratolab-note', 'Not judged yet: the first check comes one interval after the start.')
      );
    }

    // the decisions, newest first
    const decisions = el('details', 'jp-Stratolab-details', undefined, `${this.testId}-decisions`);
    decisions.append(el('summary', 'jp-Stratolab-summary', `Decisions (${r.decisions.length})`));
    const dl = el('ol', 'jp-Stratolab-rolloutDecisions');
    for (const d of [...r.decisions].reverse()) {
      const li = el('li', `jp-Stratolab-decision-${d.action}`, `${decisionTime(d.at)} ${decisionText(d)}`);
      li.dataset.action = d.action;
      dl.append(li);
    }
    decisions.append(dl);
    decisions.open = this.decisionsOpen;
    decisions.addEventListener('toggle', () => (this.decisionsOpen = decisions.open));

    const bar = el('div', 'jp-Stratolab-actions');
    const titles: Record<string, string> = {
      pause: 'Keep the weight where it is; no checks until resumed',
      resume: 'Go on: the next check comes one interval from now',
      promote: `Send all traffic to v${r.candidate} now`,
      abort: `Send all traffic back to v${r.baseline} now`
    };
    for (const action of allowedActions(r.phase)) {
      const label = action[0].toUpperCase() + action.slice(1);
      bar.append(act(label, titles[action], () => rolloutAction(this.fn, r.id, action)));
    }
    if (isEnded(r)) {
      bar.append(start);
    }
    this.bodyNode.replaceChildren(phase, meta, steps, table, judged, decisions, bar);
  }

  private async afterAction(): Promise<void> {
    await this.refresh();
    this.onChanged();
  }

  /** The Start rollout dialog: the candidate (a ready version not holding all traffic), steps, interval, mode. */
  private async startDialog(): Promise<void> {
    const fn = this.function;
    const ready = (fn?.versions ?? []).filter(v => v.state === 'ready').map(v => v.version);
    const holding = Object.entries(fn?.traffic ?? {}).sort((a, b) => b[1] - a[1])[0]?.[0];
    const candidates = ready.filter(v => String(v) !== holding).sort((a, b) => b - a);
    if (!candidates.length) {
      throw new ServiceError(`${this.fn} has no other ready version to roll out: deploy a new version first.`, 400);
    }
    const form = el('div', 'jp-Stratolab-form', undefined, `${this.testId}-form`);
    const to = selectInput(
      `${this.testId}-form-to`,
      candidates.map(v => [String(v), `v${v}`] as const),
      String(candidates[0])
    );
    const toRow = el('label', 'jp-Stratolab-field');
    toRow.append(el('span', 'jp-Stratolab-fieldLabel', 'New version'), to);
    const steps = textField('Steps (%)', `${this.testId}-form-steps`, '10,25,50,100');
    const interval = textField('Interval (s)', `${this.testId}-form-interval`, '60');
    const mode = selectInput(
      `${this.testId}-form-mode`,
      [
        ['canary', 'canary (users get the new version)'],
        ['shadow', 'shadow (copies only, answers discarded)'],
        ['ab', 'A/B by header (stable per user)']
      ],
      'canary'
    );
    const modeRow = el('label', 'jp-Stratolab-field');
    modeRow.append(el('span', 'jp-Stratolab-fieldLabel', 'Mode'), mode);
    const header = textField('A/B header', `${this.testId}-form-ab-header`, 'x-user-id');
    form.append(
      el('p', 'jp-Stratolab-note', `From v${holding ?? '?'} (the version holding most traffic now).`),
      toRow,
      steps.row,
      interval.row,
      modeRow,
      header.row
    );
    const result = await showDialog({
      title: `Roll out a new version of ${this.fn}`,
      body: new FormBody(form, () => ({
        to: Number(to.value),
        steps: steps.input.value,
        interval: interval.input.value,
        mode: mode.value,
        header: header.input.value.trim()
      })),
      buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Start' })]
    });
    if (!result.button.accept || !result.value) {
      return;
    }
    const v = result.value;
    const seconds = Number(v.interval);
    if (!Number.isFinite(seconds) || seconds < 1) {
      throw new ServiceError('interval: a number of seconds, 1 or more', 400, 'interval');
    }
    const body: Record<string, unknown> = { to: v.to, steps: parseSteps(v.steps), interval: seconds, mode: v.mode };
    if (v.mode === 'ab') {
      body.ab = { header: v.header || 'x-user-id' };
    }
    await functionsClient.post<IRollout>(rolloutsPath(this.fn), body);
    this.node.open = true;
  }

  private _rollout: IRollout | null = null;
  private _isDisposed = false;
  private seq = 0;
  private decisionsOpen = false;
  private readonly summary: HTMLElement;
  private readonly errorNode = el('div', '');
  private readonly bodyNode = el('div', 'jp-Stratolab-rolloutBody');
  private readonly poller = new Poller(
    this,
    () => this.refresh(),
    () => this._rollout !== null && !isEnded(this._rollout),
    3000,
    15000
  );
}

/** One view per function, kept across the card's redraws. */
export class RolloutViews extends ViewsByKey<RolloutView> {}
