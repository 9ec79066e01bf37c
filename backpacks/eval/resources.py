"""
Evaluation resources: where each comes from, its licence, how it is checked, and how it becomes
the layout evaluate.py reads (wordsim/..., lexicon/..., parallel/NAME.{en,fr}, xling/...).

$ python -m backpacks.eval.resources list                 # every resource, its source, licence and state
$ python -m backpacks.eval.resources fetch all            # or: fetch muse-en-fr simlex999 ...
$ python -m backpacks.eval.resources forget NAME          # start a resource over

Downloads go to a cache (env BACKPACK_CACHE, default ~/.cache/multilingual-backpacks):
CACHE/downloads/ holds the files as published, CACHE/data/ the converted layout, which evaluate.py
reads after --data_root / $ENFR_DATA. A download is resumed from its .part file (HTTP Range),
checked against its size and sha256, and moved into place only when it matches. Where no
checksum could be looked up when this registry was written (most publishers print none), the
sha256 of the first download that converts is recorded in CACHE/checksums.json and later downloads
must match it (trust on first use; `list` says which is which). A file that does not match, an HTML
page instead of the file, and a first download that does not convert are moved aside to
NAME.rejected-SHA and never used; `forget NAME` starts a resource over (its first-download checksums
are dropped and its downloads moved aside).

Working offline: fetch on a machine with internet and copy the cache directory (or pass
--data_root to a folder in the same layout). evaluate.py fetches missing resources itself unless
--no-fetch or one of OFFLINE_VARIABLES is set.
"""
import argparse
import csv
import datetime
import http.client
import io
import json
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from backpacks import cli
from backpacks.cli import CACHE_VARIABLE, OFFLINE_VARIABLES
from backpacks.eval import lexical
from backpacks.atomic import atomic_write_text, file_digest
from backpacks.tokenizer import offline_unless_hub_reachable

TIMEOUT_S = 30
CHUNK = 1 << 16


class ResourceMissing(lexical.ResourceError):
    """A resource is neither under the data root nor in the cache and could not be fetched."""


@dataclass
class Download:
    """One file as its publisher serves it. url: https://... or hf://REPO@REVISION/PATH (a Hugging
    Face dataset file; REVISION a commit, or 'main' where no commit could be pinned)."""
    url: str
    filename: str  # name under CACHE/downloads
    sha256: str = None  # None: not known in advance, recorded on first download
    size: int = None
    sha1: str = None  # a SHA-1 others published for this file (checked as well; some publish no SHA-256)


@dataclass
class Resource:
    name: str
    description: str
    licence: str
    homepage: str
    downloads: list
    outputs: list  # paths in the layout, relative to a data root
    convert: object = None  # convert(downloaded {filename: Path}, data_root Path); None: copy the single file
    note: str = ""


# -----------------------------------------------------------------------------
# conversions into the layout (each reads the published files and writes the outputs atomically)

