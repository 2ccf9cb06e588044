"""vigil-server's REST API."""
