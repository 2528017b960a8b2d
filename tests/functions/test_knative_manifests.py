"""Knative objects for functions, built by pure functions: compared to the expected dicts and
validated against Knative's Service CRD schema (../shared/schemas) and, since its podspec is loosely
typed, the revision's pod spec wrapped in a v1 Pod against Kubernetes' own schema."""

from __future__ import annotations

import base64
import copy
import re

import jsonschema
import kubernetes_validate
import pytest

from functions_support import knative_schema
from stratolab.functions.knative.bundle_access import bundle_token, check_bundle_token
from stratolab.functions.knative.config import GPU_TOLERATION, KnativeConfig
from stratolab.functions.knative.manifests import (
    RevisionInput,
    build_bundle_secret,
    build_service,
    build_template,
    bundle_url,
    label_value,
    revision_name,
    runtime_environment,
    service_name,
    spec_hash,
    traffic_revisions,
    traffic_with_version,
    traffic_with_weights,
    traffic_without_version,
)
from stratolab.functions.knative.status import revision_state, tag_urls
from stratolab.functions.policy import ScalingPolicy

DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DIGEST = "ab" * 32
CONFIG = KnativeConfig(namespace="fns", service_url="http://functions.hub.svc:10101", runtime_secret="s3cret",
                       images={"cpu": "example/cpu:1", "cuda": "example/cuda:1"})


def validate(service: dict) -> None:
    jsonschema.validate(service, knative_schema())
    template = service["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": template["metadata"]["name"], "labels": template["metadata"]["labels"],
                        "annotations": template["metadata"]["annotations"]},
           "spec": {k: v for k, v in template["spec"].items() if k not in ("containerConcurrency", "timeoutSeconds")}}
    kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)


def rev(version: int = 3, policy: ScalingPolicy | None = None, requirements=("numpy==1.26.4",),
        owner: str = "alice", name: str = "greeter") -> RevisionInput:
    return RevisionInput(owner, name, version, policy or ScalingPolicy(), {"requirements": list(requirements)}, DIGEST)


def test_names_are_dns_labels_short_enough_for_revisions_and_tags():
    assert service_name("alice", "greeter") == "fn-alice-greeter"
    # cleaned or shortened names end in a hash of owner/name, so different functions never collide
    odd = service_name("alice@example.org", "greeter")
    assert odd.startswith("fn-alice-example-org-greeter-") and odd != service_name("alice-example.org", "greeter")
    long = service_name("a" * 60, "b" * 63)
    assert len(long) <= 40 and long != service_name("a" * 60, "b" * 62)
    for svc in (odd, long, service_name("Bob_Smith", "x"), service_name("--", "f")):
        assert DNS_1035.match(svc), svc
        for name in (revision_name(svc, 123456, "0123abcd"), f"v123456-{svc}"):
            assert len(name) <= 63 and DNS_1035.match(name)
    assert revision_name("fn-a-b", 2) == "fn-a-b-v2" and revision_name("fn-a-b", 2, "beef0001") == "fn-a-b-v2-beef0001"
    assert label_value("alice") == "alice"
    assert re.fullmatch(r"alice-example\.org-[0-9a-f]{8}", label_value("alice@example.org"))


