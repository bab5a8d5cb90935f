"""A seeded corpus of awkward texts for tokenizer (and encoder) parity.

`tokenizer_corpus()` is deterministic for a given seed and size. Strings are generated, not
picked: each is drawn from one of the generators below (real-looking multilingual sentences,
Unicode-form games, emoji, control and zero-width characters, odd whitespace, special-token
look-alikes, numbers/URLs/code, random code points from many Unicode blocks, very long texts)
and then possibly mangled further. A fixed head of structural edge cases (empty, whitespace
only) comes first because every consumer needs them.
"""

from __future__ import annotations

import random
import unicodedata

WORDS = {
    "en": "the quick brown fox jumps over lazy dog model export runtime tokenizer sentence embedding "
          "parity graph batch padding truncation unbelievable internationalization antidisestablishment "
          "running walked children's don't it's state-of-the-art e-mail naïve coöperate café".split(),
    "fr": "élève déjà où forêt château garçon cœur français Noël ça été hôpital août maïs naïveté".split(),
    "de": "Straße Größe Übung Äpfel Öl müssen Fußgänger Schönheit Mädchen Weißbier".split(),
    "es": "niño año señor corazón canción pingüino está más mañana jalapeño".split(),
    "pt": "ação coração não pão irmã órgão avô você".split(),
    "vi": "Tiếng Việt người Hà Nội phở cảm ơn nhiều đường thương".split(),
    "tr": "İstanbul ışık Iğdır şoför çiçek ğ IİıI".split(),
    "pl": "zażółć gęślą jaźń Łódź źdźbło".split(),
    "el": "Ελληνικά καλημέρα ΣΟΦΊΑ σοφός Ἀθῆναι ὅτι".split(),
    "ru": "Привет мир ёлка Ёж съешь ещё этих мягких".split(),
    "zh": "你好 世界 中文 分词 北京大学 龍 𠀀𠀁 欢迎".split(),
    "ja": "こんにちは カタカナ ｶﾀｶﾅ 日本語 東京 ガギグ ﾊﾟﾋﾟ".split(),
    "ko": "안녕하세요 한국어 서울 ᄒᆞᆫ글".split(),
    "ar": "مرحبا العربية السلام عليكم كِتَاب ﻻ ﷺ".split(),
    "he": "שָׁלוֹם עברית ירושלים בְּרֵאשִׁית".split(),
    "hi": "नमस्ते हिन्दी भारत क़िला क्षत्रिय".split(),
    "th": "สวัสดี ภาษาไทย กรุงเทพมหานคร น้ำ".split(),
    "misc": "Ωhm Å ﬁnance ﬂow ﬀ Ǆemal ǅ ǆ ĳssel Œuvre æsir ß ẞ ﬆ ℌ ℍ ℡ ™ № ½ ² ⁴ ⅷ Ⅻ ㎏ ㍿".split(),
}
EMOJI = ["😀", "👍", "👍🏽", "👩‍💻", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷", "🇯🇵", "❤️", "✌🏿", "1️⃣", "🧑🏻‍🤝‍🧑🏿",
         "🫠", "🥹", "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "☕", "⌚", "©️"]
SPECIAL_LOOKALIKES = ["[CLS]", "[SEP]", "[UNK]", "[PAD]", "[MASK]", "##x", "##", "[cls]", "[ SEP ]", "[SEP",
                      "SEP]", "[[SEP]]", "[CLS][SEP]", "<s>", "</s>", "[unused1]", "[UNK]##", "＃＃ing"]
ODD_SPACES = [" ", "  ", "\t", "\n", "\r\n", "\r", "\xa0", "\u2028", "\u2029", "\u3000", "\u2003", "\u2009",
              "\u200a", "\u1680", "\u202f", "\u205f", "\x0b", "\x0c", "\x85", "\x1c", "\x1f"]
INVISIBLES = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u200e", "\u200f", "\u202e",
              "\u2066", "\u034f", "\ufe0f", "\x00", "\x01", "\x07", "\x1b", "\x7f", "\x9f", "\ufffd",
              "\ue000", "\U000f0001", "\U000e0041"]
