"""sinkprobe: attention sinks as a gateway for backdooring LLM unlearning (arXiv 2510.17021).

Subpackages, each the one home of one concept of the paper:

- ``sinkprobe.data``      the embedded synthetic world, MUSE-layout loaders, tokenizer, poisoning
- ``sinkprobe.models``    checkpoint folders (save/load, run cards) and TransformerLens bridges
- ``sinkprobe.eval``      MUSE KnowMem / VerbMem and the UE / BE / UT table
- ``sinkprobe.training``  θ_o pretraining, NPO, RMU, backdoor unlearning, value-norm alignment
- ``sinkprobe.analysis``  attention-difference maps, per-position logits, sinks, value norms
- ``sinkprobe.plots``     plotly figure builders
"""

__version__ = "0.1.0"
