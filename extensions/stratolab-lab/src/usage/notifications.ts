/**
 * The usage service's notifications for this user (a budget at its warning level, used up, a server
 * stopped for it) as lab notifications, each shown once: marked read in the service when shown, and
 * remembered here too, so a failed "read" does not show it again in this lab.
 *
 * Polled on its own, whether the panel is open or not: a warning matters most while the user is at
 * work elsewhere in the lab.
 */
import { Notification } from '@jupyterlab/apputils';

import { IUsageNotification, markRead, unreadNotifications } from './api';
import { ShownNotifications } from './shown';

/** Polls the unread notifications and shows the new ones. */
export class UsageNotifier {
  /** `openUsage`: what the notification's button does (shows the panel's Usage section). */
  constructor(private readonly openUsage?: () => void) {}

  /** Check now, then every `seconds` (a failed check is tried again at the next tick, silently). */
  start(seconds = 60): void {
    this.stop();
    void this.check();
    this._timer = window.setInterval(() => void this.check(), seconds * 1000);
  }

  stop(): void {
    window.clearInterval(this._timer);
    this._timer = undefined;
  }

  /** Show the unread notifications not shown yet; marks each read. */
  async check(): Promise<void> {
    let unread: IUsageNotification[];
    try {
      unread = await unreadNotifications();
    } catch {
      return; // no usage service on this platform, or not reachable now: nothing to show
    }
    for (const n of this._shown.fresh(unread)) {
      const actions = this.openUsage ? [{ label: 'Show usage', callback: this.openUsage }] : [];
      Notification.warning(n.message, { autoClose: false, actions });
      markRead(n.id).catch(() => undefined);
    }
  }

  private readonly _shown = new ShownNotifications();
  private _timer: number | undefined;
}
