"""Language tables for XTREME and XTREME-R (google-research/xtreme evaluate.py), one flat dict each."""

_T = tuple

XTREME_LANGUAGES: dict[str, tuple[str, ...]] = {
    "xnli": _T("ar bg de el en es fr hi ru sw th tr ur vi zh".split()),
    "pawsx": _T("de en es fr ja ko zh".split()),
    "udpos": _T("af ar bg de el en es et eu fa fi fr he hi hu id it ja kk ko mr nl pt ru ta te th tl tr ur vi "
                "yo zh".split()),
    "panx": _T("af ar bg bn de el en es et eu fa fi fr he hi hu id it ja jv ka kk ko ml mr ms my nl pt ru sw ta "
               "te th tl tr ur vi yo zh".split()),
    "xquad": _T("ar de el en es hi ru th tr vi zh".split()),
    "mlqa": _T("ar de en es hi vi zh".split()),
    "tydiqa": _T("ar bn en fi id ko ru sw te".split()),
    "bucc2018": _T("de fr ru zh".split()),
    "tatoeba": _T("af ar bg bn de el es et eu fa fi fr he hi hu id it ja jv ka kk ko ml mr nl pt ru sw ta te th tl "
                  "tr ur vi zh".split()),
}

XTREME_R_LANGUAGES: dict[str, tuple[str, ...]] = {
    "xnli": XTREME_LANGUAGES["xnli"],
    "xcopa": _T("et ht id it qu sw ta th tr vi zh".split()),
    "udpos": XTREME_LANGUAGES["udpos"] + _T("lt pl uk wo ro".split()),
    "panx": XTREME_LANGUAGES["panx"] + _T("qu pl uk az lt pa gu ro".split()),
    "xquad": XTREME_LANGUAGES["xquad"] + ("ro",),
    "mlqa": XTREME_LANGUAGES["mlqa"],
    "tydiqa": XTREME_LANGUAGES["tydiqa"],
    "tatoeba": XTREME_LANGUAGES["tatoeba"] + _T("az lt pl uk ro".split()),
    "mewslix": _T("ar de en es fa ja pl ro ta tr uk".split()),
    "lareqa": XTREME_LANGUAGES["xquad"],  # XQuAD-R: the 11 original XQuAD languages (no ro)
}

# Tatoeba files and hub configs use ISO 639-3 codes.
ISO639_3: dict[str, str] = {
    "af": "afr", "ar": "ara", "az": "aze", "bg": "bul", "bn": "ben", "de": "deu", "el": "ell", "en": "eng",
    "es": "spa", "et": "est", "eu": "eus", "fa": "pes", "fi": "fin", "fr": "fra", "he": "heb", "hi": "hin",
    "hu": "hun", "id": "ind", "it": "ita", "ja": "jpn", "jv": "jav", "ka": "kat", "kk": "kaz", "ko": "kor",
    "lt": "lit", "ml": "mal", "mr": "mar", "nl": "nld", "pl": "pol", "pt": "por", "ro": "ron", "ru": "rus",
    "sw": "swh", "ta": "tam", "te": "tel", "th": "tha", "tl": "tgl", "tr": "tur", "uk": "ukr", "ur": "urd",
    "vi": "vie", "zh": "cmn",
}

# UD-POS hub configs (xtreme "udpos.<Name>") use English language names.
LANGUAGE_NAMES: dict[str, str] = {
    "af": "Afrikaans", "ar": "Arabic", "bg": "Bulgarian", "bn": "Bengali", "de": "German", "el": "Greek",
    "en": "English", "es": "Spanish", "et": "Estonian", "eu": "Basque", "fa": "Persian", "fi": "Finnish",
    "fr": "French", "he": "Hebrew", "hi": "Hindi", "hu": "Hungarian", "id": "Indonesian", "it": "Italian",
    "ja": "Japanese", "jv": "Javanese", "ka": "Georgian", "kk": "Kazakh", "ko": "Korean", "lt": "Lithuanian",
    "ml": "Malayalam", "mr": "Marathi", "ms": "Malay", "my": "Burmese", "nl": "Dutch", "pl": "Polish",
    "pt": "Portuguese", "qu": "Quechua", "ro": "Romanian", "ru": "Russian", "sw": "Swahili", "ta": "Tamil",
    "te": "Telugu", "th": "Thai", "tl": "Tagalog", "tr": "Turkish", "uk": "Ukrainian", "ur": "Urdu",
    "vi": "Vietnamese", "wo": "Wolof", "yo": "Yoruba", "zh": "Chinese",
}

# Script and family per language, for grouping gains in per-language analyses.
SCRIPT: dict[str, str] = {
    "ar": "Arabic", "fa": "Arabic", "ur": "Arabic", "he": "Hebrew", "bg": "Cyrillic", "ru": "Cyrillic",
    "kk": "Cyrillic", "uk": "Cyrillic", "el": "Greek", "hi": "Devanagari", "mr": "Devanagari", "bn": "Bengali",
    "ta": "Tamil", "te": "Telugu", "ml": "Malayalam", "th": "Thai", "ka": "Georgian", "my": "Myanmar",
    "ja": "Japanese", "zh": "Han", "ko": "Hangul", "pa": "Gurmukhi", "gu": "Gujarati",
}  # every other language here is written in Latin script


def script(lang: str) -> str:
    return SCRIPT.get(lang, "Latin")
