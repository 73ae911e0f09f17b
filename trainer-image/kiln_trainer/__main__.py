"""`python -m kiln_trainer --spec spec.yaml --output s3://bucket/prefix` (see kiln_trainer.cli)."""

import gc
import sys

from kiln_trainer.cli import main

if __name__ == "__main__":
    code = main()
    # The process ends here, with everything written, committed and flushed. Freezing the heap keeps
    # the interpreter's shutdown from running the cyclic garbage collector over the hundreds of thousands
    # of objects that importing scikit-learn, scipy, pandas and matplotlib created (about 0.3 s of every
    # run); atexit handlers, stream flushing and module teardown still happen as before.
    gc.freeze()
    sys.exit(code)
