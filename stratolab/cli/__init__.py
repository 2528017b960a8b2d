"""The `stratolab` command line: log in to a hub and, in later issues, manage functions, jobs and AutoML."""
