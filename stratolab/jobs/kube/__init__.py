"""Notebook runs and AutoML trials as Kubernetes Jobs.

- `manifests`: pure builders of the Job (and its token Secret) for one run;
- `status`: pure readings of Job and pod status (finished? why did the pod fail?);
- `tokens`, `registry`: the per-run token and the runs the scheduler expects agents for;
- `archive`: the tar.gz that carries a run's files from the pod to the scheduler, extracted safely;
- `executor`: `KubernetesJobExecutor`, the `NotebookExecutor` that creates, watches and deletes Jobs;
- `agent`: `python -m stratolab.jobs.kube.agent`, what runs in the Job's pod.
"""
