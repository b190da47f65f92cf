"""Federated-learning pieces shared by the coordinator and the agent.

Only numpy is imported here: the agent's ClientApp runs in a fresh process for every
Flower message, so anything imported at module level is paid on every round.
"""
