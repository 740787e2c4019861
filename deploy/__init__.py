"""Deployment helpers: the compose file's switches, certificates, connections, the container test's tools.

Not part of the installed package (the image runs these scripts from its build context);
tests import them from the checkout.
"""
