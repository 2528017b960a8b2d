"""A pipeline as an Argo Workflow (and a CronWorkflow for a cron trigger): pure builders, plain dicts.

Like the jobs' manifests (jobs/kube/manifests.py), nothing here calls the API; tests compare the dicts
and validate them against Argo's CRD schemas (../shared/schemas/argo-workflows). Design choices:

- **One DAG template** (`pipeline`), one task per step, named after the step (DNS-style: `_` -> `-`).
  Dependencies are written with `depends`, not `dependencies`: Argo runs a task after a *skipped*
  dependency under `dependencies`, which would run a branch a condition turned off. Each task's
  `depends` says our skip rule (plan.py): every upstream task finished (Succeeded, Skipped or Omitted)
  and at least one of them Succeeded; a step whose upstream were all skipped is Omitted by Argo,
  which the next steps read as skipped too.
- **Conditions are `when` expressions**, not pods: a condition node has no task; each step linked to
  its `outPort` gets `when: <expression>`, to its `elsePort` `when: !(<expression>)` (conditions.py
  translates our language to govaluate), and depends on the condition's own upstream steps. Recorded
  values are the upstream tasks' output parameters, `{{tasks.<step>.outputs.parameters.<name>}}`.
- **Notebook steps are papermill containers in the step's profile**: the profile's pod settings come
  from the shared `platform.kube_profiles.kubespawner_override` (image, CPU and memory, GPUs with
  their toleration, node selector, tolerations, environment), the hardening from `kube.objects`
  (non-root, no privilege escalation, every capability dropped), as for a run's Job. The jobs' pod
  builder itself (KubeSpawner's `make_pod` around the run agent, in `jobs/kube/manifests.py`) cannot be
  imported from here (capabilities never import each other) and does not fit: the agent talks to the
  scheduler about a run the scheduler owns, while an Argo step is owned by Argo; so the container is
  built here, running papermill directly (`RUNNER`, a few lines of Python given to `python -c`), then
  writing each value the notebook recorded (`stratolab.record`, a scrapbook scrap in the output) to a
  file Argo reads as an output parameter.
- **Data between steps are artifacts**: the pipeline's files (each notebook step's notebook and its
  dependencies, at their paths under the pipeline's folder) are one HTTP input artifact, a .tar.gz
  the pipelines service itself serves at `ArgoRun.files_url` to a request carrying
  `Authorization: Bearer <ArgoRun.files_token>` (an HMAC of the run, `stratolab.platform.tokens`); Argo's
  executor unpacks a tarball artifact into its path, so the files land in the working directory. It
  needs nothing but the service (no bucket for the pipeline's own files; the steps' output files go to
  the default artifact repository as any Argo output). Each declared output file is an output artifact,
  given to every later step at the same path (optional: it is absent when its producer was skipped);
  the executed notebook is the output artifact `notebook`.
- **Retries are `retryStrategy`** (`limit`, exponential backoff), a timeout is `activeDeadlineSeconds`.
- **Notebook step pods carry what the usage ledger needs** (the pod collector of the usage service,
  stratolab/usage/kube.py, reads them as it reads servers' pods): the template's `metadata` labels the pod
  `app.kubernetes.io/component: pipeline-step` (the collector's selector) and the step, and annotates it
  with the step and its profile's slug; the Workflow's `podMetadata` gives every pod the owner, the run
  and the pipeline, as labels (escaped by `label_value`: what selectors and the NetworkPolicy match) and as
  annotations (exact: what the ledger is written from). The thing a bill names is the pipeline's name as
  the run's row has it (`ArgoRun.pipeline`), so a pipeline is one line on both backends. Function steps
  are not labelled a step: their pod only waits for a call the functions service meters itself.
- **Function steps** run `stratolab functions invoke` in the CPU image, with the caller's URL and token
  from the Secret `ArgoSettings.api_secret` (nothing secret in the Workflow). **Deploy and AutoML steps
  are not compiled**: they need the platform's services to act for the user (a rollout, a search)
  and are run by the engine; `workflow` refuses them with an error naming the node.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from stratolab.errors import InvalidInput
from stratolab.kube.objects import (
    COMPONENT_LABEL,
    MANAGED_BY_LABEL,
    OWNER_LABEL,
    cpu_quantity,
    memory_quantity,
    restricted_container_security,
)
from stratolab.pipelines import conditions
from stratolab.pipelines.flow import AUTOML_OP, CONDITION_OP, DEPLOY_OP, ELSE_PORT, FUNCTION_OP, NOTEBOOK_OP, Pipeline, Step
from stratolab.pipelines.plan import topological_order
from stratolab.pipelines.validate import ValidPipeline, ancestors
from stratolab.platform.kube_profiles import KubernetesSettings, kubespawner_override
from stratolab.platform.names import dns_label, label_value
from stratolab.platform.profiles import CPU_IMAGE, CUDA_IMAGE, Profile

API_VERSION = "argoproj.io/v1alpha1"
ENTRYPOINT = "pipeline"
WORK_DIR = "/srv/stratolab/work"
OUT_DIR = "/srv/stratolab/out"
COMPONENT = "pipeline-run"
#: the component label of a notebook step's pod (the usage collector's selector for pipeline steps)
STEP_COMPONENT = "pipeline-step"
RUN_LABEL = "stratolab.io/pipeline-run"
PIPELINE_LABEL = "stratolab.io/pipeline"
STEP_LABEL = "stratolab.io/step"
#: annotations (exact values) the usage collector reads a step pod by
OWNER_ANNOTATION = "stratolab.io/owner"
PIPELINE_ANNOTATION = "stratolab.io/pipeline"
RUN_ANNOTATION = "stratolab.io/pipeline-run"
STEP_ANNOTATION = "stratolab.io/step"
PROFILE_ANNOTATION = "stratolab.io/profile"
#: what a notebook step's container runs: papermill, then the recorded values as files
RUNNER = """\
import json, os, pathlib, re, sys
import papermill
notebook, parameters, out = sys.argv[1], json.loads(sys.argv[2]), pathlib.Path(sys.argv[3])
records = out / "records"
records.mkdir(parents=True, exist_ok=True)
executed = out / "output.ipynb"
try:
    papermill.execute_notebook(notebook, str(executed), parameters=parameters,
                               cwd=os.path.dirname(notebook) or None)
