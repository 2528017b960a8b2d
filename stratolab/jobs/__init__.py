"""Scheduled notebook jobs (and, through the same executor, AutoML trials).

- `cron`: cron expressions with time zones, clock changes included (pure).
- `parameters`: a notebook's `parameters` cell, and typed validation of injected values (pure).
- `spec`: validation of schedule requests into plain data (pure).
- `executor`, `runner`, `local_executor`: how a papermill run is started; local processes now.
- `store`: schedules and runs in the platform database (unique keys make runs happen once).
- `engine`: the scheduler loop: due schedules become runs, queued runs start under the limits.
- `service`: the JupyterHub service (HTTP API, metrics).
"""
