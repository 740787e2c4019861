"""The Flower ClientApp: one node's local training and evaluation."""
