"""Rollouts: moving a function's traffic to a new version in steps while a judge compares it with the
current one, promoting it or rolling it back; and the routing that serves canary, shadow and A/B traffic.

The pure core, with no service wiring (the functions service stores a rollout's state, applies its
decisions and feeds the judge):

- `stats`: Mann-Whitney U, two-proportion z and Fisher's exact tests, sample sizes;
- `judge`: a Kayenta-style judgement of the candidate against the baseline, per metric and overall;
- `plan`: the rollout's state machine (steps, interval, failure threshold, hold with a maximum wait);
- `routing`: the per-request choice of a version (weights, header rules, stable keyed shares, shadow);
- `flagger`: the same rollout as a Flagger `Canary` for Knative, on Kubernetes.

See docs/pipelines.md, "Rollouts".
"""