COMBINING = [chr(c) for c in range(0x300, 0x370)] + ["\u0483", "\u05b0", "\u064b", "\u0670", "\u093c", "\u0e48",
                                                     "\u1ab0", "\u1dc0", "\u20d0", "\u20e3", "\u302a", "\ufe20"]
# (first, last) of Unicode blocks to sample: scripts, symbols, CJK, private use, tags, and some
# unassigned stretches. Surrogates are excluded: they cannot be encoded as UTF-8.
BLOCKS = [
    (0x0000, 0x007F), (0x0080, 0x00FF), (0x0100, 0x024F), (0x0250, 0x02FF), (0x0300, 0x036F),
    (0x0370, 0x03FF), (0x0400, 0x052F), (0x0530, 0x058F), (0x0590, 0x05FF), (0x0600, 0x06FF),
    (0x0700, 0x074F), (0x0780, 0x07BF), (0x07C0, 0x07FF), (0x0900, 0x097F), (0x0980, 0x09FF),
    (0x0B80, 0x0BFF), (0x0D80, 0x0DFF), (0x0E00, 0x0E7F), (0x0E80, 0x0EFF), (0x0F00, 0x0FFF),
    (0x1000, 0x109F), (0x10A0, 0x10FF), (0x1100, 0x11FF), (0x1200, 0x137F), (0x13A0, 0x13FF),
    (0x1400, 0x167F), (0x1680, 0x169F), (0x16A0, 0x16FF), (0x1780, 0x17FF), (0x1800, 0x18AF),
    (0x1AB0, 0x1AFF), (0x1C80, 0x1C8F), (0x1D00, 0x1DFF), (0x1E00, 0x1EFF), (0x1F00, 0x1FFF),
    (0x2000, 0x206F), (0x2070, 0x209F), (0x20A0, 0x20CF), (0x20D0, 0x20FF), (0x2100, 0x214F),
    (0x2150, 0x218F), (0x2190, 0x21FF), (0x2200, 0x22FF), (0x2300, 0x23FF), (0x2400, 0x243F),
    (0x2460, 0x24FF), (0x2500, 0x257F), (0x25A0, 0x25FF), (0x2600, 0x26FF), (0x2700, 0x27BF),
    (0x2C00, 0x2C5F), (0x2C60, 0x2C7F), (0x2E80, 0x2EFF), (0x2F00, 0x2FDF), (0x2FE0, 0x2FEF),
    (0x3000, 0x303F), (0x3040, 0x309F), (0x30A0, 0x30FF), (0x3100, 0x312F), (0x3130, 0x318F),
    (0x3200, 0x32FF), (0x3300, 0x33FF), (0x3400, 0x4DBF), (0x4DC0, 0x4DFF), (0x4E00, 0x9FFF),
    (0xA000, 0xA48F), (0xA640, 0xA69F), (0xA720, 0xA7FF), (0xA980, 0xA9DF), (0xAC00, 0xD7AF),
    (0xD7B0, 0xD7FF), (0xE000, 0xF8FF), (0xF900, 0xFAFF), (0xFB00, 0xFB4F), (0xFB50, 0xFDFF),
    (0xFE00, 0xFE0F), (0xFE20, 0xFE2F), (0xFE30, 0xFE4F), (0xFE50, 0xFE6F), (0xFE70, 0xFEFF),
    (0xFF00, 0xFFEF), (0xFFF0, 0xFFFF), (0x10000, 0x1007F), (0x10330, 0x1034F), (0x10400, 0x1044F),
    (0x12000, 0x123FF), (0x13000, 0x1342F), (0x16FE0, 0x16FFF), (0x1D100, 0x1D1FF), (0x1D400, 0x1D7FF),
    (0x1E900, 0x1E95F), (0x1F000, 0x1F02F), (0x1F100, 0x1F1FF), (0x1F300, 0x1F5FF), (0x1F600, 0x1F64F),
    (0x1F900, 0x1F9FF), (0x1FA70, 0x1FAFF), (0x20000, 0x2A6DF), (0x2A700, 0x2EBEF), (0x2F800, 0x2FA1F),
    (0x30000, 0x3134F), (0x3FFF0, 0x3FFFF), (0xE0000, 0xE007F), (0xE0100, 0xE01EF), (0xF0000, 0xF00FF),
    (0x10FF00, 0x10FFFF),
]
HEAD = ["", " ", "   ", "\t", "\n", "\r\n", "\t \n \r\n", "\u3000", "\xa0", "\u2028", "\u200b", "\x00"]