finally:
    cells = json.loads(executed.read_text()).get("cells", []) if executed.exists() else []
    for cell in cells:
        for output in cell.get("outputs", []):
            scrap = output.get("data", {}).get("application/scrapbook.scrap.json+json")
            if scrap and re.fullmatch(r"[A-Za-z0-9_-]{1,128}", str(scrap.get("name"))):
                (records / scrap["name"]).write_text(json.dumps(scrap.get("data")))
"""
_PARAM_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


@dataclass(frozen=True)
class ArgoSettings:
    """What every pipeline's Workflow shares in one installation."""

    namespace: str = "default"
    name_prefix: str = "stratolab"
    #: the Workflow's pods' service account (Argo's executor needs one that may patch pods/workflowtaskresults)
    service_account: str | None = None
    cpu_image: str = CPU_IMAGE
    gpu_image: str = CUDA_IMAGE
    image_pull_policy: str = "IfNotPresent"
    run_as_user: int = 1000
    run_as_group: int = 1000
    #: Secret with STRATOLAB_URL and STRATOLAB_TOKEN, for function steps; None: function steps refused
    api_secret: str | None = None
    #: seconds a finished Workflow stays (its pods' logs with it)
    ttl_after_finished: int = 3600
    #: backoff between retries of a step: first wait, growth factor
    retry_backoff_s: int = 10
    retry_factor: int = 2


@dataclass(frozen=True)
class ArgoRun:
    """One run of a pipeline as its Workflow needs it."""

    key: str
    owner: str
    #: where a step fetches the pipeline's files (a .tar.gz the pipelines service serves), and the
    #: bearer token that URL wants (HMAC of this run or schedule: it opens these files, nothing else)
    files_url: str
    files_token: str
    #: profiles by slug; a step naming none runs in `default_profile`
    profiles: Mapping[str, Profile] = field(default_factory=dict)
    default_profile: Profile | None = None
    #: pipeline parameters given for this run (over the file's defaults)
    parameters: Mapping[str, Any] = field(default_factory=dict)
    #: the pipeline's name as the run's row has it (what a bill names the steps' usage by); empty: the
    #: name in the file's properties
    pipeline: str = ""


