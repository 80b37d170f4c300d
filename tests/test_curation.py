"""Late-class thresholds, audit and relabel (siamindex/curation.py, through Index and the CLI)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import schemas
from click.testing import CliRunner
from PIL import Image
from schemas import assert_schema

from siamindex import curation
from siamindex.cli import cli
from siamindex.defaults import LATE_CLASS_MIN_MEMBERS
from siamindex.errors import DataError
from siamindex.evaluation import calibrate_class
from siamindex.index import Index


def test_a_class_threshold_falls_between_its_members_and_the_rest():
    rng = np.random.default_rng(0)
    near = rng.normal(0, 0.05, (40, 4)).astype(np.float32)  # members: spread about 0.1
    far = (rng.normal(0, 0.05, (400, 4)) + [2, 0, 0, 0]).astype(np.float32)  # the rest: 2 away
    stored = np.concatenate([near, far])
    labels = np.array([1] * 40 + [0] * 400)
    threshold = calibrate_class(stored, labels, 1, np.random.default_rng(0), support=3)
    assert 0.1 < threshold < 1.9
    # Too few members to calibrate, or no other class: none.
    few = labels.copy()
    few[LATE_CLASS_MIN_MEMBERS - 1 : 40] = 0
    assert calibrate_class(stored, few, 1, np.random.default_rng(0)) is None
    assert calibrate_class(near, np.ones(40, int), 1, np.random.default_rng(0)) is None


def sevens(mnist_test, count, start=0):
    """Test-split 7s that the small index does not store (its test rows are the first 300)."""
    rows = np.flatnonzero(mnist_test.labels == 7)
    return mnist_test.images[rows[rows >= 300][start : start + count]]


def test_a_late_class_is_judged_by_its_own_threshold_recalibrated_on_every_change(
    fake_index, mnist_test, fake_encoder
):
    few = fake_index.add(sevens(mnist_test, 4), "seven-b", new_class=True)
    store = fake_index.store
    assert store.facts.late_classes == ("seven-b",)
    assert np.isnan(store.class_thresholds[-1])
    note = curation.late_class_note(store, "seven-b")
    assert note and "4 members, fewer than 10" in note and "global threshold" in note
    assert curation.late_class_note(store, "7") is None  # a class of the build

    fake_index.add(sevens(mnist_test, 30, start=4), "seven-b")
    first = fake_index.store.class_thresholds[-1]
    assert np.isfinite(first)
    reopened = Index.open(fake_index.path, embed=fake_encoder)
    assert reopened.info().class_thresholds["seven-b"] == pytest.approx(first)
    assert reopened.facts.late_classes == ("seven-b",)
    # Claims about it use its own threshold without --per-class; the build's classes do not.
    late, built = reopened.check(sevens(mnist_test, 2, start=40), ["seven-b", "7"])
    assert (late.threshold_kind, late.threshold) == ("per-class", pytest.approx(first))
    assert (built.threshold_kind, built.threshold) == ("global", reopened.facts.threshold)

    reopened.add(sevens(mnist_test, 30, start=60), "seven-b")
    assert reopened.store.class_thresholds[-1] != first  # recalibrated on its new members
    members = reopened.store.rows.ids[reopened.store.rows.labels == len(store.class_names) - 1]
    reopened.remove(members[: len(members) - 5])
    assert np.isnan(reopened.store.class_thresholds[-1])  # back to too few: global again
    assert len(few) == 4


def test_the_vote_weighs_a_late_class_in_its_own_threshold(tiny_index, mnist_test):
    """Sevens added as a new class of 12 (the build's 7s removed): the vote compares each
    class's support distance divided by its threshold (the late class's own when wider than
    the global one, the global one for the others). Each answer is recomputed from the stored
    embeddings, the scale changes some of them, and query agrees with check."""
    index = Index.open(tiny_index)
    seven = index.store.class_names.index("7")
    index.remove(index.store.rows.ids[index.store.rows.labels == seven])  # the 7s, unseen
    index.add(sevens(mnist_test, 12), "seven-b", new_class=True)
    store = index.store
    late = store.class_names.index("seven-b")
    # Its own threshold here happens to be narrower than the global one (then the vote is
    # plain); wider, as a sparse class's is (tools/bench_fewshot.py), it is weighed in it.
    store.class_thresholds[late] = 1.3 * store.facts.threshold
    scales = np.full(len(store.class_names), store.facts.threshold)
    scales[late] = store.class_thresholds[late]
    images = sevens(mnist_test, 60, start=12)
    vectors = index.embed(images)
    answers = index.check_vectors(vectors, ["seven-b"] * len(images))
    support = store.facts.support

    def kth(query, label):
        d = np.linalg.norm(store.rows.embeddings[store.rows.labels == label] - query, axis=1)
        return np.sort(d)[support - 1]

    def accepted(query, scales):
        own = kth(query, late) / scales[late]
        present = [c for c in range(len(scales)) if c != late and (store.rows.labels == c).any()]
        others = [kth(query, c) / scales[c] for c in present]
        return own <= 1 and own < min(others)

    want = [accepted(v, scales) for v in vectors]
    assert [a.is_member for a in answers] == want
    plain = [accepted(v, np.full(len(scales), scales[late])) for v in vectors]
    assert want != plain  # the scale changed some answers
    for answer, result in zip(answers, index.query_vectors(vectors, k=3), strict=True):
        assert (result.predicted == "seven-b") == answer.is_member
    # Narrower than the global threshold: the plain vote, and query judges by the class's own
    # threshold as check does.
    store.class_thresholds[late] = 0.9 * store.facts.threshold
    answers = index.check_vectors(vectors, ["seven-b"] * len(images))
    plain_scales = np.full(len(scales), store.class_thresholds[late])  # one scale: plain vote
    assert [a.is_member for a in answers] == [accepted(v, plain_scales) for v in vectors]
    predicted = 0
    for answer, result in zip(answers, index.query_vectors(vectors, k=3), strict=True):
        assert (result.predicted == "seven-b") == answer.is_member
        if result.predicted == "seven-b":
            predicted += 1
            assert result.threshold == pytest.approx(store.class_thresholds[late])
    assert predicted


def test_audit_finds_a_planted_wrong_label_and_relabel_puts_it_back(tiny_index, mnist_test):
    index = Index.open(tiny_index)
    rows = index.store.rows
    ones = rows.ids[rows.labels == index.class_index("1")]
    planted = int(ones[5])
    index.relabel([planted], "7")
    reopened = Index.open(tiny_index)
    assert reopened.store.rows.labels[reopened.store.rows_of([planted])][0] == 7
    found = reopened.audit(k=10)
    top = [s.id for s in found[:3]]
    assert planted in top, [(s.id, s.class_name, s.disagreement) for s in found[:5]]
    suspect = next(s for s in found if s.id == planted)
    assert (suspect.class_name, suspect.suggested) == ("7", "1")
    assert suspect.disagreement >= 0.8 and suspect.ratio is not None and suspect.ratio > 1
    assert len(suspect.neighbour_ids) == 10 and planted not in suspect.neighbour_ids
    # Ranked by ratio; each listed image has a neighbour or a closer class against it.
    ratios = [np.inf if s.ratio is None else s.ratio for s in found]
    assert ratios == sorted(ratios, reverse=True)
    assert all(s.disagreement > 0 or r > 1 for s, r in zip(found, ratios, strict=True))
    before = {p.name for p in tiny_index.resolve().parent.iterdir()}
    reopened.relabel([planted], "1")
    assert Index.open(tiny_index).store.rows.labels.tolist() == rows.labels.tolist()
    assert tiny_index.resolve().name not in before  # a new bundle version was published


def test_relabel_errors_change_nothing(tiny_index):
    index = Index.open(tiny_index)
    folder = index.folder
    with pytest.raises(DataError, match="Unknown class 'eleven'"):
        index.relabel([0], "eleven")
    with pytest.raises(DataError, match="are not in index"):
        index.relabel([99999], "3")
    with pytest.raises(DataError, match="k must be at least 1"):
        index.audit(0)
    assert Index.open(tiny_index).folder == folder


def test_audit_and_relabel_through_the_cli(tiny_index, tmp_path):
    runner = CliRunner()
    index = Index.open(tiny_index)
    planted = int(index.store.rows.ids[index.store.rows.labels == 1][5])
    result = runner.invoke(
        cli, ["relabel", "--index", str(tiny_index), "--ids", str(planted), "--class", "7"]
    )
    assert result.exit_code == 0 and "relabelled 1 id(s)" in result.output, result.output
    result = runner.invoke(
        cli,
        ["relabel", "--index", str(tiny_index), "--ids", str(planted), "--class", "7"]
        + ["--format", "json"],
    )
    assert_schema(json.loads(result.output), schemas.RELABEL)

    figure = tmp_path / "suspects.png"
    args = ["audit", "--index", str(tiny_index), "--top", "5"]
    result = runner.invoke(cli, [*args, "--format", "json", "--figure", str(figure)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert_schema(report, schemas.AUDIT)
    assert report["count"] == 300 and len(report["suspects"]) == 5 <= report["flagged"]
    top = runner.invoke(
        cli, ["audit", "--index", str(tiny_index), "--top", "20", "--format", "json"]
    )
    assert planted in [s["id"] for s in json.loads(top.output)["suspects"]]
    with Image.open(figure) as drawn:
        assert drawn.size[0] > 500 and drawn.size[1] > 300
    result = runner.invoke(cli, [*args, "--format", "csv"])
    lines = result.output.splitlines()
    assert lines[0] == "id,class,suggested,disagreement,ratio,split,source_index"
    assert len(lines) == 6
    result = runner.invoke(cli, args)
    assert "Fix with: siamindex relabel --ids ID --class C" in result.output


def test_add_says_how_a_late_class_is_judged(tiny_index):
    runner = CliRunner()
    args = ["add", "mnist:test:9000-9002", "--index", str(tiny_index), "--class", "x"]
    result = runner.invoke(cli, [*args, "--new-class", "--format", "json"])
    assert result.exit_code == 0, result.output
    added = json.loads(result.output)
    assert_schema(added, schemas.ADD)
    assert added["class_threshold"] is None and "fewer than 10" in added["threshold_note"]
    result = runner.invoke(cli, ["info", "--index", str(tiny_index)])
    assert "late class   x: too few members for its own threshold" in result.output
