"""The ``edgefleet`` operator CLI."""
