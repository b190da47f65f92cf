"""The edgefleet release, one constant for the agent, the coordinator and the build records.

(``edgefleet`` is a namespace package over three folders, so it has no ``__init__.py`` to
carry this.)"""

__version__ = "0.1.0"
