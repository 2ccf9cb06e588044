"""What agents and the server say to each other: the signed heartbeat datagrams and
lease grants (``heartbeat``), the signed guest and service reports (``reports``), and
TLS on the API they go to (``tls``).

Both sides import these formats from here, so neither imports the other."""
