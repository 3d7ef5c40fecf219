"""Client side of Cumulus: packaging a call as a job and decoding its result."""
