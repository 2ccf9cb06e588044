"""Driver interfaces (compute, fencing, notifier) and their implementations.

Each kind is one small abstract class; every implementation passes the kind's contract
suite in ``tests/contract``. Library errors are translated here, at the boundary, into
the two errors of ``vigil.drivers.errors`` so the engine only decides between "retry
later" and "stop and report".
"""
