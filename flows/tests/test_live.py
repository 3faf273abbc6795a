"""Live accuracy and rollback (live.py) against the real MLflow and PostgreSQL.

A model of its own (`live-<random>`, versions sharing the production model's
files) and an uploads table of its own (a temporary table, which PostgreSQL
finds before the real one in this session), so that the rows are exactly the
test's.
"""

from __future__ import annotations

import secrets

import psycopg
import pytest
from mlops_flows import live
from mlops_flows.cli import main as cli


@pytest.fixture
def model(worker_env, production_model):
    """A registered model with three versions; returns (client, name)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    name = f"live-{secrets.token_hex(4)}"
    for _ in range(3):
        client.copy_model_version(f"models:/mnist/{production_model.version}", name)
    return client, name


@pytest.fixture
def uploads(services):
    with psycopg.connect(services.owner_database_url(), autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE uploads (LIKE public.uploads INCLUDING DEFAULTS)")
        yield conn


def labelled(conn, version: str, right: int, wrong: int, reviewed: int = 0) -> None:
    """Predictions of `version` (all of digit 3) labelled by their uploaders, the first
    `reviewed` of them by a reviewer instead (who says 3 as well)."""
    for i in range(right + wrong):
        label = 3 if i < right else 5
        conn.execute(
            "INSERT INTO uploads (object_key, sha256, content_type, size_bytes, model_input,"
            " predicted_label, probabilities, model_version, user_label, feedback_at,"
            " review_status, reviewed_label, reviewed_at)"
            " VALUES ('k', %s, 'image/png', 1, '\\x00', 3, %s, %s, %s, now(), %s, %s, now())",
            (
                secrets.token_hex(32),
                [0.1] * 10,
                version,
                label,
                "confirmed" if i < reviewed else "pending",
                label if i < reviewed else None,
            ),
        )


def promote(client, name: str, version: str, previous: str | None) -> None:
    if previous:
        client.set_model_version_tag(name, version, live.PREVIOUS_TAG, previous)
    client.set_registered_model_alias(name, "production", version)


def test_a_version_as_good_as_the_one_it_replaced_passes_once(model, uploads):
    client, name = model
    labelled(uploads, "1", right=9, wrong=1, reviewed=4)
    promote(client, name, "2", previous="1")
    labelled(uploads, "2", right=4, wrong=1)
    assert live.check(client, uploads, name, items=10).action == "waiting"
    labelled(uploads, "2", right=5, wrong=0)
    result = live.check(client, uploads, name, items=10, margin=0.05)
    # 0.9 on its first 10 against 0.9: within the margin.
    assert result.action == "passed", result
    assert (result.new.right, result.new.labelled, result.old.right) == (9, 10, 9)
    assert client.get_model_version_by_alias(name, "production").version == "2"
    assert client.get_model_version(name, "2").tags[live.LIVE_TAG].startswith("passed")
    labelled(uploads, "2", right=0, wrong=30)  # later mistakes: judged once, on the first ones
    assert live.check(client, uploads, name, items=10).action == "none"


def test_only_the_first_items_of_the_new_version_are_judged(model, uploads):
    client, name = model
    labelled(uploads, "1", right=10, wrong=0)
    promote(client, name, "2", previous="1")
    labelled(uploads, "2", right=6, wrong=4)
    labelled(uploads, "2", right=10, wrong=0)
    result = live.check(client, uploads, name, items=10, margin=0.05)
    assert result.action == "rolled back" and result.new.right == 6, result
    assert client.get_model_version_by_alias(name, "production").version == "1"
    assert "0.600 < 1.000 - 0.05" in result.reason


def test_a_person_rolls_back_by_hand_and_bad_requests_change_nothing(
    model, worker_env, monkeypatch, capsys
):
    client, name = model
    monkeypatch.setenv("MLOPS_REGISTERED_MODEL", name)
    promote(client, name, "1", previous=None)
    assert cli(["rollback", "--reason", "looks wrong"]) == 2
    assert "replaced no version" in capsys.readouterr().err
    assert cli(["rollback", "--to", "9"]) == 2
    assert f"{name} has no version 9" in capsys.readouterr().err
    assert client.get_model_version_by_alias(name, "production").version == "1"

    promote(client, name, "3", previous="1")
    assert cli(["rollback", "--reason", "the users say 7s come out as 1s"]) == 0
    assert client.get_model_version_by_alias(name, "production").version == "1"
    tags = client.get_model_version(name, "3").tags
    assert tags["promotion"] == "rolled back"
    assert tags["rollback_reason"] == "By hand: the users say 7s come out as 1s"


# --- shadow mode --------------------------------------------------------------------------


def shadowed(conn, candidate: str, production: str, **counts: int) -> None:
    """Uploads production answered while `candidate` shadowed it, each labelled 3 by its
    uploader except the unlabelled ones. counts: both_right, only_candidate,
    only_production, unlabelled (both said 3)."""
    digits = {
        "both_right": (3, 3, 3),
        "only_candidate": (5, 3, 3),
        "only_production": (3, 5, 3),
        "unlabelled": (3, 3, None),
    }
    for kind, count in counts.items():
        production_digit, candidate_digit, label = digits[kind]
        for _ in range(count):
            conn.execute(
                "INSERT INTO uploads (object_key, sha256, content_type, size_bytes, model_input,"
                " predicted_label, probabilities, model_version, user_label, feedback_at,"
                " shadow_model_version, shadow_predicted_label)"
                " VALUES ('k', %s, 'image/png', 1, '\\x00', %s, %s, %s, %s, now(), %s, %s)",
                (
                    secrets.token_hex(32),
                    production_digit,
                    [0.1] * 10,
                    production,
                    label,
                    candidate,
                    candidate_digit,
                ),
            )


def test_a_version_that_passes_the_gate_in_shadow_mode_becomes_the_candidate(
    model, production_model
):
    """register_and_decide(shadow=True): `candidate`, not `production`; a newer candidate
    supersedes it."""
    import numpy as np
    from mlops_flows import tracking
    from mlops_flows.train import Evaluation

    client, name = model
    promote(client, name, "1", previous=None)
    images, labels = np.zeros((20, 28, 28), np.uint8), np.zeros(20, np.int64)
    perfect = Evaluation(1.0, [1.0] * 10, np.zeros((10, 10)), labels)
    test_sets = [tracking.EvaluatedSet(tracking.MNIST, images, labels, perfect)]
    logged = tracking.LoggedRun(production_model.run_id, production_model.source)

    first = tracking.register_and_decide(name, logged, "data-v2", test_sets, shadow=True)
    assert (first.promoted, first.shadowing) == (False, True), first
    assert "Shadow mode: it first predicts beside version 1 as `candidate`" in first.reason
    assert client.get_model_version_by_alias(name, "production").version == "1"
    assert client.get_model_version_by_alias(name, "candidate").version == first.version
    tags = client.get_model_version(name, first.version).tags
    assert tags["promotion"] == "shadowing" and tracking.SHADOW_STARTED_TAG in tags
    assert "passed the gate" in first.markdown(name, "data-v2")

    second = tracking.register_and_decide(name, logged, "data-v2", test_sets, shadow=True)
    assert client.get_model_version_by_alias(name, "candidate").version == second.version
    assert client.get_model_version(name, first.version).tags["promotion"] == "superseded"


def test_a_candidate_not_worse_in_shadow_mode_takes_the_alias(model, uploads):
    from mlops_flows import tracking

    client, name = model
    promote(client, name, "1", previous=None)
    tracking.start_shadow(client, name, "2")
    shadowed(uploads, "2", "1", both_right=4, only_candidate=2, only_production=1, unlabelled=2)
    waiting = live.judge_candidate(client, uploads, name, predictions=10, hours=24)
    assert waiting.action == "waiting", waiting
    assert "9 predictions beside production" in waiting.reason
    assert client.get_model_version_by_alias(name, "candidate").version == "2"

    shadowed(uploads, "2", "1", unlabelled=1)
    judged = live.judge_candidate(client, uploads, name, predictions=10, hours=24)
    assert judged.action == "promoted", judged
    # 10 shadowed, 7 labelled: the candidate got 6 right, production 5.
    assert "candidate 6 right, production 5" in judged.reason
    assert client.get_model_version_by_alias(name, "production").version == "2"
    with pytest.raises(Exception, match="candidate"):
        client.get_model_version_by_alias(name, "candidate")
    tags = client.get_model_version(name, "2").tags
    assert tags["promotion"] == "promoted" and tags[live.PREVIOUS_TAG] == "1"
    # Then it is on trial like any promoted version, and no candidate is left to judge.
    assert live.check(client, uploads, name, items=10).action == "waiting"
    assert live.judge_candidate(client, uploads, name, 10, 24).action == "none"


def test_a_candidate_worse_in_shadow_mode_is_rejected_at_the_time_limit(model, uploads):
    from datetime import UTC, datetime, timedelta

    from mlops_flows import tracking

    client, name = model
    promote(client, name, "1", previous=None)
    tracking.start_shadow(client, name, "3")
    shadowed(uploads, "3", "1", both_right=5, only_candidate=1, only_production=3)
    assert live.judge_candidate(client, uploads, name, 1000, 24).action == "waiting"
    later = datetime.now(UTC) + timedelta(hours=25)
    judged = live.judge_candidate(client, uploads, name, 1000, 24, now=later)
    assert judged.action == "rejected", judged
    assert judged.reason.startswith("Version 3: Shadow mode after 25.0 h")
    assert "candidate 6 right, production 8" in judged.reason
    assert client.get_model_version_by_alias(name, "production").version == "1"
    with pytest.raises(Exception, match="candidate"):
        client.get_model_version_by_alias(name, "candidate")
    assert client.get_model_version(name, "3").tags["promotion"] == "rejected in shadow mode"
