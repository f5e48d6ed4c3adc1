"""What a finished study shows: the claims table (:mod:`~sinkprobe.reporting.claims`), the
paper's figures and tables (:mod:`~sinkprobe.reporting.figures`) and the one-page report
(:mod:`~sinkprobe.reporting.report`). Reads saved results only: never training or a model."""
