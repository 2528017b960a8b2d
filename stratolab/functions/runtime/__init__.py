"""The local runtime of functions: worker processes, forked from a per-environment fork-server."""
