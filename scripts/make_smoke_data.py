"""Write the synthetic MNLI and XNLI fixtures used by configs/smoke.yaml and the tests.

The files follow the official layouts byte for byte in structure (MultiNLI 1.0 jsonl, XNLI 1.0 19-column
tsv) but the sentences are generated, so the label is learnable by a tiny model: the hypothesis carries
a negation word for contradiction and a hedge word for neutral. That makes "training learns" testable
(dev accuracy far above the 33% chance level) in seconds on a CPU.

    python scripts/make_smoke_data.py          # rewrites tests/assets/{mnli,xnli}
"""
import csv
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "tests" / "assets"

# (subject, verb past, verb base, object, place) vocabularies and the label cue words per language.
LEXICON = {
    "en": dict(
        subj=["doctor", "teacher", "farmer", "child", "pilot", "singer", "driver", "baker"],
        obj=["letter", "apple", "book", "ticket", "song", "bicycle", "window", "garden"],
        verb=[("opened", "open"), ("found", "find"), ("sold", "sell"), ("painted", "paint")],
        place=["city", "village", "market", "school"],
        premise="The {s} {v} the {o} in the {p}.",
        ent="The {s} {v} the {o}.", con="The {s} did not {b} the {o}.", neu="The {s} maybe {v} the {o} yesterday.",
    ),
    "de": dict(
        subj=["Arzt", "Lehrer", "Bauer", "Pilot", "Fahrer", "Bäcker"],
        obj=["Brief", "Apfel", "Schlüssel", "Wagen", "Garten"],
        verb=[("öffnete", "öffnete"), ("fand", "fand"), ("verkaufte", "verkaufte")],
        place=["Stadt", "Schule", "Küche"],
        premise="Der {s} {v} den {o} in der {p}.",
        ent="Der {s} {v} den {o}.", con="Der {s} {b} den {o} nicht.", neu="Der {s} {v} vielleicht gestern den {o}.",
    ),
    "ar": dict(
        subj=["الطبيب", "المعلم", "الفلاح", "الطيار", "السائق"],
        obj=["الرسالة", "التفاحة", "الكتاب", "التذكرة"],
        verb=[("فتح", "يفتح"), ("وجد", "يجد"), ("باع", "يبع")],
        place=["المدينة", "القرية", "السوق"],
        premise="{v} {s} {o} في {p}.",
        ent="{v} {s} {o}.", con="لم {b} {s} {o}.", neu="ربما {v} {s} {o} أمس.",
    ),
    "zh": dict(
        subj=["医生", "老师", "农民", "飞行员", "司机"],
        obj=["信", "苹果", "书", "车票", "自行车"],
        verb=[("打开了", "打开"), ("找到了", "找到"), ("卖了", "卖")],
        place=["城市", "村子", "市场"],
        premise="{s}在{p}{v}{o}。",
        ent="{s}{v}{o}。", con="{s}没有{b}{o}。", neu="{s}也许昨天{v}{o}。",
    ),
}
LABELS = ["entailment", "neutral", "contradiction"]
KEY = {"entailment": "ent", "neutral": "neu", "contradiction": "con"}


def make_pair(rng: random.Random, lang: str, label: str) -> tuple[str, str]:
    lex = LEXICON[lang]
    v, b = rng.choice(lex["verb"])
    slots = dict(s=rng.choice(lex["subj"]), o=rng.choice(lex["obj"]), p=rng.choice(lex["place"]), v=v, b=b)
    return lex["premise"].format(**slots), lex[KEY[label]].format(**slots)


def write_mnli(n_train: int, n_dev: int) -> None:
    out = ROOT / "mnli" / "multinli_1.0"
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    genres = ["fiction", "government", "slate", "telephone", "travel"]
    for split, n in [("train", n_train), ("dev_matched", n_dev), ("dev_mismatched", n_dev)]:
        lines = []
        for i in range(n):
            label = LABELS[i % 3]
            s1, s2 = make_pair(rng, "en", label)
            pid = f"{split[:3]}{i}"
            record = {
                "annotator_labels": [label], "genre": rng.choice(genres), "gold_label": label,
                "pairID": f"{pid}{label[0]}", "promptID": pid,
                "sentence1": s1, "sentence1_binary_parse": "", "sentence1_parse": "",
                "sentence2": s2, "sentence2_binary_parse": "", "sentence2_parse": "",
            }
            lines.append(json.dumps(record, ensure_ascii=False))
        # One unlabeled pair ("-"), as the real files have; readers must drop it.
        lines.append(json.dumps({**record, "gold_label": "-", "pairID": f"{pid}x"}, ensure_ascii=False))
        (out / f"multinli_1.0_{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


XNLI_HEADER = ["language", "gold_label", "sentence1_binary_parse", "sentence2_binary_parse", "sentence1_parse",
               "sentence2_parse", "sentence1", "sentence2", "promptID", "pairID", "genre", "label1", "label2",
               "label3", "label4", "label5", "sentence1_tokenized", "sentence2_tokenized", "match"]


def write_xnli(n_per_lang: int) -> None:
    out = ROOT / "xnli" / "XNLI-1.0"
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1)
    for split in ["dev", "test"]:
        with open(out / f"xnli.{split}.tsv", "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, lineterminator="\n")
            writer.writerow(XNLI_HEADER)
            for lang in LEXICON:
                for i in range(n_per_lang):
                    label = LABELS[i % 3]
                    s1, s2 = make_pair(rng, lang, label)
                    writer.writerow([lang, label, "", "", "", "", s1, s2, i, i, "fiction",
                                     label, label, label, label, label, s1, s2, "True"])


if __name__ == "__main__":
    write_mnli(n_train=600, n_dev=90)
    write_xnli(n_per_lang=30)
