"""Data Docs: the pipeline's verdict on each page, every batch kept, and pages that work offline."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import great_expectations
import pytest
from test_validation import NOW, _frame, user_row, users_clean

from inbo.errors import ValidationFailed
from inbo.lake import Lake
from inbo.schemas import USERS
from inbo.settings import Settings
from validation import validate
from validation.docs import ASSETS, IMAGES, REMOTE, STATIC, Verdict, record

TEMPLATES = Path(great_expectations.__file__).parent / "render" / "view" / "templates"
BATCH, LATER = "20261126T0000Z", "20261127T0000Z"


def users_with_one_bad_row() -> Any:
    """Four users, one with a null id: GE fails the suite, the pipeline may still pass it."""
    result = validate(
        _frame([*users_clean(), user_row(user_id=None)], USERS.names), "users", now=NOW
    )
    assert not result.success
    assert len(result.bad) == 1
    return result


def kept(stores: Path, suite: str) -> dict[str, dict[str, Any]]:
    """The validation history of `suite`: each stored result by its run name (the batch)."""
    files = (stores / "uncommitted" / "validations" / suite).rglob("*.json")
    results = [json.loads(file.read_text()) for file in files]
    return {result["meta"]["run_id"]["run_name"]: result for result in results}


def status(page: Path) -> str:
    """The verdict the page shows in its overview."""
    found = re.search(r"Status:</span>\s*<i [^>]*></i>\s*(\w+)", page.read_text())
    assert found, page
    return found[1]


def index_rows(site: Path) -> list[str]:
    """The validation pages the index's results table links to."""
    return re.findall(
        r"'_table_row_link_path': '(validations/[^']+)'", (site / "index.html").read_text()
    )


def test_the_kept_result_has_the_pipelines_verdict_and_every_batch_stays(tmp_path: Path) -> None:
    stores, site = tmp_path / "gx", tmp_path / "docs"
    result = users_with_one_bad_row()
    within = Verdict(BATCH, "passed", bad=1, total=200, threshold=0.01)
    above = Verdict(LATER, "held", bad=3, total=200, threshold=0.01)

    passed = record([(result, within)], NOW, stores, site)["users"]
    held = record([(result, above)], NOW + timedelta(days=1), stores, site)["users"]
    record([(result, within)], NOW, stores, site)  # a rerun of the first batch replaces its page

    history = kept(stores, "users")
    assert {batch: r["success"] for batch, r in history.items()} == {BATCH: True, LATER: False}
    for r in history.values():  # GE's own findings stay on the page
        assert r["statistics"]["unsuccessful_expectations"] == 1
    markers = history[BATCH]["meta"]["batch_markers"]
    assert markers["rows quarantined (ingest and validate)"] == "1 of 200"
    assert markers["bad-row share"] == "0.50%"
    assert (status(passed), status(held)) == ("Succeeded", "Failed")
    assert sorted(index_rows(site)) == sorted(
        p.relative_to(site).as_posix() for p in (passed, held)
    )


def test_kept_results_hold_samples_not_every_failing_row(tmp_path: Path) -> None:
    result = users_with_one_bad_row()

    record([(result, Verdict(BATCH, "passed", 1, 200, 0.01))], NOW, tmp_path / "gx", tmp_path / "d")

    (stored,) = kept(tmp_path / "gx", "users").values()
    (null_check,) = [r for r in stored["results"] if not r["success"]]
    assert null_check["result"]["unexpected_count"] == 1
    assert "unexpected_index_list" not in null_check["result"]
    assert "partial_unexpected_index_list" in null_check["result"]