def tokenizer_corpus(seed: int = 0, size: int = 1200) -> list[str]:
    """`size` texts (>= len(HEAD)), the same list for the same seed on any platform."""
    rng = random.Random(seed)
    generators = [(_sentence, 6), (_unicode_forms, 3), (_emoji_text, 2), (_invisible_text, 2), (_odd_space_text, 2),
                  (_fullwidth_text, 1), (_lookalike_text, 2), (_technical_text, 2), (_random_code_points, 4),
                  (_long_text, 1), (_long_word, 1), (_short_piece, 2)]
    funcs, weights = zip(*generators)
    out = list(HEAD)
    while len(out) < size:
        out.append(rng.choices(funcs, weights)[0](rng))
    return out[:size]


def _words(rng: random.Random, n: int, langs=None) -> list[str]:
    langs = langs or [rng.choice(list(WORDS))] * 3 + list(WORDS)
    return [rng.choice(WORDS[rng.choice(langs)]) for _ in range(n)]


def _case(rng: random.Random, word: str) -> str:
    return rng.choice([word, word, word.upper(), word.lower(), word.title(), word.swapcase()])


def _sentence(rng: random.Random, n: int | None = None) -> str:
    n = n or rng.randint(1, 25)
    words = [_case(rng, w) for w in _words(rng, n)]
    for _ in range(rng.randint(0, 3)):
        words.insert(rng.randrange(len(words) + 1), rng.choice([",", ";", ":", "—", "–", "(", ")", "«", "»", "„",
                                                                "“", "”", "‘", "’", "…", "¿", "¡", "、", "。", "!?",
                                                                "...", "·", "‽", "§", "¶", "†", "※"]))
    sep = rng.choice([" ", " ", " ", "", "\u3000", "  "])
    return sep.join(words) + rng.choice([".", "!", "?", "", "。", "؟", "।"])


def _unicode_forms(rng: random.Random) -> str:
    text = _sentence(rng)
    form = rng.choice(["NFC", "NFD", "NFKC", "NFKD", "marks", "stack"])
    if form == "marks":  # combining marks sprinkled after random characters
        return "".join(ch + (rng.choice(COMBINING) if rng.random() < 0.3 else "") for ch in text)
    if form == "stack":  # a pile of marks on one base
        return text + rng.choice("aeiouAEIOU") + "".join(rng.choice(COMBINING) for _ in range(rng.randint(2, 12)))
    return unicodedata.normalize(form, text)


def _emoji_text(rng: random.Random) -> str:
    parts = _words(rng, rng.randint(0, 8))
    for _ in range(rng.randint(1, 5)):
        parts.insert(rng.randrange(len(parts) + 1), "".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 3))))
    return rng.choice([" ", ""]).join(parts)


def _sprinkle(rng: random.Random, text: str, pool: list[str], rate: float) -> str:
    return "".join(ch + (rng.choice(pool) if rng.random() < rate else "") for ch in text)


def _invisible_text(rng: random.Random) -> str:
    return _sprinkle(rng, _sentence(rng), INVISIBLES, rng.choice([0.05, 0.2, 0.5]))


