"""Document streams: the packaged Wikipedia sample, OpenWebText from the hub, or local .txt/.jsonl files.

OpenWebText (`corpus: openwebtext`) is the Hugging Face dataset `data.hub_id`, read with `datasets`. Its main
revision still ships a loading script (openwebtext.py), which `datasets` >= 4 refuses to run; a repository whose
main revision holds one is read from the hub's Parquet export instead (branch refs/convert/parquet, files
`<hub_config>/<hub_split>/NNNN.parquet`: `plain_text/train/` for OpenWebText), in the order of its files and rows.
`data.streaming` reads those files as the documents are tokenised, without downloading the dataset first.

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
import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cofre.errors import CofreError

if TYPE_CHECKING:
    from cofre.config import DataConfig

KNOWN_CORPORA = ("wiki-sample", "openwebtext")
PARQUET_EXPORT = "refs/convert/parquet"  # the hub's Parquet conversion of every dataset, loading scripts included
WIKI_SAMPLE_FILE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
# Any edit to this module (the wiki cleaner lives here) rebuilds cached wiki-sample packs: they take seconds.
_CLEANER_DIGEST = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
_DOC_SEPARATOR = re.compile(r"^[ \t]*<\|endoftext\|>[ \t]*\r?$", re.MULTILINE)
_log = logging.getLogger(__name__)
# Failed connections, by class name so that no HTTP client need be imported: the builtins (datasets' "Couldn't
# reach", huggingface_hub's offline mode), socket's DNS error, httpx (and huggingface_hub's httpx2), requests, aiohttp.
_NETWORK_ERRORS = {"ConnectionError", "TimeoutError", "gaierror", "TransportError", "Timeout", "ClientConnectionError"}


def iter_documents(cfg: DataConfig) -> Iterator[str]:
    """Yield the corpus's documents as plain text, in a fixed order (the last ones become validation)."""
    if cfg.corpus == "wiki-sample":
        docs: Iterator[str] = _iter_wiki_sample()
    elif cfg.corpus == "openwebtext":
        docs = hub_documents(cfg)
    else:
        docs = (doc for path in local_files(cfg.corpus) for doc in _iter_file(path, cfg.text_field))
    return (doc for doc in docs if doc.strip())


def corpus_identity(cfg: DataConfig) -> dict[str, object]:
    """What the packed cache depends on: the corpus and, for files, their resolved paths, sizes and mtimes."""
    if cfg.corpus == "openwebtext":  # streaming reads the same documents in the same order: not part of it
        return {"corpus": "openwebtext", "hub_id": cfg.hub_id, "hub_revision": cfg.hub_revision,
                "hub_config": cfg.hub_config, "hub_split": cfg.hub_split}
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


@dataclass(frozen=True)
class HubSource:
    """Where `load_dataset` reads a hub corpus: a revision, and for the Parquet export the files of one split."""

    revision: str | None  # None: the main revision
    data_files: dict[str, str] | None  # the export's files of the split; None: the dataset's own configuration


def hub_source(cfg: DataConfig) -> HubSource:
    """The revision and files to read: `data.hub_revision` when set, else main, or main's Parquet export when main
    holds a loading script (which `datasets` >= 4 no longer runs)."""
    revision = cfg.hub_revision or (PARQUET_EXPORT if main_has_loading_script(cfg.hub_id) else None)
    if revision != PARQUET_EXPORT:
        return HubSource(revision, None)
    return HubSource(revision, {cfg.hub_split: f"{cfg.hub_config}/{cfg.hub_split}/*.parquet"})


def main_has_loading_script(hub_id: str) -> bool:
    """Whether the dataset's main revision holds `<name>.py`, the file `datasets` takes for a loading script."""
    import datasets
    from huggingface_hub import HfApi

    try:
        return HfApi(endpoint=datasets.config.HF_ENDPOINT).file_exists(
            hub_id, f"{hub_id.rstrip('/').rsplit('/', 1)[-1]}.py", repo_type="dataset")
    except Exception as e:  # one line for the user, whatever the hub client raised
        raise _hub_error(f"'{hub_id}'", e) from e


def hub_documents(cfg: DataConfig) -> Iterator[str]:
    """The `cfg.text_field` column of the hub dataset `cfg.hub_id` (needs the network, or a warm HF cache for a
    dataset loaded before). Streamed or downloaded, the documents come in the same order."""
    try:
        import datasets  # lazy: heavy, and only this online path needs it
    except ImportError as e:
        raise CofreError("corpus 'openwebtext' needs the datasets package: pip install datasets") from e
    source = hub_source(cfg)
    where = f"'{cfg.hub_id}'" + (f" at {source.revision}" if source.revision else "")
    _log.info("reading %s (split %s%s)", where, cfg.hub_split, ", streamed" if cfg.streaming else "")
    try:
        ds = datasets.load_dataset(cfg.hub_id, revision=source.revision, data_files=source.data_files,
                                   split=cfg.hub_split, streaming=cfg.streaming)
        if ds.column_names is not None and cfg.text_field not in ds.column_names:
            raise CofreError(f"{where} has no column '{cfg.text_field}' (columns: {', '.join(ds.column_names)}); "
                             "set data.text_field")
        for batch in ds.iter(batch_size=1000):
            yield from batch[cfg.text_field]
    except CofreError:
        raise
    except Exception as e:  # hub, network and file failures come in many types; the user needs one line
        if source.data_files is not None and isinstance(e, FileNotFoundError) and not _is_network_error(e):
            folder = f"{cfg.hub_config}/{cfg.hub_split}/"
            raise CofreError(
                f"no Parquet files under {folder} of {where}: set data.hub_config / data.hub_split to the export's "
                f"folders (the export of a dataset over 5 GB may hold only its first 5 GB, under "
                f"{cfg.hub_config}/partial-{cfg.hub_split}/)") from e
        raise _hub_error(where, e) from e


def _is_network_error(err: BaseException) -> bool:
    """Whether `err`, or an exception it was raised from, is a failed connection: DNS, refused, timed out, offline."""
    seen: BaseException | None = err
    for _ in range(10):  # the chain of __cause__ / __context__, a few links deep
        if seen is None:
            return False
        if {base.__name__ for base in type(seen).__mro__} & _NETWORK_ERRORS:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _hub_error(where: str, err: BaseException) -> CofreError:
    """One line: a network failure said as such, anything else with the library's first line."""
    first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
    if _is_network_error(err):
        return CofreError(f"network failure: could not reach the Hugging Face hub for {where} ({first}); check the "
                          f"connection (HF_ENDPOINT, HF_HUB_OFFLINE), or set data.corpus to a local copy")
    return CofreError(f"could not load {where} from the Hugging Face hub ({type(err).__name__}: {first})")


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
