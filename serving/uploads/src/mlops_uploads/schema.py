"""The web app's database schema: numbered migrations, applied in order by the owner.

`mlops-uploads migrate` (the serving role runs it at deploy time, as the
database owner; the test harness too) applies what is missing; the numbers
applied are kept in schema_migrations. The web app and the retrain flow
connect as roles that own nothing and hold only the grants below; the web app
refuses to serve on a schema older than it needs (`/readyz` says so).

    mlops-uploads migrate     apply pending migrations (MLOPS_DATABASE_URL: the owner's)
    mlops-uploads version     print the applied and the known version
"""

from __future__ import annotations

import json
import os
import sys

import psycopg

# The database roles of the platform's services (created by the postgresql role).
WEB_ROLE = "mlops_web"
WORKER_ROLE = "mlops_worker"


def _grant_to(role: str, statements: str) -> str:
    """Grants that apply only where the role exists (a test database may lack one)."""
    return f"""
    DO $$
    BEGIN
        IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
            {statements}
        END IF;
    END
    $$;
    """


MIGRATIONS: list[str] = [
    # 1: the uploads table
    """
    CREATE TABLE uploads (
        id               bigserial PRIMARY KEY,
        object_key       text NOT NULL,
        sha256           char(64) NOT NULL,
        content_type     text NOT NULL,
        size_bytes       integer NOT NULL CHECK (size_bytes > 0),
        model_input      bytea NOT NULL,
        predicted_label  smallint NOT NULL CHECK (predicted_label BETWEEN 0 AND 9),
        probabilities    real[] NOT NULL CHECK (cardinality(probabilities) = 10),
        model_version    text NOT NULL,
        user_label       smallint CHECK (user_label BETWEEN 0 AND 9),
        feedback_at      timestamptz,
        review_status    text NOT NULL DEFAULT 'pending'
                         CHECK (review_status IN ('pending', 'confirmed', 'corrected', 'rejected')),
        reviewed_label   smallint CHECK (reviewed_label BETWEEN 0 AND 9),
        reviewer         text,
        reviewed_at      timestamptz,
        used_in_version  text,
        used_at          timestamptz,
        created_at       timestamptz NOT NULL DEFAULT now(),
        CHECK (review_status NOT IN ('confirmed', 'corrected') OR reviewed_label IS NOT NULL)
    );
    CREATE INDEX uploads_review ON uploads (review_status, used_in_version);
    CREATE INDEX uploads_created ON uploads (created_at DESC);
    """,
    # 2: the retrain flow reads trainable uploads and marks them used (superseded by 6)
    _grant_to(
        WORKER_ROLE,
        f"GRANT SELECT ON uploads TO {WORKER_ROLE};"
        f" GRANT UPDATE (used_in_version, used_at) ON uploads TO {WORKER_ROLE};",
    ),
    # 3: the outbox of originals not in the object store yet (the web app's alone)
    """
    CREATE TABLE upload_originals (
        upload_id  bigint PRIMARY KEY REFERENCES uploads (id) ON DELETE CASCADE,
        data       bytea NOT NULL,
        queued_at  timestamptz NOT NULL DEFAULT now()
    );
    """,
    # 4: ids nobody can guess, the uploader's feedback token, the retrain flow's claims
    """
    ALTER TABLE uploads
        ADD COLUMN public_id uuid NOT NULL DEFAULT gen_random_uuid(),
        ADD COLUMN feedback_token_sha256 bytea,
        ADD COLUMN claimed_by text,
        ADD COLUMN claimed_at timestamptz;
    CREATE UNIQUE INDEX uploads_public_id ON uploads (public_id);
    """,
    # 5: failed logins, to slow down password guessing (per client and per account)
    """
    CREATE TABLE login_failures (
        key        text NOT NULL,
        failed_at  timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX login_failures_key ON login_failures (key, failed_at);
    """,
    # 6: least privilege: each service gets exactly what its queries need
    _grant_to(
        WEB_ROLE,
        f"REVOKE ALL ON uploads, upload_originals, login_failures FROM {WEB_ROLE};"
        f" GRANT SELECT, INSERT ON uploads TO {WEB_ROLE};"
        f" GRANT UPDATE (user_label, feedback_at, review_status, reviewed_label, reviewer,"
        f" reviewed_at) ON uploads TO {WEB_ROLE};"
        f" GRANT USAGE ON SEQUENCE uploads_id_seq TO {WEB_ROLE};"
        # UPDATE: the shipper locks queued rows (SELECT ... FOR UPDATE SKIP LOCKED).
        f" GRANT SELECT, INSERT, UPDATE, DELETE ON upload_originals TO {WEB_ROLE};"
        f" GRANT SELECT, INSERT, DELETE ON login_failures TO {WEB_ROLE};"
        f" GRANT SELECT ON schema_migrations TO {WEB_ROLE};",
    )
    + _grant_to(
        WORKER_ROLE,
        f"REVOKE ALL ON uploads, upload_originals, login_failures FROM {WORKER_ROLE};"
        f" GRANT SELECT ON uploads TO {WORKER_ROLE};"
        f" GRANT UPDATE (claimed_by, claimed_at, used_in_version, used_at) ON uploads"
        f" TO {WORKER_ROLE};",
    ),
    # 7: shadow mode: the candidate version's prediction beside production's (shadow.py)
    """
    ALTER TABLE uploads
        ADD COLUMN shadow_model_version text,
        ADD COLUMN shadow_predicted_label smallint
            CHECK (shadow_predicted_label BETWEEN 0 AND 9),
        ADD CHECK ((shadow_model_version IS NULL) = (shadow_predicted_label IS NULL));
    CREATE INDEX uploads_shadow ON uploads (shadow_model_version)
        WHERE shadow_model_version IS NOT NULL;
    """,
]
LATEST = len(MIGRATIONS)


def migrate(conn: psycopg.Connection) -> list[int]:
    """Apply the migrations not applied yet, under a lock (safe with several web hosts)."""
    applied_now = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('mlops_uploads_schema'))")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for number, sql in enumerate(MIGRATIONS, start=1):
            if number not in done:
                conn.execute(sql)
                conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (number,))
                applied_now.append(number)
    return applied_now


def applied_version(conn: psycopg.Connection) -> int:
    """The newest migration applied; 0 on a database that has none."""
    try:
        row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
    except psycopg.errors.UndefinedTable:
        return 0
    return row[0] or 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv not in (["migrate"], ["version"]):
        print(__doc__, file=sys.stderr)
        return 2
    url = os.environ.get("MLOPS_DATABASE_URL", "")
    if not url:
        print("mlops-uploads: MLOPS_DATABASE_URL is not set (the owner's URL)", file=sys.stderr)
        return 2
    with psycopg.connect(url, autocommit=True) as conn:
        if argv == ["migrate"]:
            applied = migrate(conn)
            print(json.dumps({"applied": applied, "version": applied_version(conn)}))
        else:
            print(json.dumps({"version": applied_version(conn), "latest": LATEST}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
