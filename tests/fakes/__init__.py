"""In-memory fakes for unit tests of actor and RPC logic. Never used outside tests."""
