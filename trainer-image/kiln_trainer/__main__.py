"""`python -m kiln_trainer --spec spec.yaml --output s3://bucket/prefix` (see kiln_trainer.cli)."""

import sys

from kiln_trainer.cli import main

if __name__ == "__main__":
    sys.exit(main())