def _member(archive, suffix):
    """Text of the one archive member whose name ends with suffix (zip or tar.gz)."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            names = [n for n in z.namelist() if n.endswith(suffix)]
            if len(names) == 1:
                return z.read(names[0]).decode("utf-8")
    else:
        with tarfile.open(archive) as t:
            names = [m for m in t.getmembers() if m.name.endswith(suffix) and m.isfile()]
            if len(names) == 1:
                return t.extractfile(names[0]).read().decode("utf-8")
    raise ResourceMissing(f"{archive}: expected one member ending in {suffix!r}, found {len(names)}")


def _write_rows(path, rows, header=None):
    text = "".join("\t".join(map(str, r)) + "\n" for r in ([header] if header else []) + list(rows))
    atomic_write_text(path, text)


def convert_muse(files, root, name, out):
    """MUSE dictionaries are 'english french' per line (space-separated): made tab-separated."""
    rows = [line.split() for line in files[name].read_text(encoding="utf-8").splitlines() if line.strip()]
    _write_rows(root / out, [r for r in rows if len(r) == 2])


def convert_simlex(files, root):
    """SimLex-999.txt: header word1 word2 POS SimLex999 ... -> `word1 word2 score` with comment lines."""
    table = list(csv.reader(io.StringIO(_member(files["SimLex-999.zip"], "SimLex-999.txt")), delimiter="\t"))
    col = table[0].index("SimLex999")
    rows = [(r[0], r[1], r[col]) for r in table[1:] if len(r) > col]
    text = "# SimLex-999 (https://fh295.github.io/simlex.html)\n# Word 1\tWord 2\tHuman (mean)\n"
    atomic_write_text(root / "wordsim/simlex999.txt", text + "".join("\t".join(r) + "\n" for r in rows))


def convert_wordsim353(files, root):
    """combined.tab of wordsim353.zip (header line first), and the similarity / relatedness splits of
    Agirre et al. 2009 as CSV `,word1,word2,similarity`."""
    lines = _member(files["wordsim353.zip"], "combined.tab").splitlines()[1:]
    text = "# WordSim-353 (http://www.cs.technion.ac.il/~gabr/resources/data/wordsim353/)\n# Word 1\tWord 2\tHuman (mean)\n"
    atomic_write_text(root / "wordsim/wordsim353.tsv", text + "".join(l + "\n" for l in lines if l.strip()))
    for part, member in (("sim", "wordsim_similarity_goldstandard.txt"), ("rel", "wordsim_relatedness_goldstandard.txt")):
        rows = [l.split("\t") for l in _member(files["ws353simrel.tar.gz"], member).splitlines() if l.strip()]
        body = "".join(f"{i},{a},{b},{s}\n" for i, (a, b, s) in enumerate(r[:3] for r in rows))
        atomic_write_text(root / f"wordsim/more/wordsim353-{part}.csv", ",word1,word2,similarity\n" + body)


def convert_simverb(files, root):
    """SimVerb-3500.txt of the authors' archive: `word1 word2 POS score relation` -> `word1 word2 score`."""
    rows = [l.split("\t") for l in _member(files["simverb-3500-data.zip"], "/SimVerb-3500.txt").splitlines() if l.strip()]
    _write_rows(root / "wordsim/simverb3500.txt", [(r[0], r[1], r[3]) for r in rows if len(r) >= 4])


def convert_multisimlex(files, root):
    """The official translation.csv + scores.csv, kept as published (evaluate.py reads them as the
    multisimlex-official-* sets) and flattened into msl_en.tsv, msl_fr.tsv and the cross-lingual
    reconstruction (lexical.read_multisimlex_official: mean of the two languages' scores, without
    the official set's step that drops pairs whose two scores differ by more than 1.2)."""
    out = root / "wordsim/multisimlex"
    for name in ("translation.csv", "scores.csv"):
        atomic_write_text(out / name, files[name].read_text(encoding="utf-8-sig"))
    for target, langs in (("msl_en.tsv", ("en",)), ("msl_fr.tsv", ("fr",)),
                          ("msl_en-fr_crossling_reconstructed.tsv", ("en", "fr"))):
        parsed = lexical.read_multisimlex_official(out / "translation.csv", out / "scores.csv", *langs)
        _write_rows(out / target, parsed.rows, header=("word1", "word2", "score"))


def convert_flores(files, root):
    """FLORES-200 devtest, English and French sides, line-aligned (1,012 sentences)."""
    for lang, code in (("en", "eng_Latn"), ("fr", "fra_Latn")):
        text = _member(files["flores200_dataset.tar.gz"], f"devtest/{code}.devtest")
        atomic_write_text(root / f"parallel/flores200-devtest.{lang}", text)


