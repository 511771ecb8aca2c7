"""Regenerate docs/language.md from docs/language.md.in by running every example through the tool.

    python3 docs/build_language.py
    python3 docs/build_language.py --check    # exit 1 if docs/language.md is not what the .in file makes

Every spec, command output and error message in the language reference comes from a real run of the
checkout's lstmdsl, so the reference cannot drift from the code: run this after changing the language.

Markers in the .in file (each on its own line):
  <<<spec FILE      text up to >>> is written to FILE and shown in a ```text block (it must check cleanly)
  <<<hidden FILE    text up to >>> is written to FILE, not shown
  <<<file FILE      shows a file written earlier
  <<<$ CMD          run CMD (shell, in the scratch folder), show "$ CMD" and its output (stdout+stderr)
  <<<$! CMD         same, the command must fail
  <<<errors         cases separated by lines '---', each a spec written to my.cell and checked;
                    shows the diagnostics only, cases separated by blank lines; each must fail
                    (a case starting with '#!first' shows only its first diagnostic)
  <<<python         code up to >>> shown as ```python, then its output as ```text
"""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GEN = tempfile.mkdtemp(prefix="lstmdsl-docs-")
os.makedirs(os.path.join(GEN, "bin"))
with open(os.path.join(GEN, "bin", "lstmdsl"), "w") as f:
    f.write(f'#!/bin/bash\nexec {sys.executable} -m lstmdsl "$@"\n')
os.chmod(os.path.join(GEN, "bin", "lstmdsl"), 0o755)
ENV = dict(os.environ, PATH=GEN + "/bin:" + os.environ["PATH"], PYTHONPATH=str(ROOT), COLUMNS="100")


def sh(cmd, must_fail=None):
    p = subprocess.run(cmd, shell=True, cwd=GEN, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = p.stdout.rstrip("\n")
    if "internal error" in out or "Traceback" in out:
        sys.exit(f"internal error from {cmd!r}:\n{out}")
    if must_fail is True and p.returncode == 0:
        sys.exit(f"expected failure: {cmd!r}:\n{out}")
    if must_fail is False and p.returncode != 0:
        sys.exit(f"expected success: {cmd!r} (rc {p.returncode}):\n{out}")
    return out, p.returncode

def block(lang, text):
    return [f"```{lang}", text, "```"]

src = (ROOT / "docs" / "language.md.in").read_text().split("\n")
out, i = [], 0
while i < len(src):
    line = src[i]
    if not line.startswith("<<<"):
        out.append(line); i += 1; continue
    head = line[3:]
    body = []
    if head.startswith(("spec ", "hidden ", "errors", "python")):
        i += 1
        while src[i] != ">>>":
            body.append(src[i]); i += 1
    i += 1
    if head.startswith(("spec ", "hidden ")):
        kind, name = head.split(" ", 1)
        open(os.path.join(GEN, name), "w").write("\n".join(body) + "\n")
        if kind == "spec":
            text, rc = sh(f"lstmdsl check {name}", must_fail=False)
            if "warning" in text:
                sys.exit(f"warnings in {name}:\n{text}")
            out += block("text", "\n".join(body))
    elif head.startswith("file "):
        name = head[5:].strip()  # written by an earlier marker, or a file of the repository (specs/...)
        path = Path(GEN, name) if Path(GEN, name).exists() else ROOT / name
        out += block("text", path.read_text().rstrip("\n"))
    elif head.startswith("$"):
        must_fail = head.startswith("$!")
        cmd = head[2:].strip() if must_fail else head[1:].strip()
        text, rc = sh(cmd, must_fail)
        out += block("text", f"$ {cmd}\n{text}")
    elif head.startswith("errors"):
        cases, cur = [], []
        for b in body:
            if b == "---":
                cases.append(cur); cur = []
            else:
                cur.append(b)
        cases.append(cur)
        texts = []
        for c in cases:
            first = bool(c) and c[0] == "#!first"
            if first:
                c = c[1:]
            open(os.path.join(GEN, "my.cell"), "w").write("\n".join(c) + "\n")
            text, rc = sh("lstmdsl check my.cell", must_fail=True)
            if first:
                lines = text.split("\n")
                cut = next((k for k in range(1, len(lines)) if lines[k].startswith("my.cell:")), len(lines))
                text = "\n".join(lines[:cut])
            texts.append(text)
        out += block("text", "\n\n".join(texts))
    elif head.startswith("python"):
        code = "\n".join(body)
        open(os.path.join(GEN, "snippet.py"), "w").write(code + "\n")
        text, rc = sh(f"{sys.executable} snippet.py", must_fail=False)
        out += block("python", code) + block("text", text)
    else:
        sys.exit(f"bad marker {line!r}")
text = "\n".join(out).rstrip("\n") + "\n"
if "--check" in sys.argv[1:]:
    if (ROOT / "docs" / "language.md").read_text() != text:
        sys.exit("docs/language.md is not what docs/language.md.in makes: edit the .in file and run "
                 "python3 docs/build_language.py")
    print("docs/language.md is what docs/language.md.in makes")
else:
    (ROOT / "docs" / "language.md").write_text(text)
    print(f"wrote docs/language.md ({len(out)} blocks and lines)")
