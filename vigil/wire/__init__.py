"""What agents and the server say to each other: the signed heartbeat datagrams and
lease grants (``heartbeat``) and the signed guest and service reports (``reports``).

Both sides import these formats from here, so neither imports the other."""
