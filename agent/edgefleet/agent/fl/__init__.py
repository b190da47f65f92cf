"""The agent's side of federated fine-tuning: a supervised SuperNode and our ClientApp.

Nothing here imports the coordinator; the ClientApp module imports only numpy and the
public ``flwr.app``/``flwr.clientapp`` API at module level (see ``clientapp.py`` for why).
"""
