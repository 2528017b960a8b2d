"""Kubernetes plumbing shared by the Kubernetes backends (functions on Knative, runs as Jobs)."""