def task_name(step: Step) -> str:
    """A step's task and template name: Argo wants letters, digits and dashes."""
    return dns_label(step.name.replace("_", "-").lower())


def workflow_name(key: str, prefix: str = "stratolab") -> str:
    return dns_label(f"{prefix}-pipeline-{key}")


def pipeline_name(run: ArgoRun, pipeline: Pipeline) -> str:
    """The pipeline's name for this run: the row's (`ArgoRun.pipeline`), else the file's."""
    return run.pipeline or pipeline.name


def labels(run: ArgoRun, pipeline: Pipeline) -> dict[str, str]:
    return {"app.kubernetes.io/name": "stratolab", COMPONENT_LABEL: COMPONENT, MANAGED_BY_LABEL: "stratolab-pipelines",
            OWNER_LABEL: label_value(run.owner), RUN_LABEL: label_value(run.key),
            PIPELINE_LABEL: label_value(pipeline_name(run, pipeline))}


def pod_metadata(run: ArgoRun, pipeline: Pipeline) -> dict[str, Any]:
    """`podMetadata`: on every pod of the Workflow, whose it is and of which run and pipeline; labels
    escaped to be label values, annotations exact."""
    name = pipeline_name(run, pipeline)
    return {"labels": {OWNER_LABEL: label_value(run.owner), RUN_LABEL: label_value(run.key),
                       PIPELINE_LABEL: label_value(name)},
            "annotations": {OWNER_ANNOTATION: run.owner, RUN_ANNOTATION: run.key, PIPELINE_ANNOTATION: name}}


def step_metadata(step: Step, profile: Profile) -> dict[str, Any]:
    """A notebook step template's `metadata`: its pod is a pipeline step (the usage collector's selector),
    with the step's name and its profile's slug."""
    return {"labels": {"app.kubernetes.io/name": "stratolab", COMPONENT_LABEL: STEP_COMPONENT,
                       STEP_LABEL: label_value(step.name)},
            "annotations": {STEP_ANNOTATION: step.name, PROFILE_ANNOTATION: profile.slug}}


def _records_used(valid: ValidPipeline) -> dict[str, set[str]]:
    """step name -> the recorded values conditions read from it (its output parameters)."""
    used: dict[str, set[str]] = {}
    for condition in valid.conditions.values():
        for ref in condition.references:
            used.setdefault(ref.step, set()).add(ref.value)
    return used


def _artifact_name(path: str) -> str:
    """An output file as an artifact name: its path made an identifier, unique enough within a pipeline
    (two outputs with one path are refused by validate.py)."""
    return "out-" + re.sub(r"[^A-Za-z0-9]+", "-", path).strip("-").lower()[:100]


def _profile_for(step: Step, run: ArgoRun) -> Profile:
    slug = step.profile
    if slug:
        if slug not in run.profiles:
            raise InvalidInput(f"step {step.name!r}: no profile {slug!r}; one of {', '.join(sorted(run.profiles))}",
                               field="profile")
        return run.profiles[slug]
    if run.default_profile is not None:
        return run.default_profile
    return Profile(slug="cpu", display_name="CPU")


def _resources(override: Mapping[str, Any], step: Step) -> dict[str, Any]:
    limits: dict[str, str] = {}
    requests: dict[str, str] = {}
    cpu, memory = step.params.get("cpu") or override.get("cpu_limit"), override.get("mem_limit")
    if step.params.get("memory"):  # Elyra's memory is in GB
        memory = f"{step.params['memory']}G"
    if cpu:
        limits["cpu"] = requests["cpu"] = cpu_quantity(cpu)
    if memory:
        limits["memory"] = requests["memory"] = memory_quantity(memory)
    for key, value in (override.get("extra_resource_limits") or {}).items():
        limits[key] = str(value)
    for key, value in (override.get("extra_resource_guarantees") or {}).items():
        requests[key] = str(value)
    if step.params.get("gpu"):
        limits["nvidia.com/gpu"] = requests["nvidia.com/gpu"] = str(int(step.params["gpu"]))
    return {k: v for k, v in (("limits", limits), ("requests", requests)) if v}


