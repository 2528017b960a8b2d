"""The usage service: usage, bills and budgets from the ledger over HTTP, and budgets enforced while
things run. The process: app.py; its routes: openapi.py and handlers.py; what it does: state.py and
enforce.py."""
