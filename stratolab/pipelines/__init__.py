"""Pipelines: DAGs of notebook runs, function calls, AutoML searches, conditions and deploys.

The pure core, which the engine and the service stand on:

- `flow`: Elyra's `.pipeline` files (pipeline-flow v3), read and written unchanged, and their steps;
- `validate`: the pipeline-flow JSON schema and our own checks, errors naming the node and the field;
- `conditions`: the safe expression language of condition steps;
- `plan`: the DAG: order, what is ready, skipped branches, resume, cache hits;
- `cache`: the cache key of a step;
- `argo`: an Argo Workflow (and CronWorkflow) from a pipeline, for the Kubernetes backend.
"""
