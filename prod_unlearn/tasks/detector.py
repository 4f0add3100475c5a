"""The Insecure Code Detector of CyberSecEval (PyPI ``codeshield``), batched.

Its regex rules and its semgrep rules, run the way ``insecure_code_detector.analyze`` runs them
(regex on the generated code only; semgrep on prompt + generated code, keeping findings on
generated lines), but batched: one semgrep process scans a whole batch of snippets instead of one
process per snippet (~0.3 s each). Every batch carries a canary file (a ``pickle.loads`` call); if
semgrep does not flag it, or scans fewer files than it was given, or exits with an error, the scan
raises :class:`DetectorError` instead of silently reporting "secure" (semgrep >= 1.101 with
codeshield's ``--project-root /`` scans nothing and says nothing; see docs/design.md). Used by the
insecure task (tasks/insecure.py) and ``prod-unlearn scan``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

USECASE = "cyberseceval"  # codeshield's rule set for the benchmark (the other is the faster "codeshield")


# CyberSecEval / common spellings -> codeshield's Language values.
LANGUAGE_ALIASES = {
    "py": "python",
    "python3": "python",
    "js": "javascript",
    "ts": "javascript",
    "c++": "cpp",
    "cxx": "cpp",
    "cs": "csharp",
    "c#": "csharp",
    "objc": "objective_c",
    "objective-c": "objective_c",
    "rs": "rust",
    "rb": "ruby",
    "kt": "kotlin",
}


_CANARY = {"python": "import pickle\n\n\ndef _canary(blob):\n    return pickle.loads(blob)\n"}


_CANARY_ID = "unsafe-pickle-use"


class DetectorError(RuntimeError):
    """The detector could not run, or ran but demonstrably checked nothing (never 'all secure')."""


@dataclass(frozen=True)
class Finding:
    line: int  # 1-based, in the scanned snippet (context lines not counted)
    analyzer: str  # "regex" | "semgrep"
    pattern_id: str
    cwe: str
    description: str


def _codeshield():
    try:
        from codeshield.insecure_code_detector import insecure_patterns, languages, oss
        from codeshield.insecure_code_detector.analyzers import Analyzer
        from codeshield.insecure_code_detector.insecure_code_detector import LANGUAGE_ANALYZER_MAP
        from codeshield.insecure_code_detector.usecases import UseCase
    except Exception as e:  # ImportError, or oss failing to find semgrep-core
        raise DetectorError(
            f"codeshield's Insecure Code Detector is unavailable ({type(e).__name__}: {e}); "
            "install the pinned versions: pip install codeshield==1.0.1 semgrep==1.100.0"
        ) from None
    return insecure_patterns, languages, oss, Analyzer, LANGUAGE_ANALYZER_MAP, UseCase


def resolve_language(name: str):
    """A language name (python, cpp, c#, js...) -> codeshield Language; DetectorError if unknown."""
    _, languages, *_ = _codeshield()
    key = LANGUAGE_ALIASES.get(str(name).strip().lower(), str(name).strip().lower())
    try:
        return languages.Language(key)
    except ValueError:
        known = ", ".join(sorted(x.value for x in languages.Language if x.value != "language_agnostic"))
        raise DetectorError(f"language {name!r}: the detector knows {known}") from None


_REGEX_CACHE: dict = {}


def _regex_patterns(language, usecase: str):
    """codeshield's enabled regex patterns (language + language-agnostic), compiled once."""
    key = (language, usecase)
    if key not in _REGEX_CACHE:
        insecure_patterns, _, _, Analyzer, amap, UseCase = _codeshield()
        pats, seen = [], set()
        if Analyzer.REGEX in amap.get(language, []):
            for p in list(insecure_patterns.load(language, Analyzer.REGEX, UseCase(usecase))):
                if (p.pattern_id, p.rule) not in seen:
                    seen.add((p.pattern_id, p.rule))
                    pats.append((re.compile(p.rule), p))
        _REGEX_CACHE[key] = pats
    return _REGEX_CACHE[key]


def _regex_scan(code: str, language, usecase: str, all_matches: bool) -> list[Finding]:
    """codeshield's regex analyzer: first match per pattern (all with all_matches), skipping
    matches on comment/directive lines."""
    out = []
    for rx, p in _regex_patterns(language, usecase):
        for m in rx.finditer(code) if all_matches else [rx.search(code)]:
            if m is None:
                continue
            before = code[: m.start()].split("\n")
            prefix = before[-1].strip()
            if prefix and (prefix.startswith(("#", "//", "/*")) or prefix.endswith("*/")):
                continue
            out.append(Finding(len(before), "regex", p.pattern_id or p.rule, p.cwe_id, p.description))
    return out


def _semgrep_env() -> dict:
    env = dict(os.environ)
    env.setdefault("SEMGREP_ENABLE_VERSION_CHECK", "0")
    env.setdefault("SEMGREP_SEND_METRICS", "off")
    return env


def semgrep_version() -> str:
    # The installed package's version: `osemgrep --version` hands over to pysemgrep, which needs
    # pkg_resources (gone from setuptools >= 81); the scan path codeshield uses does not.
    return package_version("semgrep")


SEMGREP_MAX_BYTES = 10_000_000  # semgrep's own default is 1 MB, which a generated or vendored file can pass


def _semgrep_batch(texts: list[str], language, usecase: str, jobs: int) -> list[list[Finding]]:
    """One semgrep process over all texts (plus a canary); findings per text, lines as in the text."""
    _, languages, oss, *_ = _codeshield()
    config = oss.SEMGREP_RULE_REPO_PATH / "_generated_" / f"{language.value}_{usecase}.json"
    if not config.exists():
        config = oss.SEMGREP_RULE_REPO_PATH / language.value
    ext = languages.get_file_extension(language)
    canary = _CANARY.get(language.value)
    for i, text in enumerate(texts):  # semgrep skips bigger files silently: say so instead
        size = len(text.encode("utf-8"))
        if size > SEMGREP_MAX_BYTES:
            raise DetectorError(
                f"code #{i + 1}: {size:,} bytes, over the {SEMGREP_MAX_BYTES:,}-byte limit up to "
                f"which semgrep scans a file; split it"
            )
    with tempfile.TemporaryDirectory(prefix="prod-unlearn-icd-") as d:
        paths = []
        for i, text in enumerate(texts):
            p = Path(d) / f"s{i:06d}{ext}"
            p.write_text(text, encoding="utf-8")
            paths.append(p)
        if canary is not None:
            (Path(d) / f"canary{ext}").write_text(canary, encoding="utf-8")
        # Same command as codeshield's _semgrep_analyze, minus its `--project-root /` (the trap),
        # with the folder as the one target and a job count that suits a shared machine.
        cmd = list(oss.SEMGREP_COMMAND) + [
            str(config),
            "--jobs",
            str(jobs),
            "--max-target-bytes",
            str(SEMGREP_MAX_BYTES),
            d,
        ]
        try:
            r = subprocess.run(
                cmd, capture_output=True, text=True, env=_semgrep_env(), timeout=max(300, 2 * len(texts))
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise DetectorError(f"semgrep could not run ({type(e).__name__}: {e})") from None
        start = r.stdout.find("{")
        try:
            out = json.loads(r.stdout[start:]) if start >= 0 else None
        except json.JSONDecodeError:
            out = None
        if r.returncode != 0 or not isinstance(out, dict) or "results" not in out:
            tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
            raise DetectorError(f"semgrep failed (exit {r.returncode}): {' | '.join(tail) or 'no output'}")
        by_name: dict[str, list[Finding]] = {}
        for res in out["results"]:
            extra = res.get("extra", {})
            rid = str(res.get("check_id", "")).rsplit(".", 1)[-1]
            by_name.setdefault(Path(res.get("path", "")).name, []).append(
                Finding(
                    int(res.get("start", {}).get("line", 0)),
                    "semgrep",
                    rid,
                    extra.get("metadata", {}).get("cwe_id", ""),
                    extra.get("message", ""),
                )
            )
        scanned = out.get("paths", {}).get("scanned")
        if scanned is not None and len(scanned) < len(paths) + (canary is not None):
            raise DetectorError(
                f"semgrep {semgrep_version()} scanned {len(scanned)} of "
                f"{len(paths) + (canary is not None)} files (pin semgrep==1.100.0)"
            )
        if canary is not None and not any(f.pattern_id == _CANARY_ID for f in by_name.get(f"canary{ext}", [])):
            raise DetectorError(
                f"semgrep {semgrep_version()} did not flag the canary pickle.loads: its rules are "
                "not running (pin semgrep==1.100.0; >= 1.101 scans nothing under codeshield)"
            )
        return [by_name.get(p.name, []) for p in paths]


def scan(
    codes: Sequence[str],
    language: str = "python",
    contexts: Sequence[str | None] | None = None,
    usecase: str = USECASE,
    all_matches: bool = False,
    batch_size: int = 512,
    jobs: int = 1,
) -> list[list[Finding]]:
    """Insecure Code Detector findings for each code snippet.

    ``contexts[i]`` is code that precedes ``codes[i]`` (the prompt): semgrep sees context + code,
    so that a call split over both still parses, and only findings on the snippet's own lines
    are kept (line numbers are relative to the snippet). The regex rules see the snippet only.
    This is codeshield's ``analyze(language, code, code_before)``, batched.
    """
    lang = resolve_language(language)
    *_, Analyzer, amap, _ = _codeshield()
    contexts = list(contexts) if contexts is not None else [None] * len(codes)
    if len(contexts) != len(codes):
        raise ValueError("scan: contexts and codes differ in length")
    results = [_regex_scan(c, lang, usecase, all_matches) for c in codes]
    if Analyzer.SEMGREP not in amap.get(lang, []):
        return results
    # A snippet that starts with the newline ending its context's last line (a token-level split
    # puts "\n<indent>" in the continuation) starts on the next line: the context's last line is
    # not generated code, so findings on it are not the snippet's.
    shift = [1 if ctx and not ctx.endswith("\n") and c.startswith("\n") else 0 for ctx, c in zip(contexts, codes)]
    offsets = [(ctx.count("\n") if ctx else 0) + sh for ctx, sh in zip(contexts, shift)]
    texts = [(ctx or "") + c for ctx, c in zip(contexts, codes)]
    for s in range(0, len(texts), batch_size):
        batch = _semgrep_batch(texts[s : s + batch_size], lang, usecase, jobs)
        for i, found in enumerate(batch, s):
            n_lines = codes[i].count("\n") + 1 - shift[i]
            for f in found:
                line = f.line - offsets[i]
                if 1 <= line <= n_lines:
                    results[i].append(Finding(line + shift[i], f.analyzer, f.pattern_id, f.cwe, f.description))
    for r in results:
        r.sort(key=lambda f: (f.line, f.analyzer, f.pattern_id))
    return results


def analyze_with_codeshield(code: str, language: str = "python", context: str | None = None) -> list[Finding]:
    """The unbatched reference: codeshield's own ``insecure_code_detector.analyze`` (one semgrep
    process per call). Used to check that :func:`scan` agrees with it."""
    import asyncio

    from codeshield.insecure_code_detector import insecure_code_detector

    _, _, _, _, _, UseCase = _codeshield()
    issues = asyncio.run(
        insecure_code_detector.analyze(resolve_language(language), code, context, usecase=UseCase(USECASE))
    )
    off = context.count("\n") if context else 0
    return sorted(
        (
            Finding(
                (i.line or 0) - (off if str(i.analyzer) == "semgrep" else 0),
                str(i.analyzer),
                str(i.pattern_id or i.rule).rsplit(".", 1)[-1],
                i.cwe_id or "",
                i.description,
            )
            for i in issues
        ),
        key=lambda f: (f.line, f.analyzer, f.pattern_id),
    )


def package_version(pkg: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return "missing"
