"""vigil-agent: runs on every compute host; sends heartbeats now, local monitors later."""