def convert_xnli(files, root):
    """XNLI-1.0 xnli.{dev,test}.tsv (all languages, labelled) -> xling/xnli/{dev,test}-{en,fr}.tsv
    in the XTREME layout `premise hypothesis [label]`. As in XTREME, test files are written without
    labels, so that the test split cannot be used for selection by accident."""
    for split in ("dev", "test"):
        table = list(csv.reader(io.StringIO(_member(files["XNLI-1.0.zip"], f"xnli.{split}.tsv")),
                                delimiter="\t", quoting=csv.QUOTE_NONE))
        head = table[0]
        lang, label, s1, s2 = (head.index(c) for c in ("language", "gold_label", "sentence1", "sentence2"))
        for code in ("en", "fr"):
            rows = [(r[s1], r[s2]) + ((r[label],) if split == "dev" else ()) for r in table[1:] if r[lang] == code]
            _write_rows(root / f"xling/xnli/{split}-{code}.tsv", rows)


def convert_pawsx(files, root):
    """PAWS-X parquet files (google/xtreme) -> xling/pawsx/{dev,test}-{en,fr}.tsv,
    `sentence1 sentence2 [label]` (test without labels, as XTREME distributes it)."""
    import pyarrow.parquet as pq  # installed with datasets

    for code in ("en", "fr"):
        for split, source in (("dev", "validation"), ("test", "test")):
            table = pq.read_table(files[f"pawsx-{code}-{source}.parquet"]).to_pydict()
            columns = [table["sentence1"], table["sentence2"]] + ([table["label"]] if split == "dev" else [])
            _write_rows(root / f"xling/pawsx/{split}-{code}.tsv", zip(*columns))


# -----------------------------------------------------------------------------
# the registry

MUSE = "https://dl.fbaipublicfiles.com/arrival/dictionaries"
XTREME = "hf://google/xtreme@54171a62f0352736e50de131e5194b941530073a"  # commit 'Add PAWS-X.en data files'