def _odd_space_text(rng: random.Random) -> str:
    words = _words(rng, rng.randint(1, 12))
    return "".join(rng.choice(ODD_SPACES) * rng.randint(1, 3) + w for w in words) + rng.choice(ODD_SPACES + [""])


def _fullwidth_text(rng: random.Random) -> str:
    text = _sentence(rng)
    return "".join(chr(ord(ch) + 0xFEE0) if "!" <= ch <= "~" and rng.random() < 0.7 else ch for ch in text)


def _lookalike_text(rng: random.Random) -> str:
    words = _words(rng, rng.randint(0, 10))
    for _ in range(rng.randint(1, 4)):
        words.insert(rng.randrange(len(words) + 1), rng.choice(SPECIAL_LOOKALIKES))
    return rng.choice([" ", "", " ", "\n"]).join(words)


def _technical_text(rng: random.Random) -> str:
    num = lambda: rng.choice([str(rng.randint(0, 10**rng.randint(1, 12))), f"{rng.uniform(-1e6, 1e6):,.2f}",
                              f"{rng.random():.3e}", f"{rng.randint(1, 99)}%", f"${rng.randint(1, 999)}.99",
                              "٣٤٥", "१२३", "½", "10⁻³", "3×10⁸", "1st", "0x1F"])
    word = lambda: rng.choice(WORDS["en"])
    pieces = [
        f"https://www.{word()}.com/{word()}?q={word()}&id={num()}#frag",
        f"{word()}.{word()}@example.org", f"def {word()}_{word()}(x): return x**{rng.randint(2, 9)}",
        f"if (a <= b && c != d) {{ x += {num()}; }}", f"C:\\Users\\{word()}\\file_{num()}.txt",
        f"{num()} {word()} = {num()} {word()}", f"<a href=\"/{word()}\">{word()}</a>", "#hashtag @mention",
        f"{word()}_{word()}-{word()}/{word()}", "∀x∈ℝ: x²≥0 ⇒ √x² = |x|", "ISBN 978-3-16-148410-0",
        f"{rng.randint(1, 28)}/{rng.randint(1, 12)}/20{rng.randint(10, 30)} {rng.randint(0, 23)}:{rng.randint(10, 59)}",
    ]
    return " ".join(rng.sample(pieces, rng.randint(1, 4)))


def _random_code_points(rng: random.Random) -> str:
    chars = []
    for _ in range(rng.randint(1, 40)):
        lo, hi = rng.choice(BLOCKS)
        cp = rng.randint(lo, hi)
        chars.append(chr(cp))
        if rng.random() < 0.2:
            chars.append(rng.choice(" abc"))
    return "".join(chars)


def _long_text(rng: random.Random) -> str:
    """Far over a 256-token limit: many sentences, sometimes mixed with other generators."""
    parts = [_sentence(rng, rng.randint(15, 30)) for _ in range(rng.randint(10, 40))]
    if rng.random() < 0.5:
        parts.insert(rng.randrange(len(parts)), _random_code_points(rng))
    return " ".join(parts)


def _long_word(rng: random.Random) -> str:
    """A word near HF's 100-character limit for one WordPiece word (longer words become [UNK])."""
    length = rng.choice([98, 99, 100, 101, 102, rng.randint(50, 400)])
    base = rng.choice(WORDS["en"] + WORDS["fr"] + WORDS["de"] + WORDS["zh"])
    word = (base * (length // max(len(base), 1) + 1))[:length]
    return " ".join([rng.choice(WORDS["en"]), word, rng.choice(WORDS["en"])][rng.randint(0, 1):])


def _short_piece(rng: random.Random) -> str:
    pool = [rng.choice(EMOJI), rng.choice(SPECIAL_LOOKALIKES), rng.choice(ODD_SPACES), rng.choice(INVISIBLES),
            rng.choice(COMBINING), rng.choice(WORDS[rng.choice(list(WORDS))]), rng.choice("!?.,;:'\"-()[]{}<>")]
    return "".join(rng.sample(pool, rng.randint(1, 3)))
