"""Run the app on Flower's real runtime, isolated: simulation (Ray) or loopback deployment."""
