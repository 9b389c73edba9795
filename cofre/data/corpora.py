"""Document streams: the packaged Wikipedia sample, OpenWebText from the hub, or local .txt/.jsonl files.

Local formats: a `.txt` file holds documents separated by lines containing only `<|endoftext|>`
(without such a line the whole file is one document; each piece is stripped of surrounding
whitespace); a `.jsonl` file holds one JSON object per line with the text under `cfg.text_field`
(used verbatim); a directory means every `.txt`/`.jsonl` file below it, in sorted path order.
Whitespace-only documents are skipped everywhere. Known corpus names win over same-named paths.
"""

from __future__ import annotations

import bz2
import hashlib
import html
import importlib.util
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from cofre.errors import CofreError

if TYPE_CHECKING:
    from cofre.config import DataConfig

KNOWN_CORPORA = ("wiki-sample", "openwebtext")
OPENWEBTEXT_HUB_ID = "Skylion007/openwebtext"
WIKI_SAMPLE_FILE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
# Any edit to this module (the wiki cleaner lives here) rebuilds cached wiki-sample packs: they take seconds.
_CLEANER_DIGEST = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
_DOC_SEPARATOR = re.compile(r"^[ \t]*<\|endoftext\|>[ \t]*\r?$", re.MULTILINE)


def iter_documents(cfg: DataConfig) -> Iterator[str]:
    """Yield the corpus's documents as plain text, in a fixed order (the last ones become validation)."""
    if cfg.corpus == "wiki-sample":
        docs: Iterator[str] = _iter_wiki_sample()
    elif cfg.corpus == "openwebtext":
        docs = _iter_openwebtext()
    else:
        docs = (doc for path in local_files(cfg.corpus) for doc in _iter_file(path, cfg.text_field))
    return (doc for doc in docs if doc.strip())