REGISTRY = {r.name: r for r in [
    Resource("muse-en-fr", "MUSE en-fr training dictionary, the 5,000 most frequent English words (Conneau et al. 2018)",
             "CC-BY-NC 4.0", "https://github.com/facebookresearch/MUSE",
             [Download(f"{MUSE}/en-fr.0-5000.txt", "en-fr.0-5000.txt")], ["lexicon/muse-en-fr.0-5000.tsv"],
             lambda f, r: convert_muse(f, r, "en-fr.0-5000.txt", "lexicon/muse-en-fr.0-5000.tsv")),
    Resource("muse-en-fr-test", "MUSE en-fr test dictionary, words ranked 5,000-6,500",
             "CC-BY-NC 4.0", "https://github.com/facebookresearch/MUSE",
             [Download(f"{MUSE}/en-fr.5000-6500.txt", "en-fr.5000-6500.txt")], ["lexicon/muse-en-fr.5000-6500.tsv"],
             lambda f, r: convert_muse(f, r, "en-fr.5000-6500.txt", "lexicon/muse-en-fr.5000-6500.tsv")),
    Resource("simlex999", "SimLex-999 English word similarity (Hill et al. 2015)",
             "no licence named by the publisher (distributed for research)", "https://fh295.github.io/simlex.html",
             [Download("https://fh295.github.io/SimLex-999.zip", "SimLex-999.zip")], ["wordsim/simlex999.txt"],
             convert_simlex),
    Resource("wordsim353", "WordSim-353 relatedness (Finkelstein et al. 2002) and its similarity / relatedness "
             "split (Agirre et al. 2009)", "no licence named by the publishers (distributed for research)",
             "http://www.cs.technion.ac.il/~gabr/resources/data/wordsim353/",
             [Download("http://www.cs.technion.ac.il/~gabr/resources/data/wordsim353/wordsim353.zip", "wordsim353.zip"),
              Download("http://alfonseca.org/pubs/ws353simrel.tar.gz", "ws353simrel.tar.gz")],
             ["wordsim/wordsim353.tsv", "wordsim/more/wordsim353-sim.csv", "wordsim/more/wordsim353-rel.csv"],
             convert_wordsim353),
    Resource("multisimlex", "Multi-SimLex English and French (Vulic et al. 2020), official two-file release",
             "CC-BY 4.0 (as the shared copy's README states; check multisimlex.com)", "https://multisimlex.com/",
             [Download("https://multisimlex.com/data/translation.csv", "translation.csv"),
              Download("https://multisimlex.com/data/scores.csv", "scores.csv")],
             ["wordsim/multisimlex/translation.csv", "wordsim/multisimlex/scores.csv", "wordsim/multisimlex/msl_en.tsv",
              "wordsim/multisimlex/msl_fr.tsv", "wordsim/multisimlex/msl_en-fr_crossling_reconstructed.tsv"],
             convert_multisimlex,
             note="the URLs other projects' download scripts use; they could not be opened from this project's "
                  "offline machines; the official cross-lingual en-fr set is not fetched (its file could not be checked), "
                  "the reconstruction from the two files stands in for it"),
    Resource("simverb3500", "SimVerb-3500 English verb similarity (Gerz et al. 2016)",
             "no licence named by the publisher (distributed for research)",
             "https://arxiv.org/abs/1608.00869",
             [Download("http://people.ds.cam.ac.uk/dsg40/paper/simverb/simverb-3500-data.zip", "simverb-3500-data.zip",
                       sha1="8c43b0a34823def29ad4c4f4d7e9d3b91acf8b8d")],
             ["wordsim/simverb3500.txt"], convert_simverb,
             note="the authors' archive at the URL gluon-nlp downloads it from, checked against the SHA-1 gluon-nlp "
                  "publishes for it (its sha256 is recorded at first download)"),
    Resource("flores200", "FLORES-200 devtest (NLLB Team 2022), English and French, 1,012 sentences",
             "CC-BY-SA 4.0", "https://github.com/facebookresearch/flores/tree/main/flores200",
             [Download("https://dl.fbaipublicfiles.com/nllb/flores200_dataset.tar.gz", "flores200_dataset.tar.gz")],
             ["parallel/flores200-devtest.en", "parallel/flores200-devtest.fr"], convert_flores),
    Resource("xnli", "XNLI 1.0 dev (2,490) and test (5,010) pairs, English and French (Conneau et al. 2018)",
             "CC-BY-NC 4.0", "https://github.com/facebookresearch/XNLI",
             [Download("https://dl.fbaipublicfiles.com/XNLI/XNLI-1.0.zip", "XNLI-1.0.zip")],
             [f"xling/xnli/{s}-{l}.tsv" for s in ("dev", "test") for l in ("en", "fr")], convert_xnli),
    Resource("pawsx", "PAWS-X dev and test (2,000 each), English and French (Yang et al. 2019), from the Hugging "
             "Face copy of XTREME", "free to use for any purpose, acknowledging Google LLC (PAWS-X licence)",
             "https://github.com/google-research-datasets/paws/tree/master/pawsx",
             [Download(f"{XTREME}/PAWS-X.en/validation-00000-of-00001.parquet", "pawsx-en-validation.parquet",
                       "266872eb7f7de8e71e72828fee40ca45bfad19bc5c46c2c8fd7cad45a51b24a1", 295597),
              Download(f"{XTREME}/PAWS-X.en/test-00000-of-00001.parquet", "pawsx-en-test.parquet",
                       "a41ee8c9fc135d5992b8013246be8a4e991ed82b4a71fac8e9d4c6c8aadd10fa", 298432),
              Download("hf://google/xtreme@main/PAWS-X.fr/validation-00000-of-00001.parquet", "pawsx-fr-validation.parquet"),
              Download("hf://google/xtreme@main/PAWS-X.fr/test-00000-of-00001.parquet", "pawsx-fr-test.parquet")],
             [f"xling/pawsx/{s}-{l}.tsv" for s in ("dev", "test") for l in ("en", "fr")], convert_pawsx,
             note="English pinned to the commit that added it (sha256 and size from its LFS pointers); the commit "
                  "that added French could not be looked up offline, so French follows main and the commit and "
                  "sha256 of the first download are recorded"),
]}


