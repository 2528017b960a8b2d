"""The shared layer under the capabilities (hub, functions, jobs, ...): what each of them needs once.

Capabilities import from here, never from each other. Each module is one idea: Unix socket
directories (`sockets`), the GPU ledger (`gpu_ledger`), archive extraction (`archive`), requests made
on a user's behalf (`outbound`).
"""
