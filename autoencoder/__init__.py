"""Using a federated autoencoder's global model: encode, decode, picture and
anomaly-score images.

    python -m autoencoder --help
"""
