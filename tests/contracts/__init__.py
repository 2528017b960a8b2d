"""Contract suites: one suite per interface, run over every implementation of it."""
