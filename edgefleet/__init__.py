"""edgefleet shared code: what both the coordinator and the device agent need.

This package must stay light: it never imports redis, torch or the compression
stack, so that a device can install the agent alone. The wire contract lives in
``edgefleet.v1`` (generated from ``protos/`` by ``scripts/gen_protos.py``).
"""

__version__ = "0.1.0"
