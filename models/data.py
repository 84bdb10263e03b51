"""Code corpus, byte-level BPE tokenizer and token batches.

CodeParrot cannot be downloaded here, so the default corpus is the Python source of this
interpreter's standard library (found through `sysconfig`), split into train and validation by file.
A user corpus is a folder of files or a JSONL file with a text field (CodeParrot's is `content`).
Prepared data is cached in a folder holding the tokenizer, the token arrays and a manifest
(file list with hashes) so a run can say exactly what it trained on.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.errors import UserError

EOT = "<|endoftext|>"
VAL_PERCENT = 5  # files whose path hash falls below this percentage go to validation


class DataError(UserError, ValueError):
    """A corpus or prepared-data folder that cannot be used."""


@dataclass(frozen=True)
class Document:
    name: str  # path relative to the corpus root, or "line N" of a JSONL file
    text: str

    @property
    def is_validation(self) -> bool:
        return int(hashlib.sha1(self.name.encode()).hexdigest(), 16) % 100 < VAL_PERCENT


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def iter_folder(root: Path, pattern: str = "**/*.py") -> Iterator[Document]:
    for path in sorted(root.glob(pattern)):
        if path.is_file() and "site-packages" not in path.parts:
            text = path.read_text(encoding="utf-8", errors="replace")
            yield Document(str(path.relative_to(root)), text)


def iter_jsonl(path: Path, text_field: str) -> Iterator[Document]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                yield Document(f"line {number}", record[text_field])
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise DataError(
                    f"{path}:{number}: no text field {text_field!r} ({error})"
                ) from None


def load_documents(
    corpus: str | None, text_field: str = "content", max_files: int | None = None
) -> list[Document]:
    """Documents of a corpus: None for the standard library, a folder, or a .jsonl(.gz) file."""
    if corpus is None:
        documents = iter_folder(stdlib_root())
    else:
        path = Path(corpus)
        if path.is_dir():
            documents = iter_folder(path, "**/*")
        elif path.is_file() and ".jsonl" in path.name:
            documents = iter_jsonl(path, text_field)
        else:
            raise DataError(f"corpus {corpus!r} is neither a folder nor a .jsonl(.gz) file")
    docs = [d for d in documents if d.text.strip()]
    if max_files is not None:
        docs = docs[:max_files]
    if len(docs) < 2:
        raise DataError(f"corpus {corpus or stdlib_root()} has fewer than 2 non-empty documents")
    return docs


def split_documents(docs: list[Document]) -> tuple[list[Document], list[Document]]:
    train = [d for d in docs if not d.is_validation]
    val = [d for d in docs if d.is_validation]
    if not val:  # tiny corpora: hold out the last document so validation is never empty
        train, val = train[:-1], train[-1:]
    return train, val


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE (GPT-2's scheme) trained on the training split only."""
    from tokenizers import ByteLevelBPETokenizer

    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator(
        texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOT], show_progress=False
    )
    return tokenizer


def tokenizer_from_json(text: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_str(text)


def encode_documents(tokenizer, docs: list[Document]) -> np.ndarray:
    eot = tokenizer.token_to_id(EOT)
    ids: list[int] = []
    for encoding in tokenizer.encode_batch([d.text for d in docs]):
        ids.extend(encoding.ids)
        ids.append(eot)
    return np.asarray(ids, dtype=np.uint16 if tokenizer.get_vocab_size() < 2**16 else np.int32)


def _corpus_id(corpus: str | None, max_files: int | None) -> str:
    base = "stdlib-py" + sysconfig.get_python_version() if corpus is None else Path(corpus).name
    return base + (f"-first{max_files}" if max_files else "")


@dataclass
class PreparedData:
    folder: Path
    train: np.ndarray
    val: np.ndarray
    tokenizer_json: str
    manifest: dict

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])

    def batch(
        self, split: str, batch_size: int, length: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows: inputs (B, T) and next-token targets (B, T)."""
        data = self.train if split == "train" else self.val
        if len(data) <= length + 1:
            raise DataError(
                f"{split} split has {len(data)} tokens, fewer than one window of {length}"
            )
        starts = torch.randint(0, len(data) - length - 1, (batch_size,), generator=generator)
        rows = np.stack([data[s : s + length + 1] for s in starts.tolist()]).astype(np.int64)
        window = torch.from_numpy(rows)
        return window[:, :-1], window[:, 1:]


def prepare_data(
    cache_dir: str | os.PathLike,
    vocab_size: int,
    corpus: str | None = None,
    text_field: str = "content",
    max_files: int | None = None,
) -> PreparedData:
    """Tokenize a corpus once and cache it; later calls with the same arguments load the cache."""
    folder = Path(cache_dir) / f"{_corpus_id(corpus, max_files)}-bpe{vocab_size}"
    if not (folder / "manifest.json").exists():
        _build(folder, vocab_size, corpus, text_field, max_files)
    manifest = json.loads((folder / "manifest.json").read_text())
    return PreparedData(
        folder,
        np.load(folder / "train.npy", mmap_mode="r"),
        np.load(folder / "val.npy", mmap_mode="r"),
        (folder / "tokenizer.json").read_text(),
        manifest,
    )


def _build(folder: Path, vocab_size: int, corpus, text_field, max_files) -> None:
    docs = load_documents(corpus, text_field, max_files)
    train_docs, val_docs = split_documents(docs)
    tokenizer = train_tokenizer([d.text for d in train_docs], vocab_size)
    train, val = encode_documents(tokenizer, train_docs), encode_documents(tokenizer, val_docs)
    files = [
        {"name": d.name, "split": split, "sha256": hashlib.sha256(d.text.encode()).hexdigest()}
        for split, group in (("train", train_docs), ("val", val_docs))
        for d in group
    ]
    manifest = {
        "corpus": corpus or str(stdlib_root()),
        "text_field": text_field if corpus and ".jsonl" in corpus else None,
        "max_files": max_files,
        "split_rule": f"sha1(name) % 100 < {VAL_PERCENT} -> val",
        "vocab_size": tokenizer.get_vocab_size(),
        "requested_vocab_size": vocab_size,
        "train_tokens": int(len(train)),
        "val_tokens": int(len(val)),
        "corpus_sha256": hashlib.sha256("".join(f["sha256"] for f in files).encode()).hexdigest(),
        "files": files,
    }
    # Write into a temporary folder and rename, so an interrupted run leaves no half-made cache.
    partial = folder.with_name(folder.name + f".partial-{os.getpid()}")
    partial.mkdir(parents=True, exist_ok=True)
    np.save(partial / "train.npy", train)
    np.save(partial / "val.npy", val)
    (partial / "tokenizer.json").write_text(tokenizer.to_str())
    (partial / "manifest.json").write_text(json.dumps(manifest, indent=1))
    os.replace(partial, folder)


def data_of_checkpoint(meta: dict, vocab_size: int, cache_dir: str | os.PathLike) -> PreparedData:
    """The prepared data a checkpoint was trained on (rebuilt into the cache if missing)."""
    source = meta.get("data", {})
    corpus = source.get("corpus")
    if corpus is not None and Path(corpus).exists() and Path(corpus).samefile(stdlib_root()):
        corpus = None
    return prepare_data(
        cache_dir,
        source.get("requested_vocab_size", vocab_size),
        corpus,
        source.get("text_field") or "content",
        source.get("max_files"),
    )
