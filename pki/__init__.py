"""pki: a small certificate authority for internal mTLS, on `cryptography`.

The ``pki`` command (``pki.cli:main``, also ``python -m pki``) is the interface;
``pki.authority`` builds the certificates (pure, ``now`` a parameter) for code
and tests that need a CA of their own.
"""