def _env(items: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"name": k, **v} if isinstance(v, Mapping) else {"name": k, "value": str(v)} for k, v in items.items()]


def _retry(step: Step, settings: ArgoSettings) -> dict[str, Any] | None:
    if not step.retries:
        return None
    return {"limit": str(step.retries), "retryPolicy": "Always",
            "backoff": {"duration": f"{settings.retry_backoff_s}s", "factor": str(settings.retry_factor)}}


def files_artifact(run: ArgoRun) -> dict[str, Any]:
    """The pipeline's files as the HTTP input artifact every notebook step starts from (unpacked into
    the working directory)."""
    return {"name": "files", "path": WORK_DIR,
            "http": {"url": run.files_url, "headers": [{"name": "Authorization", "value": f"Bearer {run.files_token}"}]}}


def _notebook_template(valid: ValidPipeline, step: Step, run: ArgoRun, settings: ArgoSettings,
                       records: set[str], inputs: list[tuple[str, str]]) -> dict[str, Any]:
    profile = _profile_for(step, run)
    override = kubespawner_override(profile, KubernetesSettings(
        cpu_image=settings.cpu_image, gpu_image=settings.gpu_image, image_pull_policy=settings.image_pull_policy))
    parameters = {**valid.pipeline.parameters, **run.parameters, **step.parameters}
    for name in step.params.get("pipeline_parameters") or ():
        if name in run.parameters or name in valid.pipeline.parameters:
            parameters[name] = run.parameters.get(name, valid.pipeline.parameters.get(name))
    env = {**(override.get("environment") or {}), **step.env,
           "STRATOLAB_PIPELINE_RUN": run.key, "STRATOLAB_PIPELINE_STEP": step.name}
    container: dict[str, Any] = {
        "name": "main",
        "image": step.runtime_image or override["image"],
        "imagePullPolicy": override.get("image_pull_policy") or settings.image_pull_policy,
        "command": ["python", "-c", RUNNER],
        "args": [step.filename, json.dumps(parameters, sort_keys=True), OUT_DIR],
        "workingDir": WORK_DIR,
        "env": _env(env),
        "securityContext": {**restricted_container_security(settings.run_as_user), "privileged": False},
        "volumeMounts": [{"name": "work", "mountPath": WORK_DIR}, {"name": "out", "mountPath": OUT_DIR}],
    }
    resources = _resources(override, step)
    if resources:
        container["resources"] = resources
    # the notebook runs in its own folder (papermill's cwd): outputs are written, and upstream outputs
    # found, relative to it, as in Elyra
    here = PurePosixPath(step.filename or "").parent
    template: dict[str, Any] = {
        "name": task_name(step),
        "metadata": step_metadata(step, profile),
        "inputs": {"artifacts": [
            files_artifact(run),
            *[{"name": name, "path": f"{WORK_DIR}/{here / path}", "optional": True} for name, path in inputs],
        ]},
        "outputs": {
            "artifacts": [{"name": "notebook", "path": f"{OUT_DIR}/output.ipynb", "optional": True},
                          *[{"name": _artifact_name(out), "path": f"{WORK_DIR}/{here / PurePosixPath(out)}"}
                            for out in step.outputs]],
        },
        "container": container,
    }
    if records:
        template["outputs"]["parameters"] = [
            {"name": name, "valueFrom": {"path": f"{OUT_DIR}/records/{name}"}} for name in sorted(records)]
    if override.get("node_selector"):
        template["nodeSelector"] = dict(override["node_selector"])
    if override.get("tolerations"):
        template["tolerations"] = list(override["tolerations"])
    if step.timeout:
        template["activeDeadlineSeconds"] = int(step.timeout) if float(step.timeout).is_integer() else step.timeout
    retry = _retry(step, settings)
    if retry:
        template["retryStrategy"] = retry
    return template


