"""Usage: what the ledger recorded, priced with the admin's price sheet (`pricing`), billed for a period
(`bill`), and held to budgets (`budgets`); the usage service (`service/`) serves them over HTTP.

Hub, functions, jobs and triggers never import this package: they ask the usage service
(stratolab/client/usage.py).
"""
