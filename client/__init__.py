"""Client side of a federated run: the ClientApp, the node's backbone store and local training."""
