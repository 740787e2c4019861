"""The Flower ServerApp: FedAvg with centralized evaluation after every round."""
