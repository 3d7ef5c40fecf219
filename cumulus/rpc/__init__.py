"""The gRPC front door: wire types and status codes stay in this package; the supervisor speaks Python."""
