"""Kubernetes plumbing shared by the Kubernetes backends (functions on Knative, runs as Jobs).

`api` is the client (it loads kubernetes_asyncio, seconds on a busy machine: import it where the API is
called); `objects` holds pure pieces of manifests. What settings need without the client is here.
"""

from pathlib import Path

#: where a pod finds its service account's token and namespace
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
