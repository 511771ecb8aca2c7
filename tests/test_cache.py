"""The on-disk cache ($LSTMDSL_CACHE): made once, used again, made again when damaged, skipped when it
cannot be written; a damaged grammar cache never shows up as an error; a spec parsed before is read back
without lark."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import lstmdsl
from lstmdsl import cache

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("LSTMDSL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_cached_text_is_made_once_and_read_back(cache_root):
    calls = []
    make = lambda: calls.append(1) or "__global__ void k() {}\n"  # noqa: E731
    assert cache.cached_text("cuda", "key", make) == "__global__ void k() {}\n"
    assert cache.cached_text("cuda", "key", make) == "__global__ void k() {}\n"
    assert len(calls) == 1
    assert cache.cached_text("cuda", "another key", make) and len(calls) == 2


def test_a_damaged_entry_is_made_again(cache_root):
    cache.cached_text("cuda", "key", lambda: "first\nsecond\n")
    (path,) = (cache_root / "cuda").glob("*.txt")
    path.write_text(path.read_text()[:-4])  # truncated
    assert cache.cached_text("cuda", "key", lambda: "first\nsecond\n") == "first\nsecond\n"
    path.write_bytes(b"\xff\xfe\x00")  # not text at all
    assert cache.cached_text("cuda", "key", lambda: "made again") == "made again"


def test_an_unwritable_cache_is_skipped(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("LSTMDSL_CACHE", str(blocker))
    assert cache.cached_text("cuda", "key", lambda: "body") == "body"
    assert not cache.write_atomically(blocker / "x" / "y.txt", "text")


def run_check(env):
    return subprocess.run([sys.executable, "-m", "lstmdsl", "check", "peephole"], capture_output=True, text=True,
                          env=env, cwd=ROOT)


def test_the_grammar_cache_is_written_and_a_damaged_one_rebuilt(cache_root):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    assert run_check(env).returncode == 0
    (path,) = cache_root.glob("grammar-lark-*.cache")
    path.write_bytes(b"not a pickle\n" * 10)
    shutil.rmtree(cache_root / "ast")  # (else the spec's AST is read back and lark's tables are not needed)
    r = run_check(env)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert path.read_bytes().startswith(b"not a pickle") is False  # lark wrote it again
    blocker = cache_root.parent / "blocker"
    blocker.write_text("x")
    r = run_check(dict(env, LSTMDSL_CACHE=str(blocker)))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr


def test_without_a_home_directory_the_cache_goes_to_the_temporary_folder(monkeypatch):
    monkeypatch.delenv("LSTMDSL_CACHE", raising=False)

    def no_home():
        raise RuntimeError("Could not determine home directory.")
    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert "lstmdsl-cache" in str(cache.cache_dir())
    assert cache.cached_text("cuda", "no home", lambda: "body") == "body"


def test_concurrent_writers_leave_a_whole_file(cache_root):
    import threading

    bodies = [f"{k}\n" * 20000 for k in range(8)]
    threads = [threading.Thread(target=cache.write_atomically, args=(cache_root / "x.txt", b)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (cache_root / "x.txt").read_text() in bodies
    assert not list(cache_root.glob("*.tmp"))


def test_the_compile_thread_fills_the_cache_and_a_forked_child_finishes_what_it_had_not(monkeypatch):
    """nvrtc.prepare_later compiles on a thread of its own and settle() waits for it; a compile's error stays
    with its job. A child forked while a compile was unfinished runs it on a thread of its own: its settle()
    returns (it would wait for ever for the parent's thread)."""
    import queue
    import threading

    from lstmdsl.runtime import nvrtc

    monkeypatch.setattr(nvrtc, "_JOBS", {})
    monkeypatch.setattr(nvrtc, "_QUEUE", queue.Queue())
    monkeypatch.setattr(nvrtc, "_THREAD", None)
    parent, gate, done = os.getpid(), threading.Event(), []

    def prepare(source, arch):
        if source == "bad":
            raise nvrtc.CompileError("rejected")
        if os.getpid() == parent:
            gate.wait(10)  # (held in the parent until the fork has happened)
        done.append(source)

    monkeypatch.setattr(nvrtc, "prepare", prepare)
    bad = nvrtc.prepare_later("bad", "90")
    assert nvrtc.prepare_later("bad", "90") is bad and bad.done.wait(10) and isinstance(bad.error, nvrtc.CompileError)
    slow = nvrtc.prepare_later("slow", "90")
    assert not nvrtc.settle(0.05)  # (still held)
    pid = os.fork()
    if pid == 0:  # the child: its own thread finishes "slow"; the exit code says whether settle() returned
        os._exit(0 if nvrtc.settle(10) and slow.error is None and done == ["slow"] else 1)
    _, status = os.waitpid(pid, 0)
    gate.set()
    assert nvrtc.settle(10) and done == ["slow"]
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_spec_parsed_before_is_read_back_without_lark(cache_root):
    """The second process's parse and compile import no lark (syntax.py's AST cache), and read back what a
    fresh parse makes; a damaged entry is parsed again; a syntax error is never kept."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    code = ("import sys, lstmdsl; s = lstmdsl.parse('fgr'); "
            "lstmdsl.compile(s, input_size=3, hidden_size=5, schedule='no fuse gates'); print('lark' in sys.modules)")
    first, second = (subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
                     for _ in range(2))
    assert first.stdout.split() == ["True"], first.stderr
    assert second.stdout.split() == ["False"], second.stderr
    entries = sorted((cache_root / "ast").glob("*.pickle"))
    assert len(entries) == 2  # the spec and the schedule text

    from lstmdsl import parser, syntax
    from lstmdsl.errors import Source
    from lstmdsl.resources import shipped_specs

    text = shipped_specs()["fgr"].read_text()
    fresh = parser.parse_cell(Source(text, "<string>"))
    syntax._parsed.cache_clear()
    assert syntax.parse_cell(text) == fresh  # parsed here, kept
    syntax._parsed.cache_clear()
    assert syntax.parse_cell(text) == fresh  # read back from the disk
    for entry in (cache_root / "ast").glob("*.pickle"):
        entry.write_bytes(entry.read_bytes()[:-7])  # truncated: its digest no longer matches
    syntax._parsed.cache_clear()
    assert syntax.parse_cell(text) == fresh
    assert syntax.parse_cell(text, "other.cell").source.filename == "other.cell"  # (the file name is in the key)

    bad = "cell c {\n  input x\n  state h\n  h' = tanh(W x +)\n  output h'\n}"
    kept = sorted((cache_root / "ast").glob("*.pickle"))
    for _ in range(2):
        syntax._parsed.cache_clear()
        with pytest.raises(lstmdsl.SpecError, match="4:"):
            syntax.parse_cell(bad)
    assert sorted((cache_root / "ast").glob("*.pickle")) == kept


def test_the_ast_cache_refuses_what_it_did_not_write(cache_root):
    """An entry of another type under a right checksum is parsed again; a folder others may write is not
    read (unpickling runs what the file says); text and file names that are not UTF-8 (lone surrogates) are
    kept like any other."""
    from lstmdsl import syntax

    text = "cell c {\n  input x\n  state h\n  h' = tanh(W x + R h)  # caf\udce9\n  output h'\n}"
    syntax._parsed.cache_clear()
    tree = syntax.parse_cell(text, "caf\udce9.cell")
    (entry,) = (cache_root / "ast").glob("*.pickle")
    syntax._parsed.cache_clear()
    assert syntax.parse_cell(text, "caf\udce9.cell") == tree  # read back
    body = pickle.dumps(42)
    key_part = entry.read_bytes().split(b"\n", 1)[0][64:]
    entry.write_bytes(hashlib.sha256(body).hexdigest().encode() + key_part + b"\n" + body)
    syntax._parsed.cache_clear()
    assert syntax.parse_cell(text, "caf\udce9.cell") == tree  # not 42
    (cache_root / "ast").chmod(0o777)
    entry.write_bytes(b"x")
    syntax._parsed.cache_clear()
    assert syntax.parse_cell(text, "caf\udce9.cell") == tree
    assert entry.read_bytes() == b"x"  # neither read nor written there
