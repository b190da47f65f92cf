"""The edgefleet device agent. It never imports the coordinator."""
