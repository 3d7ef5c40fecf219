"""Generated from proto/cumulus/v1 by `python -m cumulus.rpc.codegen`. Do not edit."""
