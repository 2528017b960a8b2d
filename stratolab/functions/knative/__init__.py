"""Functions on Knative Serving: one Knative Service per function, one revision per version.

`manifests` builds the objects (pure functions), `status` reads what Knative reports back, `backend`
applies and watches them through `stratolab.kube.api.KubeClient`, `bundle_access` signs the URL a
revision's pod fetches its bundle from, and `config` holds the deployment's settings.
"""
