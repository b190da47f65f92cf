"""Generated from protos/edgefleet/v1 by scripts/gen_protos.py. Do not edit."""