# -----------------------------------------------------------------------------
# cache and lookup

def cache_dir():
    return Path(os.environ.get(CACHE_VARIABLE) or Path.home() / ".cache" / "multilingual-backpacks")


def fetch_allowed_by_environment():
    """False when the user said to stay offline (any of OFFLINE_VARIABLES set to a true value)."""
    return not any(cli.switched_on(v) for v in OFFLINE_VARIABLES)


def resource_for(relpath):
    """The registry entry that produces relpath (a path in the layout), or None."""
    relpath = str(Path(relpath))
    return next((r for r in REGISTRY.values() if relpath in r.outputs), None)


def locate(relpath, data_root=None, fetch=False):
    """Path of a layout file: under data_root, else in the cache, else fetched into the cache when
    fetch is true and the registry knows it. ResourceMissing says where it was looked for."""
    looked = [Path(data_root) / relpath] if data_root else []
    looked.append(cache_dir() / "data" / relpath)
    for path in looked:
        if path.is_file():
            return path
    where = " or ".join(str(p) for p in looked)
    resource = resource_for(relpath)
    if resource is None:
        raise ResourceMissing(f"{relpath}: not found in {where}, and no registered resource provides it")
    if not fetch:
        raise ResourceMissing(f"{relpath}: not found in {where} (fetching is off: `python -m backpacks.eval.resources fetch "
                              f"{resource.name}` on a machine with internet, then copy {cache_dir()})")
    fetch_resource(resource)
    return looked[-1]


def file_record(path):
    """{'path', 'bytes', 'sha256'} of a file a metric used, for results.json."""
    path = Path(path)
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": file_digest(path)}


def _recorded():
    path = cache_dir() / "checksums.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _record(filename, entry):
    recorded = _recorded()
    recorded[filename] = entry
    atomic_write_text(cache_dir() / "checksums.json", json.dumps(recorded, indent=2, sort_keys=True))


# -----------------------------------------------------------------------------
# downloading

def _open(url, start):
    """urlopen with a Range header when resuming; one-line ResourceMissing when it fails."""
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        raise ResourceMissing(f"{url}: the server answered HTTP {e.code} ({e.reason}); try again later") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ResourceMissing(f"{url}: unreachable ({reason}); offline? fetch on a machine with internet and "
                              f"copy {cache_dir()}, or pass --data_root") from None


def download_url(url, dest, size=None):
    """Download url to dest, resuming from dest.part (HTTP Range), with a progress bar.
    The finished file is renamed into place; its checksum is checked by the caller."""
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.is_file() else 0
    response = _open(url, start)
    with response:
        if start and response.status != 206:  # the server ignored the Range header: start over
            start = 0
        length = response.headers.get("Content-Length")
        total = (start + int(length)) if length is not None else size
        with open(part, "ab" if start else "wb") as f, \
                tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=dest.name, leave=False) as bar:
            while True:
                try:
                    block = response.read(CHUNK)
                except (OSError, http.client.HTTPException) as e:  # connection dropped: keep the .part for the next attempt
                    raise ResourceMissing(f"{url}: transfer interrupted after {f.tell()} bytes ({e}); "
                                          f"run the same command again to resume") from None
                if not block:
                    break
                f.write(block)
                bar.update(len(block))
    if total is not None and part.stat().st_size != total:
        raise ResourceMissing(f"{url}: transfer ended after {part.stat().st_size} of {total} bytes; "
                              f"run the same command again to resume")
    os.replace(part, dest)