def _function_template(step: Step, settings: ArgoSettings) -> dict[str, Any]:
    if not settings.api_secret:
        raise InvalidInput(f"step {step.name!r}: function steps need the platform's API on this cluster "
                           "(ArgoSettings.api_secret is not set)", field="function")
    secret = {"name": settings.api_secret}
    args = ["functions", "invoke", str(step.params["function"]), "--json",
            "--data", json.dumps(step.params.get("payload", {}), sort_keys=True)]
    container = {
        "name": "main",
        "image": settings.cpu_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["stratolab"],
        "args": args,
        "env": [{"name": "STRATOLAB_URL", "valueFrom": {"secretKeyRef": {**secret, "key": "STRATOLAB_URL"}}},
                {"name": "STRATOLAB_TOKEN", "valueFrom": {"secretKeyRef": {**secret, "key": "STRATOLAB_TOKEN"}}}],
        "securityContext": {**restricted_container_security(settings.run_as_user), "privileged": False},
    }
    template: dict[str, Any] = {"name": task_name(step), "container": container}
    if step.timeout:
        template["activeDeadlineSeconds"] = int(step.timeout)
    retry = _retry(step, settings)
    if retry:
        template["retryStrategy"] = retry
    return template


def _real_upstream(pipeline: Pipeline, step: Step) -> list[tuple[str, str | None]]:
    """(upstream task's step id, `when` clause from a condition or None) for a step: a link to a condition
    stands for links to the condition's own upstream steps, under the condition's expression."""
    out: list[tuple[str, str | None]] = []
    for lk in step.upstream:
        source = pipeline.steps[lk.node_id]
        if source.op == CONDITION_OP:
            guard = f"{source.id}|{'else' if lk.port == ELSE_PORT else 'then'}"
            for up_id, up_guard in _real_upstream(pipeline, source):
                out.append((up_id, guard if up_guard is None else f"{up_guard}&{guard}"))
        else:
            out.append((lk.node_id, None))
    return out


def _when(valid: ValidPipeline, guards: list[str]) -> str | None:
    """The `when` of a step from its condition guards ("<condition id>|then" or "...|else")."""
    pipeline = valid.pipeline
    names = {s.name: s for s in pipeline.steps.values()}

    def ref(step: str, value: str) -> str:
        if not _PARAM_NAME.match(value):
            raise InvalidInput(f"recorded value {value!r} of step {step!r}: Argo needs letters, digits, - and _",
                               field="expression")
        return f"{{{{tasks.{task_name(names[step])}.outputs.parameters.{value}}}}}"

    clauses = []
    for guard in dict.fromkeys(guards):  # each once, in order
        for part in guard.split("&"):
            condition_id, branch = part.split("|")
            expression = conditions.to_argo_when(valid.conditions[condition_id], ref)
            clauses.append(expression if branch == "then" else f"!({expression})")
    clauses = list(dict.fromkeys(clauses))
    if not clauses:
        return None
    return clauses[0] if len(clauses) == 1 else " && ".join(f"({c})" for c in clauses)


def _depends(tasks: list[str]) -> str | None:
    if not tasks:
        return None
    finished = " && ".join(f"({t}.Succeeded || {t}.Skipped || {t}.Omitted)" for t in tasks)
    if len(tasks) == 1:
        return f"{tasks[0]}.Succeeded"
    return f"{finished} && ({' || '.join(f'{t}.Succeeded' for t in tasks)})"


def dag_tasks(valid: ValidPipeline, run: ArgoRun, settings: ArgoSettings) -> tuple[list[dict], list[dict]]:
    """(the DAG's tasks, the step templates) in topological order."""
    pipeline = valid.pipeline
    records = _records_used(valid)
    tasks: list[dict[str, Any]] = []
    templates: list[dict[str, Any]] = []
    for sid in topological_order(pipeline):
        step = pipeline.steps[sid]
        if step.op == CONDITION_OP:
            continue
        if step.op in (DEPLOY_OP, AUTOML_OP):
            raise InvalidInput(f"step {step.name!r} (node {step.id}): {step.op} steps are run by the platform's "
                               "engine, not compiled to Argo", field="op")
        upstream = _real_upstream(pipeline, step)
        dep_ids = list(dict.fromkeys(u for u, _ in upstream))
        guards = [g for _, g in upstream if g]
        inputs = []
        for anc in topological_order(pipeline):
            if anc in ancestors(pipeline, sid) and pipeline.steps[anc].op == NOTEBOOK_OP:
                for out in pipeline.steps[anc].outputs:
                    inputs.append((anc, out))
        task: dict[str, Any] = {"name": task_name(step), "template": task_name(step)}
        depends = _depends([task_name(pipeline.steps[d]) for d in dep_ids])
        if depends:
            task["depends"] = depends
        when = _when(valid, guards)
        if when:
            task["when"] = when
        if step.op == NOTEBOOK_OP:
            names = [(f"in-{i}", out) for i, (_, out) in enumerate(inputs)]
            if inputs:
                task["arguments"] = {"artifacts": [
                    {"name": name, "from": f"{{{{tasks.{task_name(pipeline.steps[anc])}.outputs.artifacts."
                                           f"{_artifact_name(out)}}}}}", "optional": True}
                    for (name, out), (anc, _) in zip(names, inputs, strict=True)]}
            templates.append(_notebook_template(valid, step, run, settings, records.get(step.name, set()), names))
        elif step.op == FUNCTION_OP:
            templates.append(_function_template(step, settings))
        tasks.append(task)
    return tasks, templates


