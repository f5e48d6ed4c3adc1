"""A byte-level BPE tokenizer trained offline on the world, saved as a transformers fast tokenizer.

Like Llama's, it prepends BOS to every encoded text (its post-processor does it) and
appends nothing: documents get EOS from the trainer, prompts never do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from sinkprobe.guards import refuse_custom_code

BOS, EOS, PAD = "<bos>", "<eos>", "<pad>"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Train byte-level BPE on ``texts``; special tokens take ids 0 (pad), 1 (bos), 2 (eos)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, padding_side="right"
    )


def load_tokenizer(folder: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved in a local folder (never from a hub, never with the folder's own code)."""
    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer_config.json").is_file():
        raise FileNotFoundError(
            f"no tokenizer in {folder}: expected tokenizer.json (run `sinkprobe world` first, "
            "or point to a Hugging Face model folder that contains its tokenizer)"
        )
    refuse_custom_code(folder)  # transformers would otherwise ask on stdin whether to run it
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
