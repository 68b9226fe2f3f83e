"""``python -m pki``: the same command as the ``pki`` console script."""

from pki.cli import main

raise SystemExit(main())
