"""`python -m sinkprobe.cli` that keeps a finished run's training state (``.NAME.state``), for
tests that inspect what the ranks saved there (sinkprobe removes it on success)."""

import sys

import sinkprobe.pipeline.runs
from sinkprobe.cli import main

sinkprobe.pipeline.runs.drop_state = lambda state: None

if __name__ == "__main__":
    sys.exit(main())