def corpus_identity(cfg: DataConfig) -> dict[str, object]:
    """What the packed cache depends on: the corpus and, for files, their resolved paths, sizes and mtimes."""
    if cfg.corpus == "openwebtext":
        return {"corpus": "openwebtext", "hub_id": OPENWEBTEXT_HUB_ID, "split": "train"}
    if cfg.corpus == "wiki-sample":
        files = [wiki_sample_path()]
    else:
        files = local_files(cfg.corpus)
    stats = [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    ident: dict[str, object] = {"corpus": cfg.corpus, "files": stats}
    if cfg.corpus == "wiki-sample":
        ident["cleaner"] = _CLEANER_DIGEST
    return ident


def wiki_sample_path() -> Path:
    """The Wikipedia sample gensim ships, located without importing gensim."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise CofreError("corpus 'wiki-sample' needs the gensim package, which ships it: pip install gensim")
    path = Path(next(iter(spec.submodule_search_locations))) / WIKI_SAMPLE_FILE
    if not path.is_file():
        raise CofreError(f"corpus 'wiki-sample': the installed gensim lacks {WIKI_SAMPLE_FILE}")
    return path


def local_files(corpus: str) -> list[Path]:
    """The .txt/.jsonl files a local corpus path names, resolved and sorted."""
    path = Path(corpus).expanduser()
    if path.is_dir():
        files = sorted(p.resolve() for p in path.rglob("*") if p.suffix in (".txt", ".jsonl") and p.is_file())
        if not files:
            raise CofreError(f"corpus directory '{corpus}' contains no .txt or .jsonl files")
        return files
    if path.is_file():
        if path.suffix not in (".txt", ".jsonl"):
            raise CofreError(f"corpus file '{corpus}' must end in .txt or .jsonl")
        return [path.resolve()]
    known = ", ".join(KNOWN_CORPORA)
    raise CofreError(f"corpus '{corpus}' is neither a known corpus ({known}) nor an existing file or directory")


def _iter_file(path: Path, text_field: str) -> Iterator[str]:
    """Documents of one local .txt or .jsonl file."""
    try:
        if path.suffix == ".txt":
            yield from (doc.strip() for doc in _DOC_SEPARATOR.split(path.read_text(encoding="utf-8")))
            return
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    yield _jsonl_text(line, text_field, f"{path}:{lineno}")
    except UnicodeDecodeError as e:
        raise CofreError(f"corpus file '{path}' is not valid UTF-8 ({e.reason} at byte {e.start})") from e


def _jsonl_text(line: str, text_field: str, where: str) -> str:
    """The text field of one JSONL line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise CofreError(f"{where}: not valid JSON ({e.msg})") from e
    if not isinstance(record, dict) or text_field not in record:
        raise CofreError(f"{where}: no '{text_field}' field (set data.text_field to the key holding the text)")
    text = record[text_field]
    if not isinstance(text, str):
        raise CofreError(f"{where}: field '{text_field}' is a {type(text).__name__}, not a string")
    return text


def _iter_openwebtext() -> Iterator[str]:
    """OpenWebText's train split from the Hugging Face hub (needs network or a warm HF cache)."""
    try:
        import datasets  # lazy: heavy, and only this online path needs it
    except ImportError as e:
        raise CofreError("corpus 'openwebtext' needs the datasets package: pip install datasets") from e
    try:
        ds = datasets.load_dataset(OPENWEBTEXT_HUB_ID, split="train")
    except Exception as e:  # hub/network failures come in many types; the user needs one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CofreError(f"could not load '{OPENWEBTEXT_HUB_ID}' ({first}); offline, name a local corpus path") from e
    for batch in ds.iter(batch_size=1000):
        yield from batch["text"]


def _iter_wiki_sample() -> Iterator[str]:
    """Cleaned text of each main-namespace, non-redirect article in the packaged MediaWiki dump."""
    with bz2.open(wiki_sample_path(), "rb") as f:
        for _, elem in ET.iterparse(f, events=("end",)):
            if _local(elem.tag) != "page":
                continue
            text = _article_text(elem)
            elem.clear()  # free the parsed page: dumps are large
            if text is not None:
                yield clean_wikitext(text)


def _local(tag: str) -> str:
    """A tag name without its XML namespace."""
    return tag.rsplit("}", 1)[-1]


def _article_text(page: ET.Element) -> str | None:
    """The latest revision's wikitext of an article page; None for other namespaces and redirects."""
    children = {_local(c.tag): c for c in page}
    ns = children.get("ns")
    if (ns is not None and (ns.text or "").strip() != "0") or "redirect" in children:
        return None
    revisions = [c for c in page if _local(c.tag) == "revision"]
    if not revisions:
        return None
    latest = max(revisions, key=lambda r: next((c.text or "" for c in r if _local(c.tag) == "timestamp"), ""))
    text = next((c.text or "" for c in latest if _local(c.tag) == "text"), "")
    return None if text.lstrip().upper().startswith("#REDIRECT") else text


# Tags whose content is markup or citations rather than prose: dropped with the tag.
_DROP_ELEMENTS = re.compile(
    r"<(ref|gallery|math|timeline|imagemap|score|syntaxhighlight|source|hiero|chem)\b[^>]*?(?<!/)>.*?</\1\s*>",
    re.IGNORECASE | re.DOTALL,
)
_HIDDEN_LINK = re.compile(r"\[\[\s*(?:File|Image|Category|Media)\s*:", re.IGNORECASE)
# The few inline templates that stand for text rather than hide it; every other template is dropped.
_TEXT_TEMPLATES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\{\{\s*ndash\s*\}\}", re.IGNORECASE), "\u2013"),
    (re.compile(r"\{\{\s*snd\s*\}\}", re.IGNORECASE), " \u2013 "),
    (re.compile(r"\{\{\s*mdash\s*\}\}", re.IGNORECASE), "\u2014"),
    (re.compile(r"\{\{\s*nbsp\s*\}\}", re.IGNORECASE), " "),
    # {{convert|10|km|mi}} -> "10 km"; ranges such as {{convert|1|to|2|km}} are dropped with the rest
    (
        re.compile(
            r"\{\{\s*convert\s*\|\s*([\d.,]+)\s*\|\s*(?!to\b|and\b|-)([^|{}\s][^|{}]*?)\s*(?:\|[^{}]*)?\}\}",
            re.IGNORECASE,
        ),
        r"\1 \2",
    ),
    # {{lang|fr|texte}} and {{nihongo|Aikido|合気道|aikidō}} -> their first shown text
    (
        re.compile(
            r"\{\{\s*(?:lang\s*\|\s*[\w-]+|nihongo)\s*\|\s*((?:\[\[[^\[\]]*\]\]|[^|{}\[\]])*?)\s*(?:\|[^{}]*)?\}\}",
            re.IGNORECASE,
        ),
        r"\1",
    ),
]
_SELF_CLOSING_REF = re.compile(r"<ref\b[^>]*/>", re.IGNORECASE)  # citation reuse
# Tables open and close at the start of a line; anchoring avoids links such as [[Bracket|}]].
_TABLE_OPEN = re.compile(r"^[ \t:]*\{\|", re.MULTILINE)
_TABLE_CLOSE = re.compile(r"^[ \t]*\|\}", re.MULTILINE)
_CLEAN_STEPS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"<br\s*/?>", re.IGNORECASE), " "),
    (re.compile(r"</?[A-Za-z][^<>]*>"), ""),  # remaining tags keep their content (<sup>, <blockquote>, ...)
    (re.compile(r"\[\[([^\[\]|]*)\|([^\[\]]+)\]\]"), r"\2"),  # [[target|label]] -> label
    (re.compile(r"\[\[([^\[\]|]*)\|?\]\]"), r"\1"),  # [[target]] and the pipe trick [[target|]] -> target
    (re.compile(r"\[(?:https?:|ftp:)?//[^\s\]]+ *([^\]]*)\]"), r"\1"),  # [url label] -> label, [url] -> ''
    (re.compile(r"'{2,}"), ""),  # ''italic'', '''bold'''
    (re.compile(r"^(=+)[ \t]*(.*?)[ \t]*\1[ \t]*$", re.MULTILINE), r"\2"),  # == Heading == -> Heading
    (re.compile(r"^[*#:;]+[ \t]*", re.MULTILINE), ""),  # list and indent markers
    (re.compile(r"^-{4,}[ \t]*$", re.MULTILINE), ""),  # horizontal rule
    (re.compile(r"__[A-Z]+__"), ""),  # magic words such as __NOTOC__
]


