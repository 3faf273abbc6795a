"""The uploads table: one definition for the web app and the retrain flow.

Every accepted upload is a row: the original image goes to the uploads bucket
under a content-addressed key, the row holds the 28x28 PNG the model saw
(what retraining uses, a few hundred bytes), the model's prediction and
probabilities, the model version, the user's label, the review decision,
and (once the retrain flow took it) the dataset version it went into.

Review states: pending -> confirmed (the label is right) | corrected (a
reviewer set the right label) | rejected (not a usable digit). The label a
confirmed or corrected upload trains with is `reviewed_label`.

Who may do what is part of the schema (schema.py): the database owner runs
the migrations; the web app's role inserts rows, records feedback and
reviews; the retrain flow's role reads trainable rows, claims them and marks
them used. Neither owns a table.

    schema.py   migrations, applied by `mlops-uploads migrate` as the owner
    web.py      the web app's queries
    retrain.py  the retrain flow's queries
    shadow.py   how a candidate shadowing production did (the status page, the watch flow)
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime

REVIEW_STATES = ("pending", "confirmed", "corrected", "rejected")


@dataclass(frozen=True)
class Upload:
    id: int  # internal; people and programs see public_id
    public_id: str
    object_key: str
    sha256: str
    content_type: str
    size_bytes: int
    model_input: bytes
    predicted_label: int
    probabilities: list[float]
    model_version: str
    user_label: int | None
    feedback_at: datetime | None
    review_status: str
    reviewed_label: int | None
    reviewer: str | None
    reviewed_at: datetime | None
    claimed_by: str | None
    used_in_version: str | None
    used_at: datetime | None
    created_at: datetime
    # Shadow mode: the candidate version that predicted beside production, and its digit.
    shadow_model_version: str | None = None
    shadow_predicted_label: int | None = None

    @property
    def shown_label(self) -> int:
        """The label a reviewer is shown: the user's, else the model's."""
        return self.predicted_label if self.user_label is None else self.user_label


# The columns an Upload is read from (public_id as text: the id in URLs and the API).
UPLOAD_COLUMNS = ", ".join(
    "public_id::text AS public_id" if field.name == "public_id" else field.name
    for field in fields(Upload)
)


def object_key(sha256: str, extension: str) -> str:
    """Content-addressed: the same bytes always land under the same key."""
    return f"uploads/{sha256[:2]}/{sha256}.{extension}"


# The label a person gave an upload, and when (SQL expressions over its row): the
# reviewer's when there is one (a rejected upload has none), else the uploader's own
# feedback while the upload is pending. Live accuracy (the web app's status page,
# the watch flow) is this label against `predicted_label`.
PERSON_LABEL_SQL = (
    "CASE WHEN review_status IN ('confirmed', 'corrected') THEN reviewed_label"
    " WHEN review_status = 'pending' THEN user_label END"
)
PERSON_LABELLED_AT_SQL = (
    "CASE WHEN review_status IN ('confirmed', 'corrected') THEN reviewed_at ELSE feedback_at END"
)
