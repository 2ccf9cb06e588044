"""Contract suites, one per driver interface, and the modules that run them."""
