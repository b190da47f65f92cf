"""Coordinator side of federated fine-tuning on Flower's Deployment Engine.

``superlink`` supervises (or connects to) a SuperLink and submits runs; ``serverapp`` is our
ServerApp (selection + heterogeneous aggregation + short-poll round driver); ``selection``
parses participant-selection expressions; ``heterofl`` holds the width-slice math.
"""
