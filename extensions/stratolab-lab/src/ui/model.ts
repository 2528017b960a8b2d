/**
 * The state of a panel section that shows data loaded for a selection (the schedule whose runs are
 * listed, the search whose leaderboard is shown) and polls while something is queued or running.
 * Views listen to `changed` (new data) and `failed` (a load's error, to show above the last data).
 */
import { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

import { IPollTarget, JoinedLoads, Poller } from './poll';

/** What a load found: the data, and the selection it is for (null when the selected item is gone). */
export interface ILoaded<S, D> {
  data: D;
  selected: S;
}

export abstract class SectionModel<S, D> implements IDisposable {
  /** `initial`: what is selected at first. */
  constructor(initial: S) {
    this._selected = initial;
  }

  /** Milliseconds between loads while polled: while something is queued or running, and otherwise. */
  protected readonly pollMs = { active: 3000, idle: 10000 };

  /** New data was loaded (or the selection changed with it). */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** A load failed: the message can be shown as is. */
  get failed(): ISignal<this, string> {
    return this._failed;
  }

  /** The data last loaded; null before the first load. */
  get data(): D | null {
    return this._data;
  }

  get selected(): S {
    return this._selected;
  }

  /** Select another item: its data is loaded at once. */
  set selected(value: S) {
    this.select(value);
  }

  /** Select another item; its data is loaded at once unless `load` is false (a refresh follows). */
  select(value: S, load = true): void {
    if (this._selected !== value) {
      this._selected = value;
      if (load) {
        void this.refresh(true);
      }
    }
  }

  /**
   * Reload. A call while a load for the same selection is under way joins it, unless `fresh` (after
   * a change, whose effect a load started earlier would not show).
   */
  refresh(fresh = false): Promise<void> {
    return this._loads.run(this._selected, fresh);
  }

  /** Poll while `view` is visible: every `pollMs.active` while `isBusy`, else every `pollMs.idle`. */
  startPolling(view: IPollTarget): void {
    this._poller?.stop();
    const target = {
      get isDisposed() {
        return view.isDisposed;
      },
      get isVisible() {
        return view.isVisible;
      }
    };
    this._poller = new Poller(
      target,
      () => this.refresh(),
      () => this._data !== null && this.isBusy(this._data),
      this.pollMs.active,
      this.pollMs.idle
    );
    this._poller.start();
  }

  get isDisposed(): boolean {
    return this._isDisposed;
  }

  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    this._isDisposed = true;
    this._poller?.stop();
    Signal.clearData(this);
  }

  /** Load the data for `selected` (`previous`: what was loaded last, to reuse what changes no more). */
  protected abstract fetch(selected: S, previous: D | null): Promise<ILoaded<S, D>>;

  /** Whether something is queued or running (polled faster then). */
  protected abstract isBusy(data: D): boolean;

  private async load(selected: S): Promise<void> {
    const seq = ++this._seq;
    try {
      const loaded = await this.fetch(selected, this._data);
      if (seq !== this._seq || this._isDisposed) {
        return; // a later load (another selection, or after a change) shows newer data
      }
      this._data = loaded.data;
      if (loaded.selected !== selected) {
        this._selected = loaded.selected; // the selected item is gone
      }
      this._changed.emit();
    } catch (error) {
      if (seq !== this._seq || this._isDisposed) {
        return;
      }
      this._failed.emit((error as Error).message || String(error));
    }
  }

  private _selected: S;
  private _data: D | null = null;
  private _seq = 0;
  private _isDisposed = false;
  private _poller: Poller | null = null;
  private readonly _loads = new JoinedLoads<S>(selected => this.load(selected));
  private readonly _changed = new Signal<this, void>(this);
  private readonly _failed = new Signal<this, string>(this);
}
