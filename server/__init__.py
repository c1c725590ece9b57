"""Server side of a federated run: the ServerApp, backbone distribution and the round loop."""
