"""AutoML: a training notebook's parameters searched with Optuna, every trial a papermill run.

- `space`: search spaces (validation, a proposal from the parameters cell, sampling with conditions).
- `trial_api` (as `stratolab.record`, `stratolab.report`, `stratolab.save_model`): what the
  notebook calls; `channel`: how a running trial and its controller talk (files in the run's dir).
"""