def test_pages_load_nothing_from_the_network(tmp_path: Path) -> None:
    site = tmp_path / "docs"

    record(
        [(users_with_one_bad_row(), Verdict(BATCH, "passed", 1, 200, 0.01))], NOW, tmp_path, site
    )

    pages = list(site.rglob("*.html"))
    assert len(pages) == 3  # the index, the suite, tonight's result
    for page in pages:
        html = page.read_text()
        assert REMOTE.findall(html) == [], page
        assert IMAGES not in html, page
        local = re.findall(r'<(?:script|link|img)\b[^>]*?\b(?:src|href)="([^"#]+)"', html)
        vendored = {ref.split("static/vendor/")[1] for ref in local if "static/vendor/" in ref}
        assert vendored == set(ASSETS.values()), page  # every page loads every copy
        for ref in local:
            assert (page.parent / ref.split("?")[0]).resolve().is_file(), (page, ref)
    fonts = site / "static" / "vendor" / "fontawesome" / "css"
    for ref in re.findall(r"url\(([^)]+)\)", (fonts / "all.min.css").read_text()):
        assert (fonts / ref).resolve().is_file(), ref


def test_every_file_ges_templates_load_has_its_copy() -> None:
    """Fails after a great_expectations upgrade that loads a new file: vendor it (static/README)."""
    loaded: dict[str, str | None] = {}
    for template in TEMPLATES.glob("*.j2"):
        for tag in re.findall(r"<(?:script|link)\b[^>]*>", template.read_text()):
            url = re.search(r'(?:src|href)="(https?://[^"]+)"', tag)
            if url:
                sri = re.search(r'integrity="sha384-([^"]+)"', tag)
                loaded[url[1]] = sri[1] if sri else None

    assert set(loaded) == set(ASSETS)
    for url, sri in loaded.items():
        copy = STATIC / ASSETS[url]
        assert copy.is_file(), copy
        if sri:  # the copy is the very file GE pins
            assert base64.b64encode(hashlib.sha384(copy.read_bytes()).digest()).decode() == sri


def test_recording_stays_quiet(tmp_path: Path, caplog: Any, capfd: Any) -> None:
    result = users_with_one_bad_row()
    capfd.readouterr()
    caplog.set_level(logging.DEBUG)

    record([(result, Verdict(BATCH, "passed", 1, 200, 0.01))], NOW, tmp_path, tmp_path / "d")

    assert not [r for r in caplog.records if r.name.startswith("great_expectations")]
    assert capfd.readouterr() == ("", "")


# --- the nightly's validate step: the page agrees with the pipeline at its threshold ---


@pytest.mark.parametrize(("bad_rows", "passes"), [(134, True), (135, False)])
def test_data_docs_say_what_the_pipeline_did(world: Settings, bad_rows: int, passes: bool) -> None:
    """test_ingest's threshold case: half the bad rows fail at ingest, half at validation, so GE
    sees 0.5% of user_events fail either way; the pipeline passes 0.994% and holds 1.001%."""
    from test_ingest import B1, KEY1, insert, interaction

    from pipelines.ingest import ingest
    from pipelines.validate import history_dirs, read_report, validate_batch

    insert(
        world,
        "experience_interactions",
        *[interaction(user_id=99_999) for _ in range(bad_rows // 2)],
        *[interaction(dwell_ms="abc") for _ in range(bad_rows - bad_rows // 2)],
    )
    ingest(B1, world)
    if passes:
        validate_batch(B1, world)
    else:
        with pytest.raises(ValidationFailed):
            validate_batch(B1, world)

    stores, site = history_dirs(world)
    report = read_report(Lake(world.lake), KEY1)
    assert report.status == ("passed" if passes else "held")
    events = kept(stores, "user_events")[KEY1]
    assert events["success"] is passes
    assert events["statistics"]["unsuccessful_expectations"] >= 1  # GE alone would fail it
    page = Path(report.data_docs["user_events"])
    assert status(page) == ("Succeeded" if passes else "Failed")
    assert status(Path(report.data_docs["users"])) == "Succeeded"  # within, in a held batch too
    assert len(index_rows(site)) == 3


def test_each_batch_adds_to_the_history(world: Settings) -> None:
    from test_ingest import B1, B2, KEY1, KEY2, run_batch

    from pipelines.validate import history_dirs

    run_batch(world, B1)
    run_batch(world, B2)
    run_batch(world, B1)

    stores, site = history_dirs(world)
    for suite in ("users", "items", "user_events"):
        assert set(kept(stores, suite)) == {KEY1, KEY2}
    rows = index_rows(site)
    assert len(rows) == 6
    assert all((site / row).is_file() for row in rows)
    assert site == world.reports_dir / "data_docs"