def workflow_spec(valid: ValidPipeline, run: ArgoRun, settings: ArgoSettings) -> dict[str, Any]:
    tasks, templates = dag_tasks(valid, run, settings)
    spec: dict[str, Any] = {
        "entrypoint": ENTRYPOINT,
        "templates": [{"name": ENTRYPOINT, "dag": {"tasks": tasks}}, *templates],
        "volumes": [{"name": "work", "emptyDir": {}}, {"name": "out", "emptyDir": {}}],
        "securityContext": {"runAsNonRoot": True, "runAsUser": settings.run_as_user,
                            "runAsGroup": settings.run_as_group, "fsGroup": settings.run_as_group,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "automountServiceAccountToken": False,
        "executor": {"serviceAccountName": settings.service_account} if settings.service_account else None,
        "ttlStrategy": {"secondsAfterCompletion": settings.ttl_after_finished},
        "podMetadata": pod_metadata(run, valid.pipeline),
    }
    if spec["executor"] is None:
        del spec["executor"]
    if settings.service_account:
        spec["serviceAccountName"] = settings.service_account
    return spec


def workflow(valid: ValidPipeline, run: ArgoRun, settings: ArgoSettings) -> dict[str, Any]:
    """The Workflow that runs `valid` once (see the module docstring)."""
    return {
        "apiVersion": API_VERSION,
        "kind": "Workflow",
        "metadata": {"name": workflow_name(run.key, settings.name_prefix), "namespace": settings.namespace,
                     "labels": labels(run, valid.pipeline),
                     "annotations": {OWNER_ANNOTATION: run.owner, PIPELINE_ANNOTATION: pipeline_name(run, valid.pipeline)}},
        "spec": workflow_spec(valid, run, settings),
    }


def cron_workflow(valid: ValidPipeline, run: ArgoRun, settings: ArgoSettings, schedule: str, *,
                  timezone: str = "UTC", concurrency: str = "Forbid") -> dict[str, Any]:
    """The CronWorkflow of a cron trigger: Argo starts the same Workflow on `schedule` (cron, in `timezone`);
    `Forbid` keeps a run from starting while the previous one goes on (Replace and Allow are Argo's others)."""
    if concurrency not in ("Allow", "Forbid", "Replace"):
        raise InvalidInput("concurrency must be Allow, Forbid or Replace", field="concurrency")
    if len(schedule.split()) != 5:
        raise InvalidInput(f"schedule {schedule!r} must be a cron expression of five fields", field="schedule")
    return {
        "apiVersion": API_VERSION,
        "kind": "CronWorkflow",
        "metadata": {"name": dns_label(f"{settings.name_prefix}-pipeline-cron-{run.key}"),
                     "namespace": settings.namespace, "labels": labels(run, valid.pipeline)},
        "spec": {"schedules": [schedule], "timezone": timezone, "concurrencyPolicy": concurrency,
                 "startingDeadlineSeconds": 300, "successfulJobsHistoryLimit": 3, "failedJobsHistoryLimit": 3,
                 "workflowMetadata": {"labels": labels(run, valid.pipeline)},
                 "workflowSpec": workflow_spec(valid, run, settings)},
    }
