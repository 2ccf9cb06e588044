"""vigil: high availability for the virtual machines people run on OpenStack."""

__version__ = "0.1.0"
