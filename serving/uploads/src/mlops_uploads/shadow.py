"""How a candidate version did while it shadowed production.

In shadow mode the web app runs the `candidate` version beside production on
every prediction and stores its digit in the same row (shadow_model_version,
shadow_predicted_label); people answer production's. Once people label those
uploads (a reviewer's label, else the uploader's feedback), both versions are
scored on the same images: a paired comparison, so the candidate and
production are judged on exactly the same handwriting.

The watch flow decides on these figures (mlops_flows.live); the web app's
status page shows them.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from . import PERSON_LABEL_SQL

SHADOW_SQL = f"""
SELECT count(*), count(*) FILTER (WHERE shadow_predicted_label = predicted_label),
       count(label), count(*) FILTER (WHERE label = shadow_predicted_label),
       count(*) FILTER (WHERE label = predicted_label)
FROM (SELECT predicted_label, shadow_predicted_label, {PERSON_LABEL_SQL} AS label
      FROM uploads WHERE shadow_model_version = %s) AS shadowed
"""  # noqa: S608 (fixed text)


@dataclass(frozen=True)
class ShadowScore:
    version: str
    shadowed: int  # predictions the candidate made beside production
    agreed: int  # of those, the same digit as production
    labelled: int  # of those, with a person's label
    candidate_right: int  # of the labelled, the candidate's digit was the label
    production_right: int  # of the labelled, production's digit was the label

    @property
    def agreement(self) -> float:
        return self.agreed / self.shadowed if self.shadowed else float("nan")

    @property
    def candidate_accuracy(self) -> float:
        return self.candidate_right / self.labelled if self.labelled else float("nan")

    @property
    def production_accuracy(self) -> float:
        return self.production_right / self.labelled if self.labelled else float("nan")

    @property
    def not_worse(self) -> bool:
        """On the labelled images both saw, the candidate got at least as many right."""
        return self.candidate_right >= self.production_right


def score(conn: psycopg.Connection, version: str) -> ShadowScore:
    row = conn.execute(SHADOW_SQL, (version,)).fetchone()
    return ShadowScore(version, *row)