def clean_wikitext(text: str) -> str:
    """Readable plain text from MediaWiki markup; paragraphs are kept, separated by one blank line."""
    text = re.sub(r"<!--.*?(?:-->|$)", "", text, flags=re.DOTALL)  # comments first: they may hide markup
    text = _DROP_ELEMENTS.sub("", _SELF_CLOSING_REF.sub("", text))  # before templates: <math> holds {{ }}
    for pattern, repl in _TEXT_TEMPLATES:
        text = pattern.sub(repl, text)
    text = _drop_balanced(text, re.compile(r"\{\{"), re.compile(r"\}\}"))  # templates, nested
    text = _drop_balanced(text, _TABLE_OPEN, _TABLE_CLOSE)  # tables, nested
    text = _drop_hidden_links(text)
    for pattern, repl in _CLEAN_STEPS:
        text = pattern.sub(repl, text)
    text = html.unescape(text).replace("\xa0", " ")  # after tag removal, so an escaped '<' stays text
    return re.sub(r"\n{3,}", "\n\n", "\n".join(_tidy_line(line) for line in text.splitlines())).strip()


def _tidy_line(line: str) -> str:
    """Repair what removed templates leave behind: '(; born 1947)', 'Albedo () or', 'word ,'."""
    line = re.sub(r"\(\s*(?:[,;]\s*)+", "(", line)
    line = re.sub(r"(?:\s*[,;])+\s*\)", ")", line)
    line = re.sub(r"[ \t]+", " ", re.sub(r"\(\s*\)", "", line)).strip()
    return re.sub(r" ([,.;])(?= |$)", r"\1", line)


def _drop_balanced(text: str, open_: re.Pattern[str], close_: re.Pattern[str]) -> str:
    """Remove every balanced open_ ... close_ span, nesting included; an unclosed opener stays as text."""
    tokens = sorted(
        [(m.start(), m.end(), +1) for m in open_.finditer(text)]
        + [(m.start(), m.end(), -1) for m in close_.finditer(text)]
    )
    out, depth, kept_from, outer_start = [], 0, 0, 0
    for start, end, step in tokens:
        if step > 0:
            if depth == 0:
                out.append(text[kept_from:start])
                outer_start = start
            depth += 1
        elif depth:
            depth -= 1
            if depth == 0:
                kept_from = end
    out.append(text[outer_start if depth else kept_from :])
    return "".join(out)


def _drop_hidden_links(text: str) -> str:
    """Remove [[File:..]], [[Image:..]], [[Category:..]] links, whose captions may nest other links."""
    while m := _HIDDEN_LINK.search(text):
        depth, end = 0, None
        for t in re.finditer(r"\[\[|\]\]", text[m.start() :]):
            depth += 1 if t.group() == "[[" else -1
            if depth == 0:
                end = m.start() + t.end()
                break
        if end is None:  # unclosed: drop only the opener so the loop ends
            end = m.end()
        text = text[: m.start()] + text[end:]
    return text