def download_hf(url, dest):
    """hf://REPO@REVISION/PATH through huggingface_hub (its own cache, resume and offline mode);
    returns the commit it resolved to."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    owner, rest = url[len("hf://"):].split("/", 1)
    name_revision, path = rest.split("/", 1)
    name, revision = name_revision.split("@")
    repo_id = f"{owner}/{name}"
    reachable = offline_unless_hub_reachable()  # else the hub client retries for half a minute, a line per retry
    try:
        local = Path(hf_hub_download(repo_id, path, repo_type="dataset", revision=revision))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as e:
        reason = "the Hugging Face hub cannot be reached and the file is not in its cache; fetch on a machine with " \
                 f"internet and copy {cache_dir()}, or pass --data_root" if not reachable else str(e).splitlines()[0]
        raise ResourceMissing(f"{url}: {reason}") from None
    shutil.copyfile(local, dest.with_name(dest.name + ".part"))
    os.replace(dest.with_name(dest.name + ".part"), dest)
    return local.parent.name if local.parent.parent.name == "snapshots" else revision


def check_download(download, path, sha256, expected_sha256):
    """Why the downloaded file at path (of that sha256) is not the one expected, or None."""
    with open(path, "rb") as f:
        head = f.read(512).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")) and not download.filename.endswith((".html", ".htm")):
        return "it is an HTML page, not the file (a server's error or login page?)"
    if expected_sha256 and sha256 != expected_sha256:
        return (f"sha256 {sha256} does not match the expected {expected_sha256} "
                f"({'registry' if download.sha256 else 'first download'})")
    if download.size and path.stat().st_size != download.size:
        return f"size {path.stat().st_size} is not the expected {download.size}"
    sha1 = file_digest(path, algorithm="sha1") if download.sha1 else None
    if sha1 != download.sha1:
        return f"SHA-1 {sha1} is not the published {download.sha1}"
    return None


def move_aside(path):
    """Rename a refused file to NAME.rejected-SHA beside it (never used again); returns the new path."""
    rejected = path.with_name(f"{path.name}.rejected-{file_digest(path)[:12]}")
    os.replace(path, rejected)
    return rejected


def start_over(resource):
    return (f"if a file of it recorded at first download is the bad one, `python -m backpacks.eval.resources forget "
            f"{resource.name}` starts it over")


def ensure_download(download, resource):
    """(path of a verified copy of one published file in CACHE/downloads, downloading it if needed;
    the checksums.json entry to record once the resource converts, or None when already recorded)."""
    dest = cache_dir() / "downloads" / download.filename
    dest.parent.mkdir(parents=True, exist_ok=True)
    recorded = _recorded().get(download.filename)
    expected = download.sha256 or (recorded or {}).get("sha256")
    fresh = not dest.is_file()
    revision = None
    if fresh:
        if not download.url:
            raise ResourceMissing(f"{download.filename} is not in {dest.parent} and has no download URL")
        if download.url.startswith("hf://"):
            revision = download_hf(download.url, dest)
        else:
            download_url(download.url, dest, download.size)
    actual = file_digest(dest)
    mismatch = check_download(download, dest, actual, expected)
    if mismatch:
        rejected = move_aside(dest)
        hint = f"; {start_over(resource)}" if recorded and recorded.get("source") == "first download" else ""
        raise ResourceMissing(f"{download.filename}: {mismatch}; moved aside to {rejected}, not used{hint}")
    if recorded is not None:
        return dest, None
    return dest, {"sha256": actual, "bytes": dest.stat().st_size, "url": download.url,
                  "source": "registry" if download.sha256 else "first download", "revision": revision,
                  "recorded": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


_failures = {}  # resource name -> reason, so that one evaluation does not retry a failed download per file


def fetch_resource(resource):
    """Download (or reuse) a resource's files, verify them and write its layout files into the cache."""
    if resource.name in _failures:
        raise ResourceMissing(_failures[resource.name])
    try:
        return _fetch(resource)
    except ResourceMissing as e:
        _failures[resource.name] = str(e)
        raise


