"""The simulated cloud: hypervisors, BMCs, instances and a rule-enforcing Nova, in-process
(``vigil.sim.cloud``) or over HTTP (``vigil.sim.rpc``), for tests, the demo and drills."""
