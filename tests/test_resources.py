"""resources.py: downloads from a local HTTP server (success, resume, checksum mismatch, server
error, offline), conversions of generated files into the layout, lookup order, and the CLI."""
import hashlib
import io
import json
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from backpacks.eval import resources


class Handler(BaseHTTPRequestHandler):
    """Serves server.files {path: bytes} with HTTP Range; /error answers 500; a path in
    server.cut_once is sent only half-way the first time (the connection then closes)."""

    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        if self.path == "/error" or self.path not in server.files:
            self.send_error(500 if self.path == "/error" else 404)
            return
        body, start = server.files[self.path], 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if self.path in server.cut_once:
            server.cut_once.discard(self.path)
            self.wfile.write(body[start:start + len(body) // 2])
            self.close_connection = True
            return
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.files, httpd.cut_once, httpd.requests = {}, set(), []
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(resources.CACHE_VARIABLE, str(tmp_path / "cache"))
    monkeypatch.setattr(resources, "_failures", {})
    return tmp_path / "cache"


MUSE_TEXT = "".join(f"word{i} mot{i}\n" for i in range(5000)).encode()  # ~80 KB: several chunks


def muse_resource(url, sha256=None):
    return resources.Resource(
        "toy-muse", "toy", "CC0", "http://example", [resources.Download(url, "toy.txt", sha256)],
        ["lexicon/toy.tsv"], lambda f, r: resources.convert_muse(f, r, "toy.txt", "lexicon/toy.tsv"))


def test_fetch_verifies_records_and_converts(server, cache):
    server.files["/toy.txt"] = MUSE_TEXT
    digest = hashlib.sha256(MUSE_TEXT).hexdigest()
    [out] = resources.fetch_resource(muse_resource(server.url + "/toy.txt", digest))
    assert out == cache / "data" / "lexicon" / "toy.tsv"
    assert out.read_text().splitlines()[:2] == ["word0\tmot0", "word1\tmot1"]
    recorded = json.loads((cache / "checksums.json").read_text())["toy.txt"]
    assert recorded["sha256"] == digest and recorded["source"] == "registry" and recorded["bytes"] == len(MUSE_TEXT)
    resources.fetch_resource(muse_resource(server.url + "/toy.txt", digest))  # cached: no second request
    assert len(server.requests) == 1


def test_interrupted_download_resumes_with_range(server, cache):
    server.files["/toy.txt"] = MUSE_TEXT
    server.cut_once.add("/toy.txt")
    resource = muse_resource(server.url + "/toy.txt", hashlib.sha256(MUSE_TEXT).hexdigest())
    with pytest.raises(resources.ResourceMissing, match="run the same command again to resume"):
        resources.fetch_resource(resource)
    part = cache / "downloads" / "toy.txt.part"
    assert part.stat().st_size == len(MUSE_TEXT) // 2 and not (cache / "downloads" / "toy.txt").exists()
    resources._failures.clear()  # a new command
    resources.fetch_resource(resource)
    assert server.requests[-1] == ("/toy.txt", f"bytes={len(MUSE_TEXT) // 2}-")
    assert (cache / "downloads" / "toy.txt").read_bytes() == MUSE_TEXT and not part.exists()


def test_a_file_placed_by_hand_is_checked_and_converted_without_downloading(server, cache):
    """A publisher's server down: the file fetched some other way and put in CACHE/downloads is used."""
    (cache / "downloads").mkdir(parents=True)
    (cache / "downloads" / "toy.txt").write_bytes(MUSE_TEXT)
    [out] = resources.fetch_resource(muse_resource(server.url + "/gone.txt", hashlib.sha256(MUSE_TEXT).hexdigest()))
    assert out.read_text().startswith("word0\tmot0\n") and server.requests == []
    (cache / "downloads" / "toy.txt").write_bytes(b"a wrong copy\n")
    resources._failures.clear()
    with pytest.raises(resources.ResourceMissing, match="does not match the expected"):
        resources.fetch_resource(muse_resource(server.url + "/gone.txt", hashlib.sha256(MUSE_TEXT).hexdigest()))


def test_checksum_mismatch_moves_the_file_aside(server, cache):
    server.files["/toy.txt"] = MUSE_TEXT
    with pytest.raises(resources.ResourceMissing, match="does not match the expected 0000.*moved aside.*not used"):
        resources.fetch_resource(muse_resource(server.url + "/toy.txt", "0" * 64))
    downloads = cache / "downloads"
    assert not (downloads / "toy.txt").exists() and not (cache / "data" / "lexicon" / "toy.tsv").exists()
    [rejected] = downloads.glob("toy.txt.rejected-*")
    assert rejected.read_bytes() == MUSE_TEXT


def test_first_download_checksum_is_enforced_later(server, cache):
    """Without a registry checksum the first download's sha256 is recorded; a changed file is refused."""
    server.files["/toy.txt"] = MUSE_TEXT
    resources.fetch_resource(muse_resource(server.url + "/toy.txt"))
    assert json.loads((cache / "checksums.json").read_text())["toy.txt"]["source"] == "first download"
    (cache / "downloads" / "toy.txt").write_bytes(b"changed upstream\n")
    with pytest.raises(resources.ResourceMissing, match="first download"):
        resources.fetch_resource(muse_resource(server.url + "/toy.txt"))


def test_server_error_and_offline_are_one_line(server, cache):
    with pytest.raises(resources.ResourceMissing, match="HTTP 500") as e:
        resources.fetch_resource(muse_resource(server.url + "/error"))
    assert "\n" not in str(e.value)
    port = server.server_address[1]
    server.shutdown()
    server.server_close()  # nothing listens any more: connection refused, as when offline
    with pytest.raises(resources.ResourceMissing, match="unreachable.*offline") as e:
        resources.fetch_resource(resources.Resource("other", "", "", "", [
            resources.Download(f"http://127.0.0.1:{port}/toy.txt", "other.txt")], ["x"], None))
    assert "\n" not in str(e.value)


def test_locate_order_and_fetch_switch(server, cache, tmp_path, monkeypatch):
    server.files["/toy.txt"] = MUSE_TEXT
    monkeypatch.setitem(resources.REGISTRY, "toy-muse", muse_resource(server.url + "/toy.txt"))
    data_root = tmp_path / "root"
    with pytest.raises(resources.ResourceMissing, match="fetching is off.*resources fetch toy-muse"):
        resources.locate("lexicon/toy.tsv", data_root, fetch=False)
    assert server.requests == []
    assert resources.locate("lexicon/toy.tsv", data_root, fetch=True) == cache / "data" / "lexicon" / "toy.tsv"
    (data_root / "lexicon").mkdir(parents=True)
    (data_root / "lexicon" / "toy.tsv").write_text("a\tb\n")
    assert resources.locate("lexicon/toy.tsv", data_root, fetch=True) == data_root / "lexicon" / "toy.tsv"
    with pytest.raises(resources.ResourceMissing, match="no registered resource"):
        resources.locate("lexicon/unknown.tsv", data_root, fetch=True)


def test_offline_variables(monkeypatch):
    for name in resources.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert resources.fetch_allowed_by_environment()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not resources.fetch_allowed_by_environment()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert resources.fetch_allowed_by_environment()


# ----------------------------------------------------------------------------- conversions

def archive(kind, members):
    buffer = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(buffer, "w") as z:
            for name, text in members.items():
                z.writestr(name, text)
    else:
        with tarfile.open(fileobj=buffer, mode="w:gz") as t:
            for name, text in members.items():
                data = text.encode()
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def fetch_served(server, name, served):
    """Fetch registry resource `name` with its URLs pointed at the local server, serving `served`."""
    entry = resources.REGISTRY[name]
    downloads = [resources.Download(f"{server.url}/{d.filename}", d.filename) for d in entry.downloads]
    for filename, body in served.items():
        server.files[f"/{filename}"] = body
    return resources.fetch_resource(resources.Resource(**{**entry.__dict__, "downloads": downloads}))


def test_flores_and_xnli_conversions(server, cache):
    flores = archive("tar", {"flores200_dataset/devtest/eng_Latn.devtest": "One.\nTwo.\n",
                             "flores200_dataset/devtest/fra_Latn.devtest": "Un.\nDeux.\n",
                             "flores200_dataset/devtest/deu_Latn.devtest": "Eins.\nZwei.\n"})
    en, fr = fetch_served(server, "flores200", {"flores200_dataset.tar.gz": flores})
    assert en.read_text() == "One.\nTwo.\n" and fr.read_text() == "Un.\nDeux.\n"
    header = "language\tgold_label\tsentence1\tsentence2\tpairID\n"
    dev = header + "en\tentailment\tA man.\tA person.\t1\nfr\tentailment\tUn homme.\tUne personne.\t1\nde\tneutral\tx\ty\t1\n"
    test = header + "en\tneutral\tA \"quoted\" dog.\tAn animal.\t2\nfr\tneutral\tUn chien.\tUn animal.\t2\n"
    outputs = fetch_served(server, "xnli", {"XNLI-1.0.zip": archive("zip", {"XNLI-1.0/xnli.dev.tsv": dev,
                                                                             "XNLI-1.0/xnli.test.tsv": test})})
    text = {p.name: p.read_text() for p in outputs}
    assert text["dev-en.tsv"] == "A man.\tA person.\tentailment\n"
    assert text["dev-fr.tsv"] == "Un homme.\tUne personne.\tentailment\n"
    assert text["test-en.tsv"] == 'A "quoted" dog.\tAn animal.\n'  # test labels withheld, quotes kept


def test_multisimlex_conversion_reads_back(server, cache):
    from backpacks.eval import lexical

    translation = "ID,ENG 1,ENG 2,FRA 1,FRA 2\n1,cat,dog,chat,chien\n2,car,bus,voiture,bus\n"
    scores = "ID,ENG,FRA\n1,3.0,2.0\n2,4.0,5.0\n"
    outputs = fetch_served(server, "multisimlex", {"translation.csv": translation.encode(), "scores.csv": scores.encode()})
    by_name = {p.name: p for p in outputs}
    assert lexical.read_word_pairs(by_name["msl_fr.tsv"]).rows == [("chat", "chien", 2.0), ("voiture", "bus", 5.0)]
    cross = lexical.read_word_pairs(by_name["msl_en-fr_crossling_reconstructed.tsv"]).rows
    assert ("cat", "chien", 2.5) in cross and ("chat", "dog", 2.5) in cross and len(cross) == 4


def test_simverb_from_its_archive_checked_by_published_sha1(server, cache):
    zipped = archive("zip", {"data/SimVerb-3500.txt": "take\tremove\tV\t6.81\tSYNONYMS\n",
                             "data/SimVerb-3500-ratings.txt": "not this one\n"})
    good = resources.Download(f"{server.url}/simverb-3500-data.zip", "simverb-3500-data.zip",
                              sha1=hashlib.sha1(zipped).hexdigest())
    entry = resources.REGISTRY["simverb3500"]
    server.files["/simverb-3500-data.zip"] = zipped + b"tampered"
    with pytest.raises(resources.ResourceMissing, match="SHA-1 .* is not the published .*moved aside"):
        resources.fetch_resource(resources.Resource(**{**entry.__dict__, "downloads": [good]}))
    assert not (cache / "checksums.json").exists()  # nothing recorded from a refused file

    server.files["/simverb-3500-data.zip"] = zipped
    resources._failures.clear()  # a new command
    [out] = resources.fetch_resource(resources.Resource(**{**entry.__dict__, "downloads": [good]}))
    assert out.read_text() == "take\tremove\t6.81\n"


def test_registry_is_complete():
    for r in resources.REGISTRY.values():
        assert r.licence and r.homepage and r.outputs and r.downloads and r.convert, r.name
        assert all(d.url for d in r.downloads), r.name
        assert all(d.sha256 is None or len(d.sha256) == 64 for d in r.downloads), r.name
        assert all(d.sha1 is None or len(d.sha1) == 40 for d in r.downloads), r.name
    assert resources.resource_for("xling/pawsx/dev-fr.tsv").name == "pawsx"


def test_cli(server, cache, capsys, monkeypatch):
    resources.main(["list"])
    out = capsys.readouterr().out
    assert "flores200 [missing]" in out and "CC-BY-SA 4.0" in out and "(recorded at first download)" in out
    assert "SHA-1 8c43b0a34823def2... (published)" in out
    with pytest.raises(SystemExit, match="unknown resource"):
        resources.main(["fetch", "nonsense"])
    entry = resources.REGISTRY["simverb3500"]
    gone = resources.Download(f"{server.url}/gone.zip", "simverb-3500-data.zip")
    monkeypatch.setitem(resources.REGISTRY, "simverb3500", resources.Resource(**{**entry.__dict__, "downloads": [gone]}))
    with pytest.raises(SystemExit, match="^error: simverb3500: .*HTTP 404"):  # one resource: its reason is the line
        resources.main(["fetch", "simverb3500"])
    with pytest.raises(SystemExit, match="2 of 2 resource"):  # several: a line each, then the count
        resources.main(["fetch", "simverb3500", "simverb3500"])
    assert "simverb3500: error: " in capsys.readouterr().err


# ----------------------------------------------------------------------------- what is trusted

SIMLEX = archive("zip", {"SimLex-999/SimLex-999.txt": "word1\tword2\tPOS\tSimLex999\nold\tnew\tA\t1.58\n"})


def test_a_first_download_that_does_not_convert_is_never_trusted(server, cache):
    """A garbage first download must not become the trusted checksum that refuses the genuine file."""
    with pytest.raises(resources.ResourceMissing) as e:
        fetch_served(server, "simlex999", {"SimLex-999.zip": b"garbage placed where the archive should be"})
    assert "do not have the expected layout" in str(e.value) and "moved aside" in str(e.value)
    assert "resources fetch simlex999` downloads again" in str(e.value) and "\n" not in str(e.value)
    assert not (cache / "checksums.json").exists() and not (cache / "downloads" / "SimLex-999.zip").exists()
    assert len(list((cache / "downloads").glob("SimLex-999.zip.rejected-*"))) == 1
    resources._failures.clear()  # a new command
    [out] = fetch_served(server, "simlex999", {"SimLex-999.zip": SIMLEX})
    assert out.read_text().endswith("old\tnew\t1.58\n")
    recorded = json.loads((cache / "checksums.json").read_text())["SimLex-999.zip"]
    assert recorded["sha256"] == hashlib.sha256(SIMLEX).hexdigest()


def test_an_html_error_page_is_refused_before_conversion(server, cache):
    server.files["/toy.txt"] = b"<!DOCTYPE html>\n<html><body>503 Service Unavailable</body></html>\n"
    with pytest.raises(resources.ResourceMissing, match="an HTML page, not the file.*moved aside"):
        resources.fetch_resource(muse_resource(server.url + "/toy.txt"))
    assert not (cache / "checksums.json").exists() and not (cache / "data" / "lexicon" / "toy.tsv").exists()


def test_forget_starts_over_a_resource_whose_first_download_was_bad(server, cache, capsys):
    """A checksum recorded from a bad file (by an earlier version) refuses the genuine one: the message
    names `forget`, after which the genuine file is fetched and recorded."""
    (cache / "downloads").mkdir(parents=True)
    (cache / "checksums.json").write_text(json.dumps({"SimLex-999.zip": {"sha256": "0" * 64, "source": "first download"}}))
    with pytest.raises(resources.ResourceMissing, match="resources forget simlex999` starts it over"):
        fetch_served(server, "simlex999", {"SimLex-999.zip": SIMLEX})
    resources.main(["forget", "simlex999"])
    assert json.loads((cache / "checksums.json").read_text()) == {}
    resources._failures.clear()
    [out] = fetch_served(server, "simlex999", {"SimLex-999.zip": SIMLEX})
    assert out.is_file()