def _fetch(resource):
    """Download, verify and convert; the checksums of first downloads are recorded only once the whole
    resource has converted, so a file that does not convert (an error page, a wrong file placed by hand)
    is never trusted: it is moved aside, with the outputs converted so far."""
    downloads = {d.filename: ensure_download(d, resource) for d in resource.downloads}
    root = cache_dir() / "data"
    try:
        resource.convert({name: path for name, (path, _) in downloads.items()}, root)
        missing = [p for p in resource.outputs if not (root / p).is_file()]
        if missing:
            raise ValueError(f"conversion did not produce {missing}")
    except (KeyError, ValueError, IndexError, tarfile.TarError, zipfile.BadZipFile, lexical.ResourceError) as e:
        raise ResourceMissing(f"{resource.name}: the downloaded files do not have the expected layout ({e!r}); "
                              f"{reject_unconverted(resource, downloads)}") from None
    for name, (_, entry) in downloads.items():
        if entry is not None:
            _record(name, entry)
    return [root / p for p in resource.outputs]


def reject_unconverted(resource, downloads):
    """After a failed conversion: remove its outputs and move aside the files nothing vouches for yet (no
    registry sha256, no published SHA-1, no recorded checksum); returns what to tell the user."""
    for relpath in resource.outputs:
        (cache_dir() / "data" / relpath).unlink(missing_ok=True)
    unvouched = [downloads[d.filename][0] for d in resource.downloads
                 if downloads[d.filename][1] is not None and not (d.sha256 or d.sha1)]
    moved = [str(move_aside(path)) for path in unvouched]
    if moved:
        return (f"moved aside to {', '.join(moved)} (no checksum recorded); `python -m backpacks.eval.resources fetch "
                f"{resource.name}` downloads again")
    return start_over(resource)


def forget(resource):
    """Start a resource over: drop its first-download checksums and move its downloads aside."""
    recorded = _recorded()
    for d in resource.downloads:
        if recorded.get(d.filename, {}).get("source") == "first download":
            del recorded[d.filename]
        path = cache_dir() / "downloads" / d.filename
        if path.is_file():
            print(f"{resource.name}: moved {d.filename} aside to {move_aside(path)}")
    atomic_write_text(cache_dir() / "checksums.json", json.dumps(recorded, indent=2, sort_keys=True))


# -----------------------------------------------------------------------------
# standard translation test sets through sacreBLEU's own download (and its MD5 checks)

def sacrebleu_test_sets():
    """sacreBLEU test sets that have an en-fr pair (their English and French sides are parallel)."""
    from sacrebleu.dataset import DATASETS
    return [name for name, dataset in DATASETS.items() if "en-fr" in dataset.langpairs]


def sacrebleu_pairs(name, fetch=True):
    """[(en, fr)] of a sacreBLEU test set (en-fr: English source, first French reference) and a
    record of the files. sacreBLEU downloads and caches them itself (env SACREBLEU, default ~/.sacrebleu)."""
    import sacrebleu
    from sacrebleu.dataset import DATASETS

    dataset = DATASETS[name]
    # the processed files sacreBLEU reads; private helper, but the only way to ask without downloading
    processed = [dataset._get_txt_file_path("en-fr", f) for f in dataset.fieldnames("en-fr")]
    if not fetch and not all(os.path.isfile(p) for p in processed):
        raise ResourceMissing(f"sacreBLEU test set {name} is not in {os.path.dirname(processed[0])} and fetching is "
                              f"off (run `sacrebleu -t {name} -l en-fr --echo src` on a machine with internet and "
                              f"copy that directory; env SACREBLEU points sacreBLEU at it)")
    try:
        source = sacrebleu.utils.get_source_file(name, "en-fr")
        reference = sacrebleu.utils.get_reference_files(name, "en-fr")[0]
    except SystemExit:  # sacreBLEU exits after logging an MD5 mismatch
        raise ResourceMissing(f"sacreBLEU test set {name}: the download failed its MD5 check (see sacreBLEU's message "
                              f"above)") from None
    except Exception as e:  # sacreBLEU raises URLError, tarfile errors, ... from its download
        raise ResourceMissing(f"sacreBLEU test set {name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}; "
                              f"offline? see `python -m backpacks.eval.resources --help`") from None
    en, fr = (Path(p).read_text(encoding="utf-8").splitlines() for p in (source, reference))
    if len(en) != len(fr):
        raise ResourceMissing(f"sacreBLEU test set {name}: {len(en)} source lines but {len(fr)} reference lines")
    record = {"sacrebleu_test_set": name, "langpair": "en-fr", "sacrebleu_version": sacrebleu.__version__,
              "archives": dataset.data, "archive_md5": dataset.md5,
              "source": file_record(source), "reference": file_record(reference)}
    return list(zip(en, fr)), record


