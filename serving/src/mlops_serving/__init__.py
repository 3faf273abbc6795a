"""The web app of the MLOps platform (Flask under waitress).

    app.py        the application factory and what the blueprints share (State)
    pages.py      upload or draw a digit, the result, feedback, status
    review.py     the reviewers' login and queue
    api.py        the JSON API
    ops.py        /healthz, /readyz, /metrics
    service.py    what every prediction does; the costly-decode gate
    preprocess.py an upload -> the model's 28x28 input
    model.py      the production model, from MLflow, kept on disk
    outbox.py     originals from PostgreSQL to the uploads bucket, after the answer
    logins.py     reviewer logins, with password guessing slowed down
    server.py     `mlops-serving`: waitress, one or several processes

The uploads table itself (schema, migrations, queries) is the mlops_uploads
package (serving/uploads), which the retrain flow shares.
"""
