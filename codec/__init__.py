"""Using a federated autoencoder: encode, decode, picture and anomaly-score images.

    python -m codec --help
"""
