"""fedgraft: federated and continual transfer learning on Flower and Avalanche."""

__version__ = "0.1.0"
