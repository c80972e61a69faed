"""The golden SQL files (docs/reference/sql/) are exactly what the store builds today, for every
dialect: a change to a statement shows up in review as a change to those files."""

from __future__ import annotations

import difflib

from tests.integration.golden_sql import GOLDEN_DIR, REGENERATE, golden_files


def test_golden_sql_files_match_the_statements_the_store_builds() -> None:
    problems = []
    for name, text in golden_files().items():
        path = GOLDEN_DIR / name
        if not path.is_file():
            problems.append(f"{path} is missing")
            continue
        stored = path.read_text()
        if stored != text:
            diff = "".join(list(difflib.unified_diff(
                stored.splitlines(keepends=True), text.splitlines(keepends=True),
                fromfile=f"{name} (committed)", tofile=f"{name} (built now)"))[:80])
            problems.append(diff)
    assert not problems, (f"the golden SQL is out of date; regenerate it with `{REGENERATE}` "
                          "and review the diff:\n" + "\n".join(problems))


def test_golden_sql_covers_the_hot_statements() -> None:
    files = golden_files()
    assert set(files) == {"sqlite.sql", "postgresql.sql", "cockroachdb.sql"}
    for name, text in files.items():
        for method in ("claim", "commit", "commit_in", "insert_workflow", "insert_event",
                       "renew_leases", "settle_waiting"):
            assert f"-- name: {method}#1\n" in text, f"{name} lacks {method}"
    assert "FOR UPDATE SKIP LOCKED" in files["postgresql.sql"]
    assert "FOR UPDATE SKIP LOCKED" not in files["sqlite.sql"]
