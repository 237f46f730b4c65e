"""Build the small byte-level BPE tokenizer shipped for offline runs (model.name: tiny:<arch>).

Byte-level BPE never produces <unk>, so every script in the fixtures (Arabic, CJK, Devanagari, ...)
tokenizes. The special tokens and the pair template copy XLM-R's (<s>=0, <pad>=1, </s>=2, <unk>=3,
"<s> A </s></s> B </s>"), so the tiny model exercises the same code paths as xlm-roberta-large.

    python scripts/build_tiny_tokenizer.py     # rewrites src/stilts_xling/assets/tiny_tokenizer/
"""
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "stilts_xling" / "assets" / "tiny_tokenizer"
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def corpus():
    for path in sorted((ROOT / "tests" / "assets").rglob("*")):
        if path.is_file():
            yield from path.read_text(encoding="utf-8", errors="ignore").splitlines()


def main(vocab_size: int = 2000) -> None:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), add_prefix_space=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                   cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                   model_max_length=512)
    OUT.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(OUT)
    print(f"wrote {OUT} ({len(fast)} tokens)")


if __name__ == "__main__":
    main()
