"""The README is a user's page (issue 25.5): short, its two commands the ones CI runs, and every link,
results file and test that the README and docs/ name exists."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens; a repeated
    heading gets -1, -2, ...; `#` lines inside fenced code are no headings."""
    out: set[str] = set()
    for _, line in _prose(path):
        m = re.match(r"#+\s+(.*)", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            n, unique = 0, slug
            while unique in out:
                n += 1
                unique = f"{slug}-{n}"
            out.add(unique)
    return out


def _prose(path: Path):
    """(line number, line) outside fenced code blocks."""
    fenced = False
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            yield i, line


def test_readme_is_a_short_page_whose_two_commands_are_the_ones_ci_runs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(readme) <= 250, f"README.md has {len(readme)} lines (at most 250: details go to docs/)"
    blocks = re.findall(r"```bash\n(.*?)\n```", "\n".join(readme[:15]), re.S)
    assert blocks[:2] == ['python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 -e ".[dev]" '
                          '&& tpn demo',
                          ". .venv/bin/activate && pip install --no-deps mmaction2==1.2.0 && python -m pytest -q"]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    for step in ['pip install torch==2.13.0 -e ".[dev]"', "tpn demo", "pip install --no-deps mmaction2==1.2.0",
                 "python -m pytest -q"]:
        assert step in ci, step


def test_every_relative_link_and_anchor_in_the_docs_resolves():
    bad = []
    for doc in DOCS:
        for i, line in _prose(doc):
            for link in re.findall(r"\]\(([^)\s]+)\)", line):
                if re.match(r"[a-z]+:", link):
                    continue
                path, _, frag = link.partition("#")
                target = (doc.parent / path).resolve() if path else doc
                if not target.exists():
                    bad.append(f"{doc.name}:{i}: {link} (no such file)")
                elif frag and target.suffix == ".md" and frag not in _anchors(target):
                    bad.append(f"{doc.name}:{i}: {link} (no such heading)")
    assert not bad, bad


def test_every_test_the_reliability_page_names_exists():
    text = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    defined = set()
    for f in (ROOT / "tests").glob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)", f.read_text(encoding="utf-8"), re.M))
    named = set(re.findall(r"`(test_\w+)`", text))
    assert len(named) > 50
    assert not named - defined, sorted(named - defined)
    files = set(re.findall(r"`(tests/test_\w+\.py)`", text))
    assert files and all((ROOT / f).is_file() for f in files)


def test_every_results_file_the_readme_and_benchmarks_page_name_exists():
    results = ROOT / "benchmarks" / "results"
    names = set()
    for doc in (ROOT / "README.md", ROOT / "docs" / "benchmarks.md"):
        names |= set(re.findall(r"`(?:benchmarks/results/)?([\w.-]+_(?:20\d\d-\d\d-\d\d[\w-]*|cpu_2core)(?:\.json|/))`",
                                doc.read_text(encoding="utf-8")))
    assert len(names) > 25
    missing = sorted(n for n in names if not (results / n.rstrip("/")).exists())
    assert not missing, missing