def test_revision_template_and_service_for_a_cpu_function():
    policy = ScalingPolicy(min_instances=1, max_instances=6, concurrency=4, idle_timeout_s=120, timeout_s=12.5,
                           memory_mb=768, max_payload_mb=2)
    template = build_template(CONFIG, rev(policy=policy))
    service = build_service(CONFIG, "alice", "greeter", template,
                            [{"tag": "v3", "revisionName": "fn-alice-greeter-v3", "percent": 100}])
    labels = {"stratolab.io/owner": "alice", "stratolab.io/function": "greeter",
              "app.kubernetes.io/component": "function", "app.kubernetes.io/managed-by": "stratolab"}
    expected_template = {
        "metadata": {
            "name": "fn-alice-greeter-v3",
            "labels": {**labels, "stratolab.io/version": "3"},
            "annotations": {
                "stratolab.io/owner": "alice", "stratolab.io/function": "greeter",
                "autoscaling.knative.dev/min-scale": "1",
                "autoscaling.knative.dev/max-scale": "6",
                "autoscaling.knative.dev/target": "4",
                "autoscaling.knative.dev/scale-down-delay": "120s",
                "stratolab.io/spec-hash": spec_hash(template),
            },
        },
        "spec": {
            "containerConcurrency": 4,
            "timeoutSeconds": 13,
            "enableServiceLinks": False,
            "automountServiceAccountToken": False,
            "containers": [{
                "name": "function",
                "image": "example/cpu:1",
                "imagePullPolicy": "IfNotPresent",
                "command": ["python", "-m", "stratolab.functions.runtime.http_server"],
                "ports": [{"name": "http1", "containerPort": 8080}],
                "env": [
                    {"name": "STRATOLAB_FUNCTION", "value": "alice/greeter/3"},
                    {"name": "STRATOLAB_BUNDLE_URL",
                     "value": "http://functions.hub.svc:10101/services/functions/runtime/bundles/alice/greeter/3"},
                    {"name": "STRATOLAB_BUNDLE_DIGEST", "value": DIGEST},
                    {"name": "STRATOLAB_BUNDLE_TOKEN",
                     "valueFrom": {"secretKeyRef": {"name": "fn-alice-greeter-bundle", "key": "v3"}}},
                    {"name": "STRATOLAB_CONCURRENCY", "value": "4"},
                    {"name": "STRATOLAB_MAX_BATCH_SIZE", "value": "0"},
                    {"name": "STRATOLAB_MAX_WAIT_MS", "value": "5"},
                    {"name": "STRATOLAB_MAX_PAYLOAD_MB", "value": "2"},
                    {"name": "PYTHONUNBUFFERED", "value": "1"},
                ],
                "resources": {"requests": {"cpu": "500m", "memory": "768Mi"},
                              "limits": {"cpu": "2", "memory": "768Mi"}},
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 2},
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
            }],
        },
    }
    assert template == expected_template
    assert service == {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "fn-alice-greeter", "namespace": "fns",
                     "labels": {**labels, "networking.knative.dev/visibility": "cluster-local"},
                     "annotations": {"stratolab.io/owner": "alice", "stratolab.io/function": "greeter"}},
        "spec": {"template": expected_template,
                 "traffic": [{"tag": "v3", "revisionName": "fn-alice-greeter-v3", "percent": 100}]},
    }
    validate(service)
    # the token is never in the Service, only a reference to the function's Secret
    assert bundle_token("s3cret", "alice", "greeter", 3) not in repr(service)


