"""Orchestration: the study's stages (:mod:`~sinkprobe.pipeline.study`), one run of a recipe
(:mod:`~sinkprobe.pipeline.runs`), the recipes themselves (:mod:`~sinkprobe.pipeline.recipes`)
and the analyses of a finished study (:mod:`~sinkprobe.pipeline.analyses`). The only part of
the package that imports training and analysis together."""
