"""``vigil``: the operator's command line, a client of vigil-server's REST API.

It reads and records through the API only (never the store), so it works from any
machine that can reach the server and holds the bearer token.
"""