def test_gpu_functions_get_the_cuda_image_gpu_limits_and_scheduling():
    config = KnativeConfig(namespace="fns", runtime_secret="x", images={"cpu": "c", "cuda": "g"},
                           gpu_node_selector={"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}, cpu_limit=None)
    template = build_template(config, rev(policy=ScalingPolicy(gpus=2, max_batch_size=8, concurrency=2,
                                                               idle_timeout_s=7200)))
    spec = template["spec"]
    container = spec["containers"][0]
    assert container["image"] == "g"
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": "2048Mi"},
                                      "limits": {"memory": "2048Mi", "nvidia.com/gpu": "2"}}
    assert spec["tolerations"] == [GPU_TOLERATION]
    assert spec["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    # a batch is gathered from concurrent requests: an instance takes concurrency x batch size at once
    assert spec["containerConcurrency"] == 16
    assert template["metadata"]["annotations"]["autoscaling.knative.dev/target"] == "16"
    assert template["metadata"]["annotations"]["autoscaling.knative.dev/scale-down-delay"] == "3600s"  # Knative's max
    validate(build_service(config, "alice", "greeter", template, [{"revisionName": "x", "percent": 100}]))
    # a CPU policy never schedules on GPU nodes
    cpu = build_template(config, rev())["spec"]
    assert "tolerations" not in cpu and "nodeSelector" not in cpu


def test_runtime_environment_follows_the_notebooks_environment():
    assert runtime_environment({"requirements": ["numpy==1.26.4"]}, ScalingPolicy()) == "cpu"
    assert runtime_environment({"requirements": ["torch==2.3.1+cu121"]}, ScalingPolicy()) == "cuda"
    assert runtime_environment({"requirements": ["nvidia-cudnn-cu12==9.1.0.70"]}, ScalingPolicy()) == "cuda"
    assert runtime_environment({"requirements": ["torch==2.3.1+cpu"]}, ScalingPolicy()) == "cpu"
    assert runtime_environment({}, ScalingPolicy(gpus=1)) == "cuda"


def test_spec_hash_names_content_not_the_name():
    base = build_template(CONFIG, rev())
    renamed = build_template(CONFIG, rev(), "fn-alice-greeter-v3-other")
    assert spec_hash(base) == spec_hash(renamed) == base["metadata"]["annotations"]["stratolab.io/spec-hash"]
    changed = build_template(CONFIG, rev(policy=ScalingPolicy(max_instances=9)))
    assert spec_hash(changed) != spec_hash(base)


def test_bundle_secret_and_urls_of_odd_owner_names():
    secret = build_bundle_secret(CONFIG, "alice@example.org", "greeter", {2: "tok2", 1: "tok1"})
    assert secret["metadata"]["name"] == service_name("alice@example.org", "greeter") + "-bundle"
    assert secret["data"] == {"v1": base64.b64encode(b"tok1").decode(), "v2": base64.b64encode(b"tok2").decode()}
    assert secret["type"] == "Opaque" and secret["metadata"]["namespace"] == "fns"
    kubernetes_validate.validate(secret, kubernetes_validate.latest_version(), strict=True)
    assert bundle_url(CONFIG, "alice@example.org", "greeter", 2) == \
        "http://functions.hub.svc:10101/services/functions/runtime/bundles/alice%40example.org/greeter/2"


def test_bundle_tokens_are_per_version():
    token = bundle_token("secret", "alice", "greeter", 3)
    assert check_bundle_token("secret", "alice", "greeter", 3, token)
    assert not check_bundle_token("secret", "alice", "greeter", 4, token)
    assert not check_bundle_token("secret", "bob", "greeter", 3, token)
    assert not check_bundle_token("other", "alice", "greeter", 3, token)
    assert not check_bundle_token("secret", "alice", "greeter", 3, None)
    assert not check_bundle_token("", "alice", "greeter", 3, bundle_token("", "alice", "greeter", 3))


def _e(v: int, percent: int, revision: str | None = None) -> dict:
    return {"tag": f"v{v}", "revisionName": revision or f"fn-a-b-v{v}", "percent": percent}


def test_traffic_blocks():
    # a first version must take 100 %; a later one joins at 0 % with its tag
    assert traffic_with_version([], 1, "fn-a-b-v1") == [_e(1, 100)]
    assert traffic_with_version([_e(1, 100)], 2, "fn-a-b-v2") == [_e(1, 100), _e(2, 0)]
    # moving a tag to a new revision (a policy change) keeps its percentage
    assert traffic_with_version([_e(1, 30), _e(2, 70)], 2, "fn-a-b-v2-beef") == [_e(1, 30), _e(2, 70, "fn-a-b-v2-beef")]
    # weights from the registry; unweighted versions stay addressable at 0 %
    block = traffic_with_weights([_e(1, 100), _e(2, 0), _e(10, 0)], {2: 90, 10: 10}, {})
    assert block == [_e(1, 0), _e(2, 90), _e(10, 10)]
    assert traffic_with_weights([_e(1, 100)], {3: 100}, {3: "fn-a-b-v3"}) == [_e(1, 0), _e(3, 100)]
    assert traffic_revisions(block) == {1: "fn-a-b-v1", 2: "fn-a-b-v2", 10: "fn-a-b-v10"}
    # removing a version gives its share to the others in proportion, or all to the newest
    assert traffic_without_version([_e(1, 20), _e(2, 20), _e(3, 60)], 3) == [_e(1, 50), _e(2, 50)]
    assert traffic_without_version([_e(1, 0), _e(2, 0), _e(3, 100)], 3) == [_e(1, 0), _e(2, 100)]
    assert traffic_without_version([_e(1, 33), _e(2, 33), _e(3, 34)], 3) == [_e(1, 50), _e(2, 50)]
    assert traffic_without_version([_e(1, 100)], 1) == []
    for block in ([_e(1, 33), _e(2, 33), _e(3, 34)], [_e(1, 1), _e(2, 2), _e(3, 97)]):
        assert sum(e["percent"] for e in traffic_without_version(block, 3)) == 100


def test_every_traffic_block_is_valid_for_knative():
    template = build_template(CONFIG, rev())
    for block in ([_e(1, 100)], [_e(1, 0), _e(2, 90), _e(10, 10)]):
        validate(build_service(CONFIG, "alice", "greeter", template, block))
    bad = build_service(CONFIG, "alice", "greeter", template, [_e(1, 100)])
    bad["spec"]["traffic"][0]["percent"] = "100"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, knative_schema())


def _condition(kind: str, status: str, reason: str = "", message: str = "") -> dict:
    return {"type": kind, "status": status, "reason": reason, "message": message}


def test_revision_states_and_tag_urls():
    starting = {"status": {"conditions": [_condition("Ready", "Unknown", "Deploying")]}}
    assert revision_state({}).phase == "starting" and revision_state(starting).phase == "starting"
    ready = {"status": {"actualReplicas": 2, "desiredReplicas": 3, "conditions": [_condition("Ready", "True")]}}
    state = revision_state(ready)
    assert (state.phase, state.actual_replicas, state.desired_replicas) == ("ready", 2, 3)
    crashed = {"status": {"conditions": [
        _condition("Ready", "False", "ExitCode1", "Container failed with: stratolab runtime: no module x"),
        _condition("ContainerHealthy", "False", "ExitCode1", "Container failed with: stratolab runtime: no module x"),
        _condition("ResourcesAvailable", "Unknown", "Deploying")]}}
    assert revision_state(crashed).explanation == "ExitCode1: Container failed with: stratolab runtime: no module x"
    unschedulable = copy.deepcopy(starting)
    unschedulable["status"]["conditions"].append(_condition("ResourcesAvailable", "False", "Unschedulable",
                                                            "0/3 nodes have nvidia.com/gpu"))
    assert revision_state(unschedulable).phase == "failed"
    assert revision_state(unschedulable).reason == "Unschedulable"
    service = {"status": {"traffic": [{"tag": "v1", "url": "http://v1-fn.fns.svc.cluster.local", "percent": 90},
                                      {"tag": "v2", "url": "http://v2-fn.fns.svc.cluster.local", "percent": 10},
                                      {"revisionName": "fn-x", "percent": 0}]}}
    assert tag_urls(service) == {1: "http://v1-fn.fns.svc.cluster.local", 2: "http://v2-fn.fns.svc.cluster.local"}
    assert tag_urls({}) == {}


def test_config_from_the_environment():
    config = KnativeConfig.from_env({
        "STRATOLAB_FUNCTIONS_NAMESPACE": "team-fns",
        "STRATOLAB_FUNCTIONS_INTERNAL_URL": "http://functions.stratolab:10101/",
        "STRATOLAB_RUNTIME_SECRET": "abc",
        "STRATOLAB_FUNCTION_IMAGE_CUDA": "registry.example/notebook:cuda",
        "STRATOLAB_FUNCTION_GPU_NODE_SELECTOR": '{"gpu": "h100"}',
        "STRATOLAB_FUNCTIONS_CLUSTER_LOCAL": "false",
    })
    assert config.namespace == "team-fns" and config.service_url == "http://functions.stratolab:10101"
    assert config.images["cuda"] == "registry.example/notebook:cuda" and config.images["cpu"].endswith("-cpu")
    assert config.gpu_node_selector == {"gpu": "h100"} and config.cluster_local is False
    assert config.runtime_secret == "abc"
    with pytest.raises(ValueError, match="STRATOLAB_FUNCTION_GPU_NODE_SELECTOR"):
        KnativeConfig.from_env({"STRATOLAB_FUNCTION_GPU_NODE_SELECTOR": "{nope"})


def test_private_runtime_images_get_the_pull_secrets():
    config = KnativeConfig.from_env({"STRATOLAB_FUNCTION_IMAGE_PULL_SECRETS": "registry-credentials, other"})
    assert config.image_pull_secrets == ("registry-credentials", "other")
    template = build_template(config, rev())
    assert template["spec"]["imagePullSecrets"] == [{"name": "registry-credentials"}, {"name": "other"}]
    assert "imagePullSecrets" not in build_template(CONFIG, rev())["spec"]