# -----------------------------------------------------------------------------
# command line

def state(resource, data_root=None):
    """'present' (in data_root or the cache), or 'missing'."""
    found = all(any(p.is_file() for p in ([Path(data_root) / o] if data_root else []) + [cache_dir() / "data" / o])
                for o in resource.outputs)
    return "present" if found else "missing"


def print_list(data_root):
    recorded = _recorded()
    print(f"cache: {cache_dir()}  (env {CACHE_VARIABLE})" + (f"; data root: {data_root}" if data_root else ""))
    for r in REGISTRY.values():
        print(f"\n{r.name} [{state(r, data_root)}]: {r.description}\n  licence: {r.licence}\n  homepage: {r.homepage}")
        for d in r.downloads:
            check = (f"sha256 {d.sha256[:16]}... (registry)" if d.sha256 else
                     f"SHA-1 {d.sha1[:16]}... (published), sha256 recorded at first download" if d.sha1 else
                     f"sha256 {recorded[d.filename]['sha256'][:16]}... (recorded at first download)"
                     if d.filename in recorded else "sha256 not known yet (recorded at first download)")
            print(f"  {d.url} -> {d.filename}; {check}")
        print(f"  layout: {', '.join(r.outputs)}")
        if r.note:
            print(f"  note: {r.note}")


def main(argv=None):
    p = cli.ArgumentParser(prog="python -m backpacks.eval.resources", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every resource, its source, licence, checksum and state").add_argument(
        "--data_root", help="also look here (default: env ENFR_DATA, where a missing folder means no data)")
    for command, text in (("fetch", "download, verify and convert resources into the cache"),
                          ("forget", "start resources over: drop their first-download checksums, move their downloads aside")):
        sub.add_parser(command, help=text).add_argument("names", nargs="+", metavar="NAME",
                                                        help=f"'all' or any of: {', '.join(REGISTRY)}")
    args = p.parse_args(argv)
    if args.command == "list":
        if args.data_root:  # given: it must be there
            cli.check_directory(args.data_root, "--data_root")
        return print_list(args.data_root or os.environ.get("ENFR_DATA"))
    names = list(REGISTRY) if args.names == ["all"] else args.names
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        cli.fail(f"unknown resource(s) {unknown}; choose from all, {', '.join(REGISTRY)}")
    if args.command == "forget":
        for name in names:
            forget(REGISTRY[name])
        return
    failures = []
    for name in names:
        try:
            paths = fetch_resource(REGISTRY[name])
            print(f"{name}: ok -> {', '.join(str(p) for p in paths)}")
        except ResourceMissing as e:
            failures.append(f"{name}: {e}")
    if len(names) == 1 and failures:  # the reason is the one line
        raise SystemExit(f"error: {failures[0]}")
    for failure in failures:
        print(failure.replace(": ", ": error: ", 1), file=sys.stderr)
    if failures:
        raise SystemExit(f"error: {len(failures)} of {len(names)} resource(s) not fetched (reasons above)")


if __name__ == "__main__":
    main()
