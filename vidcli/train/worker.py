"""One rank of a spawned training job: `python -m vidcli.train.worker --stage dit --recipe R`."""

import sys

from vidcli.train.launcher import worker_main

if __name__ == "__main__":
    sys.exit(worker_main())
