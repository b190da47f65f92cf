"""Participant selection: ``--select 'battery>30 and ram>=512MiB and profile!=cortex-m4'``.

Flower samples nodes uniformly; a fleet needs to pick devices by what they can do and how
they are doing. The language is the fleet's one selector language, :mod:`edgefleet.selectors`
(``deploy --to`` speaks it too); the ServerApp matches it against each node's reported facts
(:meth:`edgefleet.fl.contract.NodeFacts.selection_view`). Re-exported here for the Flower app.
"""

from __future__ import annotations

from edgefleet.selectors import FIELDS, Selection, SelectionError, parse_selection

__all__ = ["FIELDS", "Selection", "SelectionError", "parse_selection"]
